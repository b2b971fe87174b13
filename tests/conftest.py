from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Speech and noise recordings the tests and benchmarks use (tests/data/README.md lists their sources).
FIXTURES_DIR = REPO_ROOT / "tests" / "data"


# The built-in simulator's dialect for daemons started by ``loopback_settings``: "openai", or
# "voicelive" (calls then reach its Voice Live endpoint through azure-ai-voicelive). Set per test
# by the ``model_dialect`` parameter of tests marked ``both_dialects`` (tests/e2e/conftest.py).
# (A plain module attribute, not a context variable: the test's event loop may have been created
# before the fixture ran.)
MODEL_DIALECT = {"dialect": "openai"}


def simulator_model() -> dict[str, Any]:
    """The ``model`` settings section for the built-in simulator in the current test's dialect."""
    dialect = MODEL_DIALECT["dialect"]
    return {} if dialect == "openai" else {"simulator_dialect": dialect}


def load_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as wav:
        assert wav.getsampwidth() == 2 and wav.getnchannels() == 1
        data = wav.readframes(wav.getnframes())
        return np.frombuffer(data, dtype=np.int16).copy(), wav.getframerate()


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    # The audio is part of the repository: a missing file is a broken checkout, never a skip.
    assert (FIXTURES_DIR / "speech").is_dir(), f"audio fixtures missing from {FIXTURES_DIR}"
    return FIXTURES_DIR


def loopback_settings(tmp_path: Path, *, record: bool = False, **sections: Any) -> Any:
    """Settings for a daemon started inside a test: HTTP, AudioSocket and FastAGI on 127.0.0.1 at
    ports the kernel picks, nothing read from the environment or a .env file, recordings under
    ``tmp_path`` (off unless ``record``). Each keyword section replaces its default whole."""
    from bridge.settings import load_settings

    base: dict[str, Any] = {
        "http": {"host": "127.0.0.1", "port": 0},
        "audiosocket": {"host": "127.0.0.1", "port": 0},
        "agi": {"host": "127.0.0.1", "port": 0},
        "recording": {"enabled": record, "directory": str(tmp_path / "rec")},
    }
    base.update(sections)
    dialect = MODEL_DIALECT["dialect"]
    if dialect != "openai":
        model = dict(base.get("model") or {})
        if model.get("provider", "simulator") == "simulator" and "api_key" not in model:
            base["model"] = {**model, "simulator_dialect": dialect}
    return load_settings(env_file=None, environ={}, **base)
