from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Speech and noise recordings the tests and benchmarks use (tests/data/README.md lists their sources).
FIXTURES_DIR = REPO_ROOT / "tests" / "data"


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
    return load_settings(env_file=None, environ={}, **base)
