"""What a transport provides to a call (``CallerLeg``) and what a call tells its records (``CallTap``)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from media.codec import AudioFormat
from tenants.config import TransferTarget


class CallerLeg(Protocol):
    """What a transport provides to the call for the direction toward the caller.

    Two optional members serve far ends that queue agent audio and play it on their own clock
    (Twilio Media Streams, mod_audio_fork): the call looks them up with ``getattr``, so legs that
    play what they are sent at once (AudioSocket, RTP) need not define them.

    * ``unplayed_ms() -> float``: agent audio handed to ``send_audio`` that the far end has not
      played yet (known from its playback marks). A barge-in truncation subtracts it from what
      was sent, so the model is told what the caller heard.
    * ``async end_of_segment() -> None``: agent audio stopped flowing (the playout buffer ran dry
      after at least one frame); the leg may place a playback mark there.
    """

    transport: str
    audio_format: AudioFormat
    keepalive: bool  # send silence frames while the agent is quiet

    async def send_audio(self, payload: bytes) -> None:
        """Send one encoded frame to the caller."""
        ...

    async def clear_playback(self) -> None:
        """Drop agent audio the far end has buffered but not yet played (barge-in)."""
        ...

    async def hangup(self) -> None:
        """End the call toward the PBX. Called once, only while the caller is still there."""
        ...

    async def transfer(self, target: TransferTarget) -> bool:
        """Hand the caller to ``target``; False when this transport cannot."""
        ...


class CallTap(Protocol):
    """Receives what the call hears and says (recording, transcripts).

    The audio arrays handed over are int16 and nobody writes to them afterwards (decoded frames,
    views of the playout buffer's own chunks, a constant silence): a tap may keep them as they are.
    """

    def caller_audio(self, samples: np.ndarray, rate_hz: int) -> None: ...

    def agent_audio(self, samples: np.ndarray, rate_hz: int) -> None: ...

    def transcript(self, role: str, text: str, at: float) -> None: ...

    def event(self, name: str, **fields: Any) -> None: ...


