"""ARI event models and request builders (Asterisk rest-api/api-docs/*.json, res/ari/resource_channels.c)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip import ari
from sip.ari import (
    AriRequest,
    CallerId,
    Channel,
    ChannelDestroyed,
    ChannelDtmfReceived,
    ChannelHangupRequest,
    ChannelStateChange,
    Dialplan,
    ExternalMediaInfo,
    InvalidMessage,
    StasisEnd,
    StasisStart,
    Unknown,
    parse_event,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ari"


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())  # type: ignore[no-any-return]


def test_stasis_start_caller() -> None:
    event = parse_event(load("stasis_start_caller.json"))
    assert isinstance(event, StasisStart)
    assert event.args == ("inbound", "+5511999990001")
    assert event.application == "callbridge"
    assert event.timestamp == "2026-11-22T03:41:07.184+0000"
    ch = event.channel
    assert (ch.id, ch.name, ch.state) == ("1763782867.17", "PJSIP/carrier-a-00000008", "Ring")
    assert ch.caller == CallerId("Maria", "+5511988887777")
    assert ch.dialplan == Dialplan(
        "from-carrier", "+5511999990001", 3, "Stasis", "callbridge,inbound,+5511999990001"
    )
    assert ch.protocol_id.endswith("@203.0.113.10")
    assert ch.language == "pt_BR"
    assert ch.channelvars == {}
    assert event.replace_channel is None


def test_stasis_start_external_media_channel() -> None:
    event = parse_event(json.dumps(load("stasis_start_external_media.json")))
    assert isinstance(event, StasisStart)
    assert event.args == ()
    assert event.channel.name.startswith("UnicastRTP/")
    assert event.channel.state == "Down"


def test_call_teardown_events() -> None:
    dtmf = parse_event(load("channel_dtmf_received.json"))
    assert isinstance(dtmf, ChannelDtmfReceived)
    assert (dtmf.digit, dtmf.duration_ms, dtmf.channel.state) == ("5", 160, "Up")
    hangup = parse_event(load("channel_hangup_request.json"))
    assert isinstance(hangup, ChannelHangupRequest) and (hangup.cause, hangup.soft) == (16, False)
    end = parse_event(load("stasis_end.json"))
    assert isinstance(end, StasisEnd) and end.channel.id == "1763782867.17"
    destroyed = parse_event((FIXTURES / "channel_destroyed.json").read_bytes())
    assert isinstance(destroyed, ChannelDestroyed)
    assert (destroyed.cause, destroyed.cause_txt, destroyed.tech_cause) == (16, "Normal Clearing", 200)
    state = parse_event(load("channel_state_change.json"))
    assert isinstance(state, ChannelStateChange) and state.channel.state == "Up"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("external_media_rtp_response.json", ExternalMediaInfo(rtp_address="127.0.0.1", rtp_port=18234)),
        (
            "external_media_audiosocket_response.json",
            ExternalMediaInfo(
                audiosocket_uuid="4a1c7e1e-3b6f-4a52-9d1e-0c3c4f2a9b10", audiosocket_service="127.0.0.1:9092"
            ),
        ),
        (
            "external_media_websocket_response.json",
            ExternalMediaInfo(
                websocket_connection_id="8d4c2f8e-1b7a-4f0e-a1f3-2d9c7b6e5a40",
                websocket_optimal_frame_size=640,
            ),
        ),
    ],
)
def test_external_media_responses(name: str, expected: ExternalMediaInfo) -> None:
    assert ExternalMediaInfo.from_channel(Channel.from_json(load(name))) == expected


def test_tolerant_parsing() -> None:
    # A bare channel with only an id still parses; odd field types fall back to defaults.
    event = parse_event(
        {
            "type": "StasisStart",
            "args": ["a", 5, None, "b"],
            "channel": {
                "id": "x",
                "caller": "nobody",
                "dialplan": {"priority": "7"},
                "channelvars": {"A": "1", "B": None, "C": 3},
            },
            "replace_channel": {"name": "no id"},
            "extra": True,
        }
    )
    assert event == StasisStart(
        Channel("x", dialplan=Dialplan(priority=7), channelvars={"A": "1", "B": "", "C": "3"}), ("a", "b")
    )
    assert parse_event({"type": "ChannelVarset", "variable": "X"}) == Unknown(
        "ChannelVarset", {"type": "ChannelVarset", "variable": "X"}
    )


@pytest.mark.parametrize(
    "message",
    [
        "not json",
        b"\xff",
        "[]",
        {},
        {"type": 1},
        {"type": "StasisStart"},
        {"type": "StasisEnd", "channel": "x"},
        {"type": "StasisEnd", "channel": {"name": "no id"}},
        {"type": "ChannelDtmfReceived", "channel": {"id": "x"}, "digit": "12"},
        {"type": "ChannelDtmfReceived", "channel": {"id": "x"}},
    ],
)
def test_invalid_events(message: Any) -> None:
    assert isinstance(parse_event(message), InvalidMessage)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
channel_like = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "name": json_values,
        "state": json_values,
        "caller": json_values,
        "dialplan": json_values,
        "channelvars": json_values,
    },
)


@settings(max_examples=60, deadline=None)  # nested JSON generation is the slow part
@given(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(
                [
                    "StasisStart",
                    "StasisEnd",
                    "ChannelDestroyed",
                    "ChannelHangupRequest",
                    "ChannelDtmfReceived",
                    "ChannelStateChange",
                    "Other",
                ]
            )
            | json_values
        },
        optional={
            "channel": channel_like | json_values,
            "args": json_values,
            "digit": json_values,
            "cause": json_values,
            "duration_ms": json_values,
            "replace_channel": channel_like,
        },
    )
)
def test_property_structured_garbage_gives_events(message: dict[str, Any]) -> None:
    event = parse_event(message)
    assert type(event).__module__ == "sip.ari"
    assert parse_event(json.dumps(message)) == event


@given(st.binary(max_size=100) | st.text(max_size=100))
def test_property_arbitrary_text(data: bytes | str) -> None:
    assert type(parse_event(data)).__module__ == "sip.ari"


# --- requests -----------------------------------------------------------------------------------


def test_channel_requests() -> None:
    assert ari.answer("1763782867.17") == AriRequest("POST", "/channels/1763782867.17/answer", {})
    assert ari.continue_in_dialplan("c1", "agents", "s", 1) == AriRequest(
        "POST", "/channels/c1/continue", {"context": "agents", "extension": "s", "priority": "1"}
    )
    assert ari.continue_in_dialplan("c1", label="human").query == {"label": "human"}
    assert ari.redirect("c1", "PJSIP/agent@pbx") == AriRequest(
        "POST", "/channels/c1/redirect", {"endpoint": "PJSIP/agent@pbx"}
    )
    assert ari.hangup("c1") == AriRequest("DELETE", "/channels/c1", {})
    assert ari.hangup("c1", reason="busy").query == {"reason": "busy"}
    assert ari.hangup("c1", reason_code=17).query == {"reason_code": "17"}
    assert ari.get_channel_var("c1", "TENANT") == AriRequest(
        "GET", "/channels/c1/variable", {"variable": "TENANT"}
    )
    assert ari.set_channel_var("c1", "X", "1").query == {"variable": "X", "value": "1"}
    # Identifiers are one path segment whatever they contain.
    assert ari.answer("a/b c").path == "/channels/a%2Fb%20c/answer"
    for bad in (
        lambda: ari.answer(""),
        lambda: ari.redirect("c1", ""),
        lambda: ari.hangup("c1", reason="bored"),
        lambda: ari.hangup("c1", reason="busy", reason_code=17),
        lambda: ari.get_channel_var("c1", ""),
    ):
        with pytest.raises(ValueError):
            bad()


def test_bridge_requests() -> None:
    assert ari.create_bridge() == AriRequest("POST", "/bridges", {"type": "mixing"})
    assert ari.create_bridge("mixing,dtmf_events", bridge_id="b1", name="call") == AriRequest(
        "POST", "/bridges/b1", {"type": "mixing,dtmf_events", "name": "call"}
    )
    assert ari.add_channel("b1", ["c1", "c2"], absorb_dtmf=True) == AriRequest(
        "POST", "/bridges/b1/addChannel", {"channel": "c1,c2", "absorbDTMF": "true"}
    )
    assert ari.add_channel("b1", "c1", mute=False).query == {"channel": "c1", "mute": "false"}
    assert ari.remove_channel("b1", "c1") == AriRequest(
        "POST", "/bridges/b1/removeChannel", {"channel": "c1"}
    )
    assert ari.destroy_bridge("b1") == AriRequest("DELETE", "/bridges/b1", {})
    with pytest.raises(ValueError):
        ari.add_channel("b1", [])


def test_external_media_rtp() -> None:
    request = ari.external_media("callbridge", "slin16", external_host="10.0.0.9:40000", channel_id="em-1")
    assert request == AriRequest(
        "POST",
        "/channels/externalMedia",
        {
            "app": "callbridge",
            "channelId": "em-1",
            "external_host": "10.0.0.9:40000",
            "encapsulation": "rtp",
            "transport": "udp",
            "connection_type": "client",
            "format": "slin16",
        },
        None,
    )


def test_external_media_audiosocket_and_websocket() -> None:
    audiosocket = ari.external_media(
        "callbridge",
        "slin",
        external_host="[::1]:9092",
        encapsulation="audiosocket",
        data="4a1c7e1e-3b6f-4a52-9d1e-0c3c4f2a9b10",
        variables={"TENANT": "acme"},
    )
    assert audiosocket.query["transport"] == "tcp"
    assert audiosocket.query["data"] == "4a1c7e1e-3b6f-4a52-9d1e-0c3c4f2a9b10"
    assert audiosocket.body == {"variables": {"TENANT": "acme"}}
    server = ari.external_media(
        "callbridge",
        "ulaw",
        encapsulation="none",
        connection_type="server",
        direction="both",
        transport_data="f(json)",
    )
    assert server.query == {
        "app": "callbridge",
        "encapsulation": "none",
        "transport": "websocket",
        "connection_type": "server",
        "format": "ulaw",
        "direction": "both",
        "transport_data": "f(json)",
    }
    client = ari.external_media("callbridge", "slin24", external_host="media_conn", encapsulation="none")
    assert client.query["external_host"] == "media_conn"  # a websocket_client.conf id, not host:port


@pytest.mark.parametrize(
    "kwargs",
    [
        {"app": "", "format": "ulaw", "external_host": "h:1"},
        {"app": "a", "format": "", "external_host": "h:1"},
        {"app": "a", "format": "ulaw", "external_host": "h:1", "encapsulation": "srtp"},
        {"app": "a", "format": "ulaw", "external_host": "h:1", "transport": "tcp"},  # rtp needs udp
        {"app": "a", "format": "ulaw", "external_host": "h:1", "transport": "carrier-pigeon"},
        {"app": "a", "format": "ulaw", "external_host": "h:1", "encapsulation": "audiosocket"},  # no data
        {"app": "a", "format": "ulaw", "external_host": "h:1", "connection_type": "server"},
        {"app": "a", "format": "ulaw", "external_host": "h:1", "connection_type": "peer"},
        {"app": "a", "format": "ulaw"},  # client without a host
        {"app": "a", "format": "ulaw", "external_host": "hostonly"},
        {"app": "a", "format": "ulaw", "external_host": "h:port"},
        {"app": "a", "format": "ulaw", "external_host": "h:1", "direction": "sideways"},
        {"app": "a", "format": "ulaw", "encapsulation": "none", "transport": "udp", "external_host": "h:1"},
    ],
)
def test_external_media_rejects_what_asterisk_rejects(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ari.external_media(**kwargs)
