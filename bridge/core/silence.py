"""Ending calls whose caller leg has gone quiet: a socket that sends no audio holds a capacity slot
and a paid model session for nothing (a WebSocket peer that opens and waits, an AudioSocket peer
that stopped sending frames).

The leg calls ``heard()`` for every piece of caller audio (silence counts: PBXs and carriers send
frames all the time while a call is up). ``run`` sleeps until the deadline of the current phase:
``first_audio`` seconds after set-up, then ``idle`` seconds after the last audio. Past it the call
ends with outcome ``idle``; the transport closes the leg with its code for that outcome and the
switchboard frees the slot as for any other end. A limit of 0 switches that phase's check off.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from bridge.core.call import Call, Outcome

Clock = Callable[[], float]


class SilenceWatch:
    def __init__(self, call: Call, first_audio: float, idle: float, clock: Clock = time.monotonic) -> None:
        self._call = call
        self._first_audio = first_audio
        self._idle = idle
        self._clock = clock
        self._started = clock()
        self._last: float | None = None
        self._heard = asyncio.Event()

    def heard(self) -> None:
        self._last = self._clock()
        if not self._heard.is_set():
            self._heard.set()

    async def run(self) -> None:
        """Until the call ends by other means (cancelled then), or ends it for silence."""
        while True:
            if self._last is None:
                if self._first_audio <= 0:
                    await self._heard.wait()
                    continue
                limit, since = self._first_audio, self._started
            else:
                if self._idle <= 0:
                    return
                limit, since = self._idle, self._last
            wait = since + limit - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            call = self._call
            if not call.ended:
                call.log.info("no audio from the caller for %.1f s%s: ending the call", limit,
                              "" if self._last is not None else " after set-up")
                call.end(Outcome.IDLE)
            return


__all__ = ["SilenceWatch"]
