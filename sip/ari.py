"""Asterisk REST Interface (ARI): event models and request builders, sans-I/O.

Field names follow Asterisk's Swagger models (``rest-api/api-docs/events.json`` for events,
``channels.json`` for ``Channel``, ``CallerID``, ``DialplanCEP`` and the channel operations,
``bridges.json`` for bridges). Events arrive as JSON objects over the ARI WebSocket; parsing is
tolerant the way a long-lived event stream must be: missing optional fields get defaults, unknown
event types become :class:`Unknown`, and a message that is not usable at all (not JSON, no ``type``,
no ``channel`` where one is required) becomes :class:`InvalidMessage`. Nothing here raises for
input from Asterisk.

Request builders return :class:`AriRequest` ``(method, path, query, body)`` tuples; the HTTP client
in ``bridge/`` sends them. ARI reads every parameter from the query string; ``variables`` (channel
variables) travels in the JSON body.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import quote


class AriRequest(NamedTuple):
    method: str
    path: str
    query: dict[str, str]
    body: dict[str, Any] | None = None


# --- models ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallerId:
    name: str = ""
    number: str = ""


@dataclass(frozen=True, slots=True)
class Dialplan:
    context: str = ""
    exten: str = ""
    priority: int = 0
    app_name: str = ""
    app_data: str = ""


@dataclass(frozen=True, slots=True)
class Channel:
    id: str
    name: str = ""
    state: str = ""  # Down, Rsrved, OffHook, Dialing, Ring, Ringing, Up, Busy, ...
    caller: CallerId = CallerId()
    connected: CallerId = CallerId()
    dialplan: Dialplan = Dialplan()
    channelvars: dict[str, str] = field(default_factory=dict)  # only the variables ari.conf asks for
    protocol_id: str = ""  # the SIP Call-ID for PJSIP channels
    language: str = ""
    accountcode: str = ""
    creationtime: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Channel:
        """Build from an ARI ``Channel`` object; raise ``ValueError`` if it has no string ``id``."""
        channel_id = data.get("id")
        if not isinstance(channel_id, str) or not channel_id:
            raise ValueError("channel without an id")
        return cls(
            id=channel_id,
            name=_s(data, "name"),
            state=_s(data, "state"),
            caller=_caller(data.get("caller")),
            connected=_caller(data.get("connected")),
            dialplan=_dialplan(data.get("dialplan")),
            channelvars=_vars(data.get("channelvars")),
            protocol_id=_s(data, "protocol_id"),
            language=_s(data, "language"),
            accountcode=_s(data, "accountcode"),
            creationtime=_s(data, "creationtime"),
        )


def _s(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else ""


def _opt_int(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _caller(value: object) -> CallerId:
    if not isinstance(value, dict):
        return CallerId()
    return CallerId(_s(value, "name"), _s(value, "number"))


def _dialplan(value: object) -> Dialplan:
    if not isinstance(value, dict):
        return Dialplan()
    return Dialplan(
        context=_s(value, "context"),
        exten=_s(value, "exten"),
        priority=_opt_int(value, "priority") or 0,
        app_name=_s(value, "app_name"),
        app_data=_s(value, "app_data"),
    )


def _vars(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {
        str(k): v if isinstance(v, str) else ("" if v is None else json.dumps(v)) for k, v in value.items()
    }


@dataclass(frozen=True, slots=True)
class ExternalMediaInfo:
    """Where the external-media channel's audio goes, from the variables chan_rtp / chan_audiosocket /
    chan_websocket set on it (returned in the ``externalMedia`` response's ``channelvars``)."""

    rtp_address: str | None = None  # UNICASTRTP_LOCAL_ADDRESS: send RTP back here
    rtp_port: int | None = None  # UNICASTRTP_LOCAL_PORT
    audiosocket_uuid: str | None = None
    audiosocket_service: str | None = None
    websocket_connection_id: str | None = None  # MEDIA_WEBSOCKET_CONNECTION_ID: /media/<id>
    websocket_optimal_frame_size: int | None = None

    @classmethod
    def from_channel(cls, channel: Channel) -> ExternalMediaInfo:
        v = channel.channelvars

        def number(key: str) -> int | None:
            text = v.get(key, "")
            return int(text) if text.isdigit() else None

        return cls(
            rtp_address=v.get("UNICASTRTP_LOCAL_ADDRESS") or None,
            rtp_port=number("UNICASTRTP_LOCAL_PORT"),
            audiosocket_uuid=v.get("AUDIOSOCKET_UUID") or None,
            audiosocket_service=v.get("AUDIOSOCKET_SERVICE") or None,
            websocket_connection_id=v.get("MEDIA_WEBSOCKET_CONNECTION_ID") or None,
            websocket_optimal_frame_size=number("MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE"),
        )


# --- events ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StasisStart:
    channel: Channel
    args: tuple[str, ...] = ()  # the arguments after the app name in Stasis(app,arg1,...)
    replace_channel: Channel | None = None
    application: str = ""
    timestamp: str = ""


@dataclass(frozen=True, slots=True)
class StasisEnd:
    channel: Channel
    application: str = ""
    timestamp: str = ""


@dataclass(frozen=True, slots=True)
class ChannelDestroyed:
    channel: Channel
    cause: int | None = None  # Q.850 cause, 16 = normal clearing
    cause_txt: str = ""
    tech_cause: int | None = None
    application: str = ""
    timestamp: str = ""


@dataclass(frozen=True, slots=True)
class ChannelHangupRequest:
    channel: Channel
    cause: int | None = None
    soft: bool = False
    tech_cause: int | None = None
    application: str = ""
    timestamp: str = ""


@dataclass(frozen=True, slots=True)
class ChannelDtmfReceived:
    """Sent when a digit ends (events.json: there is no notification about the start)."""

    channel: Channel
    digit: str
    duration_ms: int | None = None
    application: str = ""
    timestamp: str = ""


@dataclass(frozen=True, slots=True)
class ChannelStateChange:
    channel: Channel
    application: str = ""
    timestamp: str = ""


@dataclass(frozen=True, slots=True)
class Unknown:
    type: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class InvalidMessage:
    reason: str


Event = (
    StasisStart
    | StasisEnd
    | ChannelDestroyed
    | ChannelHangupRequest
    | ChannelDtmfReceived
    | ChannelStateChange
    | Unknown
    | InvalidMessage
)


def parse_event(message: Mapping[str, Any] | str | bytes) -> Event:
    """Decode one ARI event (a JSON text or an already decoded object). Never raises."""
    if isinstance(message, str | bytes):
        try:
            decoded = json.loads(message)
        except (ValueError, RecursionError):
            return InvalidMessage("not valid JSON")
        if not isinstance(decoded, dict):
            return InvalidMessage("not a JSON object")
        message = decoded
    kind = message.get("type")
    if not isinstance(kind, str):
        return InvalidMessage("'type' must be a string")
    builder = _BUILDERS.get(kind)
    if builder is None:
        return Unknown(kind, dict(message))
    raw_channel = message.get("channel")
    if not isinstance(raw_channel, dict):
        return InvalidMessage(f"{kind} without a channel")
    try:
        channel = Channel.from_json(raw_channel)
    except ValueError as exc:
        return InvalidMessage(f"{kind}: {exc}")
    app = _s(message, "application")
    ts = _s(message, "timestamp")
    return builder(message, channel, app, ts)


def _stasis_start(m: Mapping[str, Any], ch: Channel, app: str, ts: str) -> Event:
    args = m.get("args")
    replace = m.get("replace_channel")
    replace_channel = None
    if isinstance(replace, dict):
        try:
            replace_channel = Channel.from_json(replace)
        except ValueError:
            replace_channel = None
    arg_list = tuple(a for a in args if isinstance(a, str)) if isinstance(args, list) else ()
    return StasisStart(ch, arg_list, replace_channel, app, ts)


def _stasis_end(m: Mapping[str, Any], ch: Channel, app: str, ts: str) -> Event:
    return StasisEnd(ch, app, ts)


def _destroyed(m: Mapping[str, Any], ch: Channel, app: str, ts: str) -> Event:
    return ChannelDestroyed(ch, _opt_int(m, "cause"), _s(m, "cause_txt"), _opt_int(m, "tech_cause"), app, ts)


def _hangup_request(m: Mapping[str, Any], ch: Channel, app: str, ts: str) -> Event:
    return ChannelHangupRequest(
        ch, _opt_int(m, "cause"), m.get("soft") is True, _opt_int(m, "tech_cause"), app, ts
    )


def _dtmf(m: Mapping[str, Any], ch: Channel, app: str, ts: str) -> Event:
    digit = m.get("digit")
    if not isinstance(digit, str) or len(digit) != 1:
        return InvalidMessage("ChannelDtmfReceived without a one-character digit")
    return ChannelDtmfReceived(ch, digit, _opt_int(m, "duration_ms"), app, ts)


def _state_change(m: Mapping[str, Any], ch: Channel, app: str, ts: str) -> Event:
    return ChannelStateChange(ch, app, ts)


_BUILDERS = {
    "StasisStart": _stasis_start,
    "StasisEnd": _stasis_end,
    "ChannelDestroyed": _destroyed,
    "ChannelHangupRequest": _hangup_request,
    "ChannelDtmfReceived": _dtmf,
    "ChannelStateChange": _state_change,
}


# --- requests ----------------------------------------------------------------------------------------


def _seg(value: str) -> str:
    if not value:
        raise ValueError("identifier must not be empty")
    return quote(value, safe="")


def _query(**params: str | int | bool | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in params.items():
        if value is None:
            continue
        out[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


def answer(channel_id: str) -> AriRequest:
    return AriRequest("POST", f"/channels/{_seg(channel_id)}/answer", {})


def continue_in_dialplan(
    channel_id: str,
    context: str | None = None,
    extension: str | None = None,
    priority: int | None = None,
    label: str | None = None,
) -> AriRequest:
    """Leave Stasis and carry on in the dialplan (e.g. to a human queue after a transfer request)."""
    return AriRequest(
        "POST",
        f"/channels/{_seg(channel_id)}/continue",
        _query(context=context, extension=extension, priority=priority, label=label),
    )


def redirect(channel_id: str, endpoint: str) -> AriRequest:
    """Redirect the channel (SIP 302 / REFER) to ``endpoint`` (``PJSIP/...`` or a technology URI)."""
    if not endpoint:
        raise ValueError("endpoint must not be empty")
    return AriRequest("POST", f"/channels/{_seg(channel_id)}/redirect", _query(endpoint=endpoint))


HANGUP_REASONS = frozenset(
    {
        "normal",
        "busy",
        "congestion",
        "no_answer",
        "timeout",
        "rejected",
        "unallocated",
        "normal_unspecified",
        "number_incomplete",
        "codec_mismatch",
        "interworking",
        "failure",
        "answered_elsewhere",
    }
)


def hangup(channel_id: str, reason: str | None = None, reason_code: int | None = None) -> AriRequest:
    if reason is not None and reason not in HANGUP_REASONS:
        raise ValueError(f"hangup reason must be one of {sorted(HANGUP_REASONS)}")
    if reason is not None and reason_code is not None:
        raise ValueError("give reason or reason_code, not both")
    return AriRequest(
        "DELETE", f"/channels/{_seg(channel_id)}", _query(reason=reason, reason_code=reason_code)
    )


def get_channel_var(channel_id: str, variable: str) -> AriRequest:
    """The response is ``{"value": "..."}``."""
    if not variable:
        raise ValueError("variable must not be empty")
    return AriRequest("GET", f"/channels/{_seg(channel_id)}/variable", _query(variable=variable))


def set_channel_var(channel_id: str, variable: str, value: str) -> AriRequest:
    if not variable:
        raise ValueError("variable must not be empty")
    return AriRequest(
        "POST", f"/channels/{_seg(channel_id)}/variable", _query(variable=variable, value=value)
    )


def create_bridge(
    bridge_type: str = "mixing", bridge_id: str | None = None, name: str | None = None
) -> AriRequest:
    """``bridge_type`` is a comma-separated list: mixing, holding, dtmf_events, proxy_media, video_sfu, ..."""
    query = _query(type=bridge_type, name=name)
    if bridge_id is not None:
        return AriRequest("POST", f"/bridges/{_seg(bridge_id)}", query)
    return AriRequest("POST", "/bridges", query)


def add_channel(
    bridge_id: str,
    channel: str | Iterable[str],
    *,
    role: str | None = None,
    absorb_dtmf: bool | None = None,
    mute: bool | None = None,
) -> AriRequest:
    channels = [channel] if isinstance(channel, str) else list(channel)
    if not channels or not all(channels):
        raise ValueError("at least one channel id is required")
    return AriRequest(
        "POST",
        f"/bridges/{_seg(bridge_id)}/addChannel",
        _query(channel=",".join(channels), role=role, absorbDTMF=absorb_dtmf, mute=mute),
    )


def remove_channel(bridge_id: str, channel: str) -> AriRequest:
    return AriRequest("POST", f"/bridges/{_seg(bridge_id)}/removeChannel", _query(channel=_nonempty(channel)))


def destroy_bridge(bridge_id: str) -> AriRequest:
    return AriRequest("DELETE", f"/bridges/{_seg(bridge_id)}", {})


def _nonempty(value: str) -> str:
    if not value:
        raise ValueError("value must not be empty")
    return value


ENCAPSULATIONS = frozenset({"rtp", "audiosocket", "none"})
TRANSPORTS = frozenset({"udp", "tcp", "websocket"})
CONNECTION_TYPES = frozenset({"client", "server"})
DIRECTIONS = frozenset({"both", "in", "out"})
_TRANSPORT_FOR = {"rtp": "udp", "audiosocket": "tcp", "none": "websocket"}


def external_media(
    app: str,
    format: str,
    *,
    external_host: str | None = None,
    encapsulation: str = "rtp",
    transport: str | None = None,
    connection_type: str = "client",
    direction: str | None = None,
    data: str | None = None,
    transport_data: str | None = None,
    channel_id: str | None = None,
    variables: Mapping[str, str] | None = None,
) -> AriRequest:
    """``POST /channels/externalMedia``, checked the way ``ast_ari_channels_external_media``
    (``res/ari/resource_channels.c``) checks it, so a bad combination fails here and not as a 400.

    ``transport`` defaults to the only one each encapsulation allows: rtp->udp, audiosocket->tcp,
    none->websocket. For AudioSocket, ``data`` is the call UUID Asterisk sends as its first message.
    ``direction`` (both/in/out) matters only for websocket, where it becomes ``d(...)``.
    """
    if not app:
        raise ValueError("app must not be empty")
    if not format:
        raise ValueError("format must not be empty")
    if encapsulation not in ENCAPSULATIONS:
        raise ValueError(f"encapsulation must be one of {sorted(ENCAPSULATIONS)}")
    transport = transport or _TRANSPORT_FOR[encapsulation]
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {sorted(TRANSPORTS)}")
    if _TRANSPORT_FOR[encapsulation] != transport:
        raise ValueError(
            f"{encapsulation} encapsulation requires transport {_TRANSPORT_FOR[encapsulation]!r}"
        )
    if connection_type not in CONNECTION_TYPES:
        raise ValueError(f"connection_type must be one of {sorted(CONNECTION_TYPES)}")
    if connection_type == "server" and transport != "websocket":
        raise ValueError("'server' connection_type can only be used with the websocket transport")
    if not external_host and connection_type == "client":
        raise ValueError("external_host is required for all but websocket server connections")
    if external_host and transport != "websocket":
        host, sep, port = external_host.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError("external_host must be <host>:<port> for all transports other than websocket")
    if direction is not None and direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {sorted(DIRECTIONS)}")
    if encapsulation == "audiosocket" and not data:
        raise ValueError("AudioSocket external media requires data (the call UUID)")
    query = _query(
        app=app,
        channelId=channel_id,
        external_host=external_host,
        encapsulation=encapsulation,
        transport=transport,
        connection_type=connection_type,
        format=format,
        direction=direction,
        data=data,
        transport_data=transport_data,
    )
    body = {"variables": dict(variables)} if variables else None
    return AriRequest("POST", "/channels/externalMedia", query, body)
