"""The byte hand-offs between pjsua2's vectors and Python, on real pjsua2 objects."""

from __future__ import annotations

import pytest

pj = pytest.importorskip("pjsua2", reason="pjsua2-python has wheels for Linux x86-64 only")

from bridge.siptrunk.stack import fill_vector, read_vector  # noqa: E402


def test_read_and_fill_use_the_vectors_storage() -> None:
    frame = bytes(range(256)) + bytes(64)  # 20 ms at 8 kHz, PCM16
    vec = pj.ByteVector(bytes(len(frame)))
    assert fill_vector.__name__ == "direct" and read_vector.__name__ == "direct"
    assert fill_vector(vec, frame)
    assert bytes(vec) == frame and read_vector(vec) == frame
    assert not fill_vector(vec, frame[:-2])  # another size: the caller builds a new vector
    assert read_vector(pj.ByteVector(b"")) == b""


def test_a_media_frame_keeps_its_own_copy() -> None:
    # CallPort refills one vector for every agent frame: this relies on the frame copying it.
    vec = pj.ByteVector(bytes(4))
    media = pj.MediaFrame()
    assert fill_vector(vec, b"abcd")
    media.buf = vec
    assert fill_vector(vec, b"wxyz")
    assert read_vector(media.buf) == b"abcd"


def test_the_library_prints_nothing_of_its_own(tmp_path) -> None:
    # Start and stop the stack in a fresh process: pjlib's start-up lines would otherwise land on
    # stdout, among the daemon's JSON log lines.
    import subprocess
    import sys
    from pathlib import Path

    script = ("from bridge.siptrunk.stack import SipStack\n"
              "s = SipStack(lambda ep: None, lambda: None, lambda: None, max_calls=4)\n"
              "s.start(); s.stop(); print('stopped')\n")
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "stopped\n"


def test_a_second_stack_waits_for_the_first_to_be_gone() -> None:
    # pjsua2 aborts the process when a second Endpoint is made while one exists (a restart, or
    # one test's daemon still stopping when the next starts): the second stack waits instead.
    import threading
    import time

    from bridge.siptrunk.stack import SipStack

    first = SipStack(lambda ep: None, lambda: None, lambda: None, max_calls=4)
    first.start()
    second = SipStack(lambda ep: None, lambda: None, lambda: None, max_calls=4)
    starting = threading.Thread(target=second.start)
    starting.start()
    try:
        time.sleep(0.5)
        assert second.endpoint is None and starting.is_alive()
        first.stop()
        starting.join(15)
        assert second.endpoint is not None
    finally:
        first.stop()
        second.stop()
