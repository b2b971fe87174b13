"""Sans-I/O wire protocols: bytes in, events and bytes out. No sockets, no asyncio, no logging setup."""
