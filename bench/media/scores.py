"""Objective speech-quality scores on time-aligned signals."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pesq import pesq
from pystoi import stoi

RATE_HZ = 8000

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Scores:
    pesq_nb: float  # ITU-T P.862 narrowband, MOS-LQO (P.862.1 mapping)
    stoi: float  # short-time objective intelligibility (Taal et al. 2011)
    # Segmental SNR: mean over 20 ms speech frames of the frame SNR clamped to [-10, 35] dB (Hansen &
    # Pellom 1998); frames more than 35 dB below the loud ones are left out, as silence has no SNR.
    seg_snr_db: float


def align(processed: npt.ArrayLike, delay_samples: int, length: int) -> Floats:
    """Undo a processing delay: drop the first ``delay_samples`` and cut or pad to ``length``."""
    y = np.asarray(processed, dtype=np.float64)[delay_samples : delay_samples + length]
    if len(y) < length:
        y = np.concatenate((y, np.zeros(length - len(y))))
    return y


def measured_delay(reference: Floats, processed: npt.ArrayLike, max_samples: int = 800) -> int:
    """Lag (samples) of the cross-correlation peak: checks the latency a stage reports."""
    y = np.asarray(processed, dtype=np.float64)
    n = min(len(reference), len(y) - max_samples)
    corr = [float(np.dot(reference[:n], y[d : d + n])) for d in range(max_samples)]
    return int(np.argmax(corr))


def segmental_snr(reference: Floats, degraded: Floats, frame: int = 160) -> float:
    n = min(len(reference), len(degraded)) // frame * frame
    ref = reference[:n].reshape(-1, frame)
    err = ref - degraded[:n].reshape(-1, frame)
    power = np.sum(ref**2, axis=1)
    active = power > np.percentile(power, 95) * 10 ** (-35 / 10)
    snr = 10 * np.log10((power[active] + 1e-9) / (np.sum(err[active] ** 2, axis=1) + 1e-9))
    return float(np.mean(np.clip(snr, -10.0, 35.0)))


def score(reference: Floats, degraded: Floats) -> Scores:
    return Scores(
        pesq_nb=float(pesq(RATE_HZ, reference, degraded, "nb")),
        stoi=float(stoi(reference, degraded, RATE_HZ, extended=False)),
        seg_snr_db=segmental_snr(reference, degraded),
    )
