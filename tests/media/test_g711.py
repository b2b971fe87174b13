"""G.711 tables against ITU-T G.711 reference values and an independent implementation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from media import g711
from media.codec import ALAW_8K, ULAW_8K

ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int64).astype(np.int16)
ALL_CODES = bytes(range(256))


# G.711 (11/88) tables 2a/2b (mu-law) and 1a/1b (A-law) give decoder outputs on a 14-bit (mu) and
# 13-bit (A) scale; on the 16-bit scale they are multiplied by 4 and 8. Character signals are as
# transmitted (mu-law all bits inverted, A-law even bits inverted).
@pytest.mark.parametrize(
    ("code", "value"),
    [
        (0x00, -32124),  # mu-law: most negative (-8031 * 4)
        (0x80, 32124),  # most positive
        (0xFF, 0),  # positive zero
        (0x7F, 0),  # negative zero
        (0xFE, 8),  # smallest positive step (2 * 4)
        (0x7E, -8),
        (0xEF, 132),  # top of segment 0: 33 * 4
        (0xDF, 396),  # top of segment 1: 99 * 4
    ],
)
def test_mulaw_decode_reference_values(code: int, value: int) -> None:
    assert int(g711.ulaw_decode(bytes([code]))[0]) == value


@pytest.mark.parametrize(
    ("code", "value"),
    [
        (0xD5, 8),  # A-law: smallest positive (1 * 8)
        (0x55, -8),
        (0xAA, 32256),  # most positive (4032 * 8)
        (0x2A, -32256),
        (0xDA, 248),  # top of segment 0: 31 * 8
        (0xC5, 264),  # first step of segment 1: 33 * 8
    ],
)
def test_alaw_decode_reference_values(code: int, value: int) -> None:
    assert int(g711.alaw_decode(bytes([code]))[0]) == value


def test_silence_codes_decode_to_silence() -> None:
    assert int(g711.ulaw_decode(bytes([g711.MULAW_SILENCE]))[0]) == 0
    assert abs(int(g711.alaw_decode(bytes([g711.ALAW_SILENCE]))[0])) == 8
    assert ULAW_8K.silence() == bytes([0xFF]) * 160
    assert ALAW_8K.silence(10) == bytes([0xD5]) * 80


def _audioop():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return pytest.importorskip("audioop")


def test_tables_match_an_independent_implementation() -> None:
    # CPython's audioop follows the Sun/CCITT reference code (g711.c); compare every code and every
    # 16-bit sample.
    audioop = _audioop()
    assert np.array_equal(
        g711.ulaw_decode(ALL_CODES), np.frombuffer(audioop.ulaw2lin(ALL_CODES, 2), np.int16)
    )
    assert np.array_equal(
        g711.alaw_decode(ALL_CODES), np.frombuffer(audioop.alaw2lin(ALL_CODES, 2), np.int16)
    )
    pcm = ALL_SAMPLES.tobytes()
    assert g711.ulaw_encode(ALL_SAMPLES) == audioop.lin2ulaw(pcm, 2)
    assert g711.alaw_encode(ALL_SAMPLES) == audioop.lin2alaw(pcm, 2)


@pytest.mark.parametrize(
    ("encode", "decode"), [(g711.ulaw_encode, g711.ulaw_decode), (g711.alaw_encode, g711.alaw_decode)]
)
def test_round_trip_is_monotonic_and_close(encode, decode) -> None:
    back = decode(encode(ALL_SAMPLES)).astype(np.int64)
    assert np.all(np.diff(back) >= 0), "quantiser output must not decrease as the input grows"
    # The error stays within half of the top segment's step of 1024, plus mu-law's clipping of the
    # last 643 values above its largest output 32124.
    err = np.abs(back - ALL_SAMPLES.astype(np.int64))
    assert err.max() <= 644
    # Above the first segments the relative error is bounded by the 4-bit mantissa: half a step
    # over the segment's start, 1/32, a little more for mu-law's bias of 33.
    big = np.abs(ALL_SAMPLES.astype(np.int64)) > 1024
    assert np.max(err[big] / np.abs(ALL_SAMPLES[big].astype(np.int64))) <= 0.0351


def test_codes_survive_decode_then_encode() -> None:
    mu = g711.ulaw_encode(g711.ulaw_decode(ALL_CODES))
    # mu-law's negative zero (0x7F) decodes to 0, which encodes as positive zero (0xFF).
    assert [c for c in range(256) if mu[c] != c] == [0x7F]
    assert mu[0x7F] == 0xFF
    assert g711.alaw_encode(g711.alaw_decode(ALL_CODES)) == ALL_CODES


@pytest.mark.parametrize(
    ("encode", "decode"), [(g711.ulaw_encode, g711.ulaw_decode), (g711.alaw_encode, g711.alaw_decode)]
)
def test_sine_signal_to_quantisation_noise(encode, decode) -> None:
    # G.711 companding keeps SQNR near 38 dB over a wide range of levels (G.712 asks >= 35 dB
    # for a sine from -30 to 0 dBm0; 0 dBm0 is about 3 dB below full scale).
    t = np.arange(8000) / 8000
    for level_db in (-3.0, -13.0, -23.0, -33.0):
        x = np.rint(32767 * 10 ** (level_db / 20) * np.sin(2 * np.pi * 1020 * t)).astype(np.int16)
        y = decode(encode(x)).astype(np.float64)
        snr = 10 * np.log10(np.sum(x.astype(np.float64) ** 2) / np.sum((y - x) ** 2))
        assert snr > 33, (level_db, snr)


@given(st.binary(max_size=400))
def test_any_bytes_decode_to_one_sample_each(payload: bytes) -> None:
    for fmt in (ULAW_8K, ALAW_8K):
        samples = fmt.decode(payload)
        assert samples.dtype == np.int16 and len(samples) == len(payload)
        assert fmt.encode(samples) == fmt.encode(fmt.decode(fmt.encode(samples)))


try:
    from media import _native as native
except ImportError:  # installed without a C compiler: the fallbacks are what runs
    native = None
needs_native = pytest.mark.skipif(native is None, reason="media._native is not built")


@pytest.mark.parametrize(("decode_table", "encode_table"), [
    (g711.MULAW_DECODE, g711.MULAW_ENCODE), (g711.ALAW_DECODE, g711.ALAW_ENCODE)])
@needs_native
def test_compiled_lookups_equal_numpys(decode_table, encode_table) -> None:
    # The compiled lookups and the numpy fallback (used when media._native is not built) agree on
    # every code and every sample, strided input included.
    dec, enc = decode_table.tobytes(), encode_table.tobytes()
    assert native.expand(dec, ALL_CODES) == g711._expand(dec, ALL_CODES)
    assert native.compress(enc, ALL_SAMPLES) == g711._compress(enc, ALL_SAMPLES)
    assert native.compress(enc, ALL_SAMPLES[::3]) == g711._compress(enc, ALL_SAMPLES[::3])
    assert native.expand(dec, b"") == bytearray()
    assert native.compress(enc, ALL_SAMPLES[:0]) == b""


def test_encoders_take_what_numpy_takes() -> None:
    # Lists, other integer dtypes and 2-D arrays are converted as np.asarray(..., int16) does.
    x = np.array([[-32768, -1, 0], [1, 1000, 32767]], dtype=np.int16)
    expected = g711._compress(g711.MULAW_ENCODE.tobytes(), x.reshape(-1))
    assert g711.ulaw_encode(x) == expected
    assert g711.ulaw_encode(x.astype(np.int32)) == expected
    assert g711.ulaw_encode(x.reshape(-1).tolist()) == expected
    assert g711.ulaw_encode(ALL_SAMPLES[::7]) == g711._compress(g711.MULAW_ENCODE.tobytes(), ALL_SAMPLES[::7])
    decoded = g711.alaw_decode(b"\x00\xd5")
    decoded[0] = 7  # a decoded frame is an ordinary writable array
    assert decoded.tolist() == [7, 8]


@needs_native
def test_compiled_lookups_refuse_bad_arguments() -> None:
    with pytest.raises(ValueError, match="256 int16"):
        native.expand(b"\x00" * 511, b"\x01")
    with pytest.raises(ValueError, match="65536 bytes"):
        native.compress(b"\x00" * 65535, ALL_SAMPLES[:4])
    with pytest.raises(TypeError, match="int16"):
        native.compress(g711.MULAW_ENCODE.tobytes(), ALL_SAMPLES[:4].astype(np.int32))
    with pytest.raises(TypeError, match="int16"):
        native.compress(g711.MULAW_ENCODE.tobytes(), ALL_SAMPLES[:4].reshape(2, 2))
    with pytest.raises(TypeError):
        native.expand(g711.MULAW_DECODE.tobytes())
