"""The ARI client against the local ARI server: REST errors, credentials, reconnect with backoff."""

from __future__ import annotations

import asyncio
import random

import pytest

from bridge.asterisk.ari import AriClient, AriHttpError, AriUnavailable, ari_base_url, media_base_url
from bridge.settings import AriSettings
from sip import ari
from tests.peers.ari_server import AriServer


def _settings(url: str, **extra) -> AriSettings:
    values = {"enabled": True, "url": url, "username": "callbridge", "password": "secret",
              "app": "callbridge-test", "reconnect_min": 0.05, "reconnect_max": 0.2, "request_timeout": 2.0}
    values.update(extra)
    return AriSettings(**values)


def test_urls():
    assert ari_base_url("http://pbx:8088") == "http://pbx:8088/ari"
    assert ari_base_url("http://pbx:8088/ari/") == "http://pbx:8088/ari"
    assert media_base_url(_settings("https://pbx.example:8089")) == "wss://pbx.example:8089"
    assert media_base_url(_settings("http://pbx:8088", media_url="ws://10.0.0.5:8088/")) == "ws://10.0.0.5:8088"


async def test_rest_answers_and_errors():
    server = AriServer()
    await server.start()
    client = AriClient(_settings(server.url))
    try:
        caller = await server.place_call("callbridge-test", "+5511999990001")
        await client.request(ari.answer(caller.channel.id))
        assert caller.channel.state == "Up"
        bridge = await client.request(ari.create_bridge("mixing", bridge_id="b1"))
        assert bridge["id"] == "b1" and bridge["bridge_type"] == "mixing"
        with pytest.raises(AriHttpError) as info:
            await client.request(ari.answer("no-such-channel"))
        assert info.value.status == 404 and info.value.message == "Channel not found"
        # A channel outside Stasis cannot be bridged: Asterisk's 422, message passed through.
        await client.request(ari.external_media("callbridge-test", "ulaw", external_host="127.0.0.1:9",
                                                channel_id="m1"))
        server.channels["m1"].in_stasis = False
        with pytest.raises(AriHttpError) as info:
            await client.request(ari.add_channel("b1", "m1"))
        assert info.value.status == 422 and "not in Stasis" in info.value.message
        assert server.requests[0].query == {}
    finally:
        await client.close()
        await server.stop()


async def test_wrong_password_and_unreachable_server():
    server = AriServer(password="other")
    await server.start()
    client = AriClient(_settings(server.url))
    try:
        with pytest.raises(AriHttpError) as info:
            await client.request(ari.answer("x"))
        assert info.value.status == 401
    finally:
        await client.close()
        await server.stop()
    client = AriClient(_settings(server.url))
    try:
        with pytest.raises(AriUnavailable):
            await client.request(ari.answer("x"))
    finally:
        await client.close()


async def test_events_reconnect_with_backoff_and_reregister():
    server = AriServer()
    await server.start()
    port = server.port
    await server.stop()  # Asterisk is not up yet when the daemon starts
    client = AriClient(_settings(f"http://127.0.0.1:{port}"), rng=random.Random(7))
    received: list[ari.Event] = []
    connected: list[int] = []
    task = asyncio.create_task(client.run_events(received.append, lambda: connected.append(client.connections)))
    try:
        await asyncio.sleep(0.5)
        assert client.connections == 0 and not client.connected.is_set()
        await server.start(port)
        await asyncio.wait_for(client.connected.wait(), 5)
        await asyncio.wait_for(server.app_registered.wait(), 5)
        await server.place_call("callbridge-test", "+5511999990001")
        async with asyncio.timeout(5):
            while not received:
                await asyncio.sleep(0.01)
        assert isinstance(received[0], ari.StasisStart)
        # Asterisk restarts: the application is registered again on the new connection.
        await server.restart(down_seconds=0.3)
        await asyncio.wait_for(server.app_registered.wait(), 5)
        async with asyncio.timeout(5):
            while client.connections < 2:
                await asyncio.sleep(0.01)
        assert connected == [1, 2]
        assert "callbridge-test" in server.apps
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await client.close()
        await server.stop()


async def test_refused_credentials_on_the_events_socket_keep_retrying():
    server = AriServer(password="other")
    await server.start()
    client = AriClient(_settings(server.url))
    task = asyncio.create_task(client.run_events(lambda e: None))
    try:
        await asyncio.sleep(0.6)
        assert client.connections == 0
        # Fixing the credentials on the Asterisk side lets the next attempt in.
        server.password = "secret"
        await asyncio.wait_for(client.connected.wait(), 5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await client.close()
        await server.stop()
