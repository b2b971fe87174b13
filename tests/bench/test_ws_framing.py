"""The load generator's own WebSocket framing for steady traffic, read back and produced by the
``websockets`` library: what it sends is what the library's server side reads, and it splits
what a server sends exactly as the library would, handing anything but whole data frames back."""

from __future__ import annotations

import pytest
from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.streams import StreamReader

from bench.load.ws_callers import _FIN_BINARY, _FIN_TEXT, client_frame, split_server_frames
from bridge.core.realtime import MaskingKeys
from tests.servers import serve_app


def read_back_as_server(data: bytes) -> list[Frame]:
    """Frames the library's server side parses from ``data`` (masked client frames)."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=True)
        try:
            next(parser)
        except StopIteration as done:
            frames.append(done.value)
    return frames


@pytest.mark.parametrize("size", [0, 1, 125, 126, 300, 65535, 65536, 70000])
def test_client_frames_read_back_through_the_library(size: int) -> None:
    text = ("x" * size).encode()
    binary = bytes(range(256)) * (size // 256) + bytes(size % 256)
    keys = MaskingKeys()
    data = client_frame(_FIN_TEXT, text, keys.take()) + client_frame(_FIN_BINARY, binary, keys.take())
    first, second = read_back_as_server(data)
    assert (first.opcode, first.data, first.fin) == (Opcode.TEXT, text, True)
    assert (second.opcode, second.data, second.fin) == (Opcode.BINARY, binary, True)


def test_mask_keys_are_four_random_bytes() -> None:
    keys = MaskingKeys()
    drawn = [keys.take() for _ in range(6)]
    assert all(len(k) == 4 for k in drawn)
    assert len(set(drawn)) > 1


def server_bytes(*frames: Frame) -> bytes:
    return b"".join(f.serialize(mask=False) for f in frames)


def test_server_frames_split_whole_and_keep_the_partial_tail() -> None:
    frames = [Frame(Opcode.TEXT, b'{"event":"media"}'), Frame(Opcode.BINARY, bytes(320)),
              Frame(Opcode.TEXT, b"y" * 200), Frame(Opcode.BINARY, bytes(70000))]
    data = server_bytes(*frames)
    for cut in (0, 1, 2, 5, 19, len(data) - 1, len(data)):
        buf = bytearray(data[:cut])
        got, used, stopped = split_server_frames(buf)
        assert not stopped
        del buf[:used]
        buf += data[cut:]
        more, used2, stopped2 = split_server_frames(buf)
        assert not stopped2 and used2 == len(buf)
        assert [(int(f.opcode), f.data) for f in frames] == got + more


@pytest.mark.parametrize("other", [
    Frame(Opcode.CLOSE, Close(CloseCode.NORMAL_CLOSURE, "bye").serialize()),
    Frame(Opcode.PING, b"p"),
    Frame(Opcode.TEXT, b"part", fin=False),
    bytes((0xC1, 1)) + b"x",  # RSV1 set: an extension's frame
])
def test_any_other_frame_stops_the_split_for_the_library(other: Frame | bytes) -> None:
    before = Frame(Opcode.TEXT, b"first")
    raw = other if isinstance(other, bytes) else other.serialize(mask=False)
    buf = bytearray(server_bytes(before) + raw + server_bytes(Frame(Opcode.TEXT, b"after")))
    got, used, stopped = split_server_frames(buf)
    assert stopped and got == [(1, b"first")] and used == len(server_bytes(before))


def test_a_masked_server_frame_is_not_taken() -> None:
    buf = bytearray(Frame(Opcode.TEXT, b"masked").serialize(mask=True))
    assert split_server_frames(buf) == ([], 0, True)


class Listener:
    """What ``_WsMedia`` calls on its caller."""

    def __init__(self) -> None:
        self.texts: list[bytes] = []
        self.binaries: list[bytes] = []
        self.close_code: int | None = None
        self.closed = 0

    def on_text(self, data: bytes, now: float) -> None:
        self.texts.append(data)

    def on_binary(self, data: bytes, now: float) -> None:
        self.binaries.append(data)

    def media_closed(self) -> None:
        self.closed += 1


async def test_a_connection_frames_its_steady_traffic_and_leaves_the_close_to_the_library() -> None:
    import asyncio

    from aiohttp import WSMsgType, web

    from bench.load.ws_callers import _WsMedia

    received: list[tuple[WSMsgType, object]] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            received.append((msg.type, msg.data))
            if msg.type is WSMsgType.TEXT and msg.data == "bye":
                break
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data.upper())
            else:
                await ws.send_bytes(bytes(reversed(msg.data)))
        await ws.close(code=1000)
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    async with serve_app(app) as port:
        listener = Listener()
        loop = asyncio.get_running_loop()
        _, media = await loop.create_connection(
            lambda: _WsMedia(listener, f"ws://127.0.0.1:{port}/ws", None), "127.0.0.1", port)  # type: ignore[arg-type]
        await asyncio.wait_for(media.opened, 5)
        media.send_text("hello")
        async with asyncio.timeout(5):
            while not listener.texts:
                await asyncio.sleep(0.01)
        assert media._direct  # past the handshake, frames are framed and read here
        media.send_binary(b"\x01\x02\x03" * 200)
        media.send_text("z" * 70000)
        async with asyncio.timeout(5):
            while len(listener.texts) < 2 or not listener.binaries:
                await asyncio.sleep(0.01)
        media.send_text("bye")
        # The server's close frame goes to the library, which answers it and ends the connection.
        await asyncio.wait_for(media.closed, 5)
        assert not media._direct
        assert media.ws.close_rcvd is not None and media.ws.close_rcvd.code == 1000
    assert listener.texts == [b"HELLO", b"Z" * 70000]
    assert listener.binaries == [bytes(reversed(b"\x01\x02\x03" * 200))]
    assert [(t, d) for t, d in received] == [
        (WSMsgType.TEXT, "hello"), (WSMsgType.BINARY, b"\x01\x02\x03" * 200),
        (WSMsgType.TEXT, "z" * 70000), (WSMsgType.TEXT, "bye")]
