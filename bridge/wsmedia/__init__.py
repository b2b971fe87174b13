"""WebSocket media transports: the common leg (``leg``) and the Twilio, FreeSWITCH and ``/ws/audio`` endpoints."""
