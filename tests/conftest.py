from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# The shared audio fixtures sit beside the repository checkout.
FIXTURES_DIR = REPO_ROOT.parent / "shared" / "fixtures"


def load_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as wav:
        assert wav.getsampwidth() == 2 and wav.getnchannels() == 1
        data = wav.readframes(wav.getnframes())
        return np.frombuffer(data, dtype=np.int16).copy(), wav.getframerate()


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES_DIR.is_dir():
        pytest.skip(f"shared audio fixtures not found at {FIXTURES_DIR}")
    return FIXTURES_DIR
