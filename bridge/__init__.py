"""callbridge: asyncio daemon bridging PBX phone calls to realtime speech models.

This package holds everything that performs I/O: listeners, adapters, the model session, the
per-call orchestration, recording, metrics, the HTTP API and the command line.
"""

__version__ = "0.1.0"
