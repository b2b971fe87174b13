"""Browser calls over WebRTC (aiortc): the leg, the offer endpoint and the /phone/ page."""
