"""Typed settings: one object built at start-up from the environment, a ``.env`` file and a YAML
config file, then passed down. Nothing below the app reads the environment.

Precedence, highest first: explicit overrides, ``CALLBRIDGE_*`` variables (nested with ``__``, e.g.
``CALLBRIDGE_AUDIOSOCKET__PORT``), the variable names existing deployments use (``OPENAI_API_KEY``,
``PORT``, ``SUPABASE_URL`` ...), the ``.env`` file, the YAML config file, defaults.
"""

from __future__ import annotations

import contextvars
import copy
import difflib
import enum
import json
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from bridge.security.networks import network, parse_networks, private_networks
from tenants.settings import TenantSettings


def _valid_networks(values: list[str]) -> list[str]:
    """Each entry an IP network (a bare address counts as one host), kept as written."""
    import ipaddress

    for value in values:
        ipaddress.ip_network(value, strict=False)
    return values


# Networks kept as the strings configured (logged and shown as such), checked at load.
NetworkList = Annotated[list[str], AfterValidator(_valid_networks)]


class ConfigError(Exception):
    """Configuration that cannot be used; the message names the setting."""


class _Section(BaseModel):
    """A settings section: an unknown key is an error, so that a misspelt setting is not ignored."""

    model_config = ConfigDict(extra="forbid")


class AppEnv(enum.StrEnum):
    DEVELOPMENT = "development"
    STAGING = "staging"
    PRODUCTION = "production"


class EventLoop(enum.StrEnum):
    AUTO = "auto"
    ASYNCIO = "asyncio"
    UVLOOP = "uvloop"


class ModelProvider(enum.StrEnum):
    AUTO = "auto"  # openai when an API key is set, else the built-in simulator
    OPENAI = "openai"
    AZURE_OPENAI = "azure_openai"
    AZURE_VOICELIVE = "azure_voicelive"
    SIMULATOR = "simulator"


class ModelSettings(_Section):
    provider: ModelProvider = ModelProvider.AUTO
    api_key: SecretStr | None = None
    # Base URLs of the HTTP and WebSocket endpoints; unset means the SDK's own defaults, which
    # honour OPENAI_BASE_URL.
    base_url: str | None = None
    websocket_base_url: str | None = None
    model: str = "gpt-realtime"
    azure_endpoint: str | None = None  # https://<resource>.openai.azure.com
    azure_api_key: SecretStr | None = None
    azure_deployment: str | None = None
    # https://<resource>.services.ai.azure.com (or .cognitiveservices.azure.com,
    # <region>.api.cognitive.microsoft.com, <resource>.openai.azure.com: sip/voicelive.py).
    voicelive_endpoint: str | None = None
    # Unset: Microsoft Entra ID through DefaultAzureCredential (managed identity, workload
    # identity, AZURE_CLIENT_ID/SECRET, az login ...).
    voicelive_api_key: SecretStr | None = None
    voicelive_model: str = "gpt-realtime"
    voicelive_api_version: str = "2025-10-01"
    connect_timeout: float = Field(10.0, gt=0)
    # A session lost during a call (dropped, stalled, closed at the provider's session limit) is
    # replaced: this many connection attempts in a row, the first at once, then after
    # reconnect_backoff seconds doubling up to 2 s, before the call ends as model_error.
    reconnect_attempts: int = Field(3, ge=1, le=20)
    reconnect_backoff: float = Field(0.25, ge=0, le=10)
    # Seconds without any model event, while the caller waits for an answer or a response is
    # under way, after which the session counts as stalled (and is replaced like a dropped one).
    stall_timeout: float = Field(8.0, gt=0, le=120)
    # Seconds of outage after which a tenant's reconnect_prompt plays.
    reconnect_prompt_after: float = Field(1.0, ge=0, le=30)
    # Built-in simulator (started in-process when the provider resolves to it). Its dialect:
    # "openai" (the GA protocol, through the openai SDK) or "voicelive" (its Voice Live endpoint,
    # through azure-ai-voicelive, as a Voice Live deployment would be reached).
    simulator_dialect: Literal["openai", "voicelive"] = "openai"
    simulator_host: str = "127.0.0.1"
    simulator_port: int = Field(0, ge=0, le=65535)


class ListenerSettings(_Section):
    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = Field(..., ge=0, le=65535)
    # Source networks that may connect; any other peer is refused before any work, counted and
    # logged (rate-limited). Default: loopback and the private ranges, where a PBX sits.
    allow_from: Annotated[list[IPvAnyNetwork], NoDecode] = Field(default_factory=private_networks)
    # With APP_ENV=production, a listener open beyond the private ranges without authentication
    # refuses to start unless this says it is meant.
    allow_public: bool = False

    @field_validator("allow_from", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        value = parse_networks(value)
        return [network(item) for item in value] if isinstance(value, list) else value


class AudioSocketSettings(ListenerSettings):
    port: int = Field(9092, ge=0, le=65535)
    # Host:port Asterisk should dial back for AudioSocket (what FastAGI tells it); defaults to the
    # address the AGI request arrived on.
    advertise: str | None = None


class AgiSettings(ListenerSettings):
    port: int = Field(4573, ge=0, le=65535)
    # Seconds a call registered over FastAGI may wait for its AudioSocket connection.
    claim_timeout: float = Field(10.0, gt=0)


class ExternalMediaTransport(enum.StrEnum):
    """How audio of an ARI-driven call travels between Asterisk and the daemon."""

    RTP = "rtp"  # chan_rtp UnicastRTP over UDP, ulaw or alaw
    AUDIOSOCKET = "audiosocket"  # chan_audiosocket over TCP to the AudioSocket listener
    WEBSOCKET = "websocket"  # chan_websocket (Asterisk >= 20.16 / 22.6): the daemon connects to /media/<id>


class AriSettings(_Section):
    """ARI: the daemon runs a Stasis application and drives calls over REST and the events WebSocket."""

    enabled: bool = False
    url: str = "http://127.0.0.1:8088"  # Asterisk's HTTP server (http.conf); ARI lives under /ari
    username: str = "callbridge"  # an ari.conf user
    password: SecretStr | None = None
    # The Stasis application name; give every instance its own when scaling out, so that each
    # dialplan route (Stasis(<app>)) reaches one instance.
    app: str = Field("callbridge", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    transport: ExternalMediaTransport = ExternalMediaTransport.RTP
    format: Literal["ulaw", "alaw", "slin16"] = "ulaw"
    # UDP ports for RTP external media, one per call, taken from this range.
    rtp_host: str = "0.0.0.0"
    rtp_port_min: int = Field(40000, ge=1024, le=65535)
    rtp_port_max: int = Field(40999, ge=1024, le=65535)
    # The address Asterisk sends RTP to (external_host); default: the address this host uses to
    # reach Asterisk.
    advertise_host: str | None = None
    # Base of the chan_websocket media endpoint (ws://host:8088); default: derived from url.
    media_url: str | None = None
    # Where a call this instance does not take (unknown number, full, draining, set-up failed)
    # continues in the dialplan, with CALLBRIDGE_STATUS set. Unset: right after the Stasis()
    # line, like any application returning; a context alone keeps the dialled extension.
    fallback_context: str | None = None
    fallback_extension: str | None = None
    fallback_priority: int | None = Field(None, ge=1)
    # Seconds for one REST request, and for the external-media channel to enter Stasis.
    request_timeout: float = Field(5.0, gt=0)
    setup_timeout: float = Field(5.0, gt=0)
    # Backoff of the events WebSocket reconnect after Asterisk restarts: min doubled up to max.
    reconnect_min: float = Field(0.5, gt=0)
    reconnect_max: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> AriSettings:
        if self.rtp_port_min > self.rtp_port_max:
            raise ValueError("rtp_port_min must not exceed rtp_port_max")
        if self.transport is ExternalMediaTransport.RTP and self.format == "slin16":
            # Without SDP, Asterisk maps an incoming payload type through the static table only up
            # to AST_RTP_PT_LAST_STATIC = 34 (main/rtp_engine.c ast_rtp_codecs_get_payload);
            # slin16 is 118, so everything the daemon sent back would be dropped.
            raise ValueError("format slin16 cannot be sent back to Asterisk over RTP: use ulaw or alaw, "
                             "or transport audiosocket/websocket for 16 kHz")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return self


class AmiSettings(_Section):
    """AMI (manager.conf): call events and transfers (Redirect) for calls not driven by ARI."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(5038, ge=1, le=65535)
    username: str = "callbridge"
    secret: SecretStr | None = None
    # Whole seconds between reconnect attempts after the connection drops (Asterisk restarts).
    reconnect_interval: int = Field(2, ge=1)
    # Transfers of FastAGI calls: Redirect the caller's channel over AMI instead of continuing
    # the AGI session (for dialplans that do not return to the AGI() line).
    redirect_transfers: bool = False


class HttpSettings(ListenerSettings):
    port: int = Field(8000, ge=0, le=65535)
    # A client must send a whole request head within ``idle_timeout`` seconds of connecting and of
    # its previous response (an idle keep-alive connection is closed then too), and a request body
    # within ``body_timeout``. ``max_connections`` bounds the open connections (WebSocket media
    # included): past it, new connections get a 503 at once, logged and counted.
    idle_timeout: float = Field(15.0, gt=0)
    body_timeout: float = Field(30.0, gt=0)
    max_connections: int = Field(2000, ge=1)


class RecordingStorage(enum.StrEnum):
    LOCAL = "local"  # the recordings directory is the store
    S3 = "s3"  # the directory spools; recordings are uploaded after the call


class CallIndexBackend(enum.StrEnum):
    AUTO = "auto"  # postgres when the tenants backend is postgres, else sqlite
    SQLITE = "sqlite"
    POSTGRES = "postgres"


class S3Settings(_Section):
    bucket: str = Field(..., min_length=3)
    prefix: str = "recordings/"
    endpoint_url: str | None = None  # S3-compatible stores (MinIO, Ceph, R2 ...)
    region: str | None = None
    # Unset: boto3's own credential chain (environment, profile, instance role).
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    # Lifetime of the presigned URLs handed to ops clients.
    presign_seconds: int = Field(300, ge=1, le=7 * 24 * 3600)
    keep_local: bool = False  # keep the local copy after a successful upload
    connect_timeout: float = Field(5.0, gt=0)
    read_timeout: float = Field(60.0, gt=0)
    # Back-off between upload attempts while the store is down: doubles up to the maximum.
    retry_initial_seconds: float = Field(2.0, gt=0)
    retry_max_seconds: float = Field(300.0, gt=0)


class RecordingSettings(_Section):
    enabled: bool = True
    directory: Path = Path("var/recordings")
    # Days a call (recording, transcript, index row) is kept when its tenant sets none; 0 keeps
    # calls until deleted by hand.
    retention_days: int = Field(90, ge=0)
    # Days a refused call's index row is kept (nothing was said, so it is only a trace); capped at
    # the tenant's own retention. 0 keeps them as long as calls.
    refusal_retention_days: int = Field(7, ge=0)
    storage: RecordingStorage = RecordingStorage.LOCAL
    s3: S3Settings | None = None
    index: CallIndexBackend = CallIndexBackend.AUTO
    sqlite_path: Path | None = None  # None: calls.sqlite3 in the recordings directory
    database_url: SecretStr | None = None  # None: the tenants database URL
    # How often the writer thread moves queued audio to disk, and how much audio may go by
    # between WAV header updates: together they bound what a SIGKILL can cost.
    flush_interval: float = Field(0.2, gt=0, le=1.0)
    header_interval: float = Field(0.5, gt=0, le=1.0)
    # Seconds of audio per call waiting for the writer before the oldest is dropped.
    max_backlog_seconds: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _s3_configured(self) -> RecordingSettings:
        if self.storage is RecordingStorage.S3 and self.s3 is None:
            raise ValueError("storage s3 needs recording.s3 (bucket, endpoint ...)")
        return self


class EvaluationSettings(_Section):
    """The text model that scores finished calls of tenants with ``evaluation.enabled``."""

    enabled: bool = True  # off: no call is evaluated, whatever the tenants say
    # auto: the simulator when the realtime model is simulated, Azure OpenAI when an Azure OpenAI
    # endpoint is configured (here or under model), else OpenAI.
    provider: Literal["auto", "openai", "azure_openai", "simulator"] = "auto"
    model: str = "gpt-4.1-mini"  # tenants may name another; on Azure, the deployment name
    api_key: SecretStr | None = None  # unset: model.api_key
    base_url: str | None = None  # unset: model.base_url, else the SDK's default
    azure_endpoint: str | None = None  # unset: model.azure_endpoint
    azure_api_key: SecretStr | None = None  # unset: model.azure_api_key
    azure_api_version: str = "2024-10-21"
    max_concurrent: int = Field(4, ge=1, le=100)  # evaluations in flight at once
    max_attempts: int = Field(4, ge=1, le=20)
    retry_initial_seconds: float = Field(2.0, gt=0)
    retry_max_seconds: float = Field(60.0, gt=0)
    timeout: float = Field(60.0, gt=0)  # per attempt
    webhook_wait: float = Field(20.0, ge=0)  # how long call.completed waits for the evaluation


class OpsSettings(_Section):
    """The ops API (/api/calls ...) and web page (/ops/)."""

    enabled: bool = True
    admin_token: SecretStr | None = None  # sees every tenant
    tenant_tokens: dict[str, SecretStr] = Field(default_factory=dict)  # tenant slug -> token
    # Base URL the daemon is reached at by ops staff and webhook receivers (recording links).
    public_url: str | None = None
    link_seconds: int = Field(300, ge=1, le=24 * 3600)  # lifetime of signed recording links
    # Keys of signed recording links, shared by every instance: the first signs, all verify. To
    # rotate, put the new key first and keep the old one for link_seconds. None: a key per process
    # (links break on restart and across instances behind a balancer).
    link_secrets: list[SecretStr] = Field(default_factory=list)
    max_page_size: int = Field(500, ge=1)


class IceServer(_Section):
    """A STUN or TURN server offered to WebRTC peers (RTCIceServer)."""

    urls: list[str]
    username: str | None = None
    credential: SecretStr | None = None


class WebRtcSettings(_Section):
    """Browser calls (/phone/ and POST /api/webrtc/offer), on the HTTP port; media over ICE/DTLS-SRTP."""

    enabled: bool = True
    # STUN/TURN servers for deployments behind NAT; none: host candidates only.
    ice_servers: list[IceServer] = Field(default_factory=list)
    # The addresses offered as host candidates; empty: every non-loopback interface address.
    host_addresses: list[str] = Field(default_factory=list)
    # Remote candidates outside these networks are ignored; empty: any address.
    peer_networks: NetworkList = Field(default_factory=list)
    # How long ICE and DTLS may take before the call is given up.
    connect_timeout: float = Field(10.0, gt=0, le=60)

    @field_validator("host_addresses")
    @classmethod
    def _addresses(cls, values: list[str]) -> list[str]:
        import ipaddress

        for value in values:
            ipaddress.ip_address(value)
        return values


class SipRegistration(_Section):
    """Register with a carrier so that its DIDs ring this trunk (RFC 3261 section 10)."""

    registrar: str  # sip:sip.carrier.example
    username: str
    password: SecretStr
    domain: str | None = None  # for the address of record; default: the registrar's host
    realm: str = "*"
    expires: int = Field(300, ge=60, le=86400)
    retry_interval: int = Field(30, ge=5, le=3600)  # seconds before re-registering after a failure


class SipTlsSettings(_Section):
    """SIP over TLS (``tls`` in ``sip.transports``): this trunk's certificate and whom it trusts.

    Files are PEM. TLS 1.2 is the minimum version (PJSIP's own default also accepts 1.0 and 1.1).
    """

    port: int = Field(5061, ge=0, le=65535)
    cert_file: Path | None = None  # this trunk's certificate (its chain may follow in the file)
    key_file: Path | None = None  # its private key, unencrypted
    # CA certificates that sign the peers' client certificates (verify_client).
    ca_file: Path | None = None
    # Ask every TLS peer for a certificate signed by ca_file; a peer without one cannot connect.
    verify_client: bool = False


class SipUser(_Section):
    username: str = Field(min_length=1)
    password: SecretStr


class SipAuth(_Section):
    """Digest authentication of INVITEs (RFC 3261 22.4): with users configured, an INVITE from a
    source outside ``trusted_sources`` is challenged (401) and must answer with a user's
    credentials; wrong credentials get 403 and never reach the model."""

    realm: str = "callbridge"
    users: list[SipUser] = Field(default_factory=list)
    # Offered in this order (RFC 8760); SHA-256 first only if every peer supports it.
    algorithms: list[Literal["MD5", "SHA-256"]] = Field(default_factory=lambda: ["MD5"], min_length=1)  # type: ignore[arg-type]
    # Networks whose INVITEs are accepted without a challenge (a PBX on the LAN); [] challenges all.
    trusted_sources: NetworkList = Field(default_factory=list)


class SipSettings(_Section):
    """The SIP trunk (PJSIP through pjsua2): a PBX or carrier sends calls to callbridge directly."""

    enabled: bool = False
    host: str = "0.0.0.0"
    port: int = Field(5060, ge=0, le=65535)
    transports: list[Literal["udp", "tcp", "tls"]] = Field(default_factory=lambda: ["udp", "tcp"])  # type: ignore[arg-type]
    tls: SipTlsSettings = Field(default_factory=SipTlsSettings)
    # The address put in Contact, Via and SDP when the host sits behind NAT.
    public_address: str | None = None
    rtp_port: int = Field(10000, ge=1024, le=65535)
    rtp_port_range: int = Field(1000, ge=0, le=20000)
    # Codecs in order of preference; G722 first keeps a wideband caller wideband end to end.
    codecs: list[Literal["G722", "PCMU", "PCMA"]] = Field(
        default_factory=lambda: ["G722", "PCMU", "PCMA"])  # type: ignore[arg-type]
    # Headers consulted for the dialled number before the Request-URI (then To).
    called_headers: list[Literal["p_called_party_id", "diversion"]] = Field(default_factory=list)
    # Source networks allowed to send INVITEs; everything else gets 403. [] allows any source,
    # which is only accepted with digest users configured (sip.auth).
    allowed_sources: NetworkList = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                 "fc00::/7"])
    srtp: Literal["disabled", "optional", "mandatory"] = "disabled"
    # SRTP keys (SDES) travel in the SDP, readable by anyone on the path of a UDP or TCP call.
    # True: with srtp optional or mandatory, calls must come over TLS (PJSIP answers 406 to an
    # INVITE over UDP or TCP), so only tls may be listed in transports. False: SRTP over UDP and
    # TCP too, the keys in the clear (a private network or VPN only).
    srtp_requires_tls: bool = True
    session_timers: Literal["inactive", "optional", "required"] = "optional"
    retry_after: int = Field(5, ge=0, le=3600)  # seconds, on 503 (busy, draining)
    # Ring this long (180 Ringing) before answering; 0 answers at once.
    answer_delay: float = Field(0.0, ge=0.0, le=30.0)
    registrations: list[SipRegistration] = Field(default_factory=list)
    auth: SipAuth = Field(default_factory=SipAuth)

    @model_validator(mode="after")
    def _someone_checks_callers(self) -> SipSettings:
        if not self.allowed_sources and not self.auth.users:
            raise ValueError("sip.allowed_sources is empty and sip.auth has no users: anyone could call; "
                             "list the PBX/carrier networks or configure digest users")
        return self

    @model_validator(mode="after")
    def _tls_usable(self) -> SipSettings:
        problems = self.tls_problems() if self.enabled else []
        plain = [t for t in self.transports if t != "tls"]
        if self.enabled and self.srtp != "disabled" and self.srtp_requires_tls and plain:
            problems.append(
                f"sip.srtp {self.srtp} sends SRTP keys in the SDP, so calls must come over TLS, and every "
                f"call over {' and '.join(plain)} would be refused (406): list only tls in sip.transports, "
                "or set sip.srtp_requires_tls false to send the keys over udp/tcp as well")
        if problems:
            # A custom error type: the message is shown as written, without "Value error, ".
            raise PydanticCustomError("sip_tls", "; ".join(problems))
        return self

    def tls_problems(self) -> list[str]:
        """What keeps the TLS transport from starting: settings missing, files unreadable."""
        if "tls" not in self.transports:
            return []
        tls = self.tls
        env = "CALLBRIDGE_SIP__TLS__"
        missing = [name for name in ("cert_file", "key_file") if getattr(tls, name) is None]
        if tls.verify_client and tls.ca_file is None:
            missing.append("ca_file")
        if missing:
            names = " and ".join(f"sip.tls.{name} ({env}{name.upper()})" for name in missing)
            why = "with sip.tls.verify_client " if missing == ["ca_file"] else ""
            return [f"sip.transports lists tls {why}but {names} {'is' if len(missing) == 1 else 'are'} not set"]
        problems = []
        for name, marker in (("cert_file", "CERTIFICATE-----"), ("key_file", "PRIVATE KEY-----"),
                             ("ca_file", "CERTIFICATE-----")):
            path = getattr(tls, name)
            if path is None:
                continue
            try:
                text = Path(path).read_text(encoding="ascii", errors="replace")
            except OSError as exc:
                problems.append(f"sip.tls.{name} {path} cannot be read ({exc.strerror or exc})")
                continue
            if marker not in text:
                kind = "private key" if name == "key_file" else "certificate"
                problems.append(f"sip.tls.{name} {path} holds no PEM {kind} (-----BEGIN ...{marker})")
        if not problems and tls.cert_file is not None and tls.key_file is not None:
            # PJSIP loads the pair only when a peer connects: check now that they belong together.
            import ssl

            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(tls.cert_file, tls.key_file, password=b"")
            except ssl.SSLError as exc:
                problems.append(f"sip.tls.key_file {tls.key_file} is not the unencrypted private key of "
                                f"sip.tls.cert_file {tls.cert_file} ({exc.reason or exc})")
        return problems


class WebhookSettings(_Section):
    """Delivery of the post-call webhook (the URL and secret are per tenant)."""

    timeout: float = Field(10.0, gt=0)
    max_attempts: int = Field(8, ge=1)
    retry_initial_seconds: float = Field(1.0, gt=0)
    retry_max_seconds: float = Field(300.0, gt=0)
    queue_size: int = Field(1000, ge=1)


class CallLimits(_Section):
    max_calls: int = Field(200, ge=1)
    drain_timeout: float = Field(60.0, ge=0)
    max_call_duration: float = Field(3600.0, gt=0)
    # Deadline of each set-up stage before a call is bridged: a media stream's first message
    # (Twilio "start", FreeSWITCH metadata), AudioSocket's UUID, the FastAGI environment.
    setup_timeout: float = Field(10.0, gt=0)
    # A caller leg (WebSocket, AudioSocket) sending no audio is ended (outcome "idle"): seconds
    # after set-up for its first audio, then seconds without audio during the call. 0: never.
    first_audio_timeout: float = Field(5.0, ge=0)
    audio_idle_timeout: float = Field(30.0, ge=0)
    # Call set-ups per second from one source address on one listener (token bucket), and the
    # burst above that rate; past it set-ups are refused at once, so one source cannot starve others.
    setup_rate: float = Field(20.0, gt=0)
    setup_burst: int = Field(50, ge=1)


class MediaTokenPolicy(enum.StrEnum):
    """When ``/ws/audio`` and FreeSWITCH streams must present the tenant's media token."""

    AUTO = "auto"  # tenants with a token; every tenant in production when HTTP is open to the world
    REQUIRED = "required"  # every tenant (one without a token takes no such call)
    OPTIONAL = "optional"  # tenants with a token only


class SecuritySettings(_Section):
    """Authentication of the WebSocket media endpoints (the listeners' allow-lists are theirs)."""

    media_tokens: MediaTokenPolicy = MediaTokenPolicy.AUTO
    # Origins (scheme://host[:port]) browsers may open the WebSocket endpoints from. A request
    # with any other Origin is refused; one without Origin (not a browser) is not.
    allowed_origins: list[str] = Field(default_factory=list)
    # Twilio account auth tokens: X-Twilio-Signature of /ws/twilio is checked with each (the
    # current one first; keep the previous one while rotating). Empty: no signature check.
    twilio_auth_tokens: list[SecretStr] = Field(default_factory=list)
    # The stream URL's scheme and host as given to Twilio (wss://bridge.example.com) when a proxy
    # in front changes them; default: wss:// and the Host header.
    twilio_public_url: str | None = None
    # At most one log line per listener and reason this often about refused peers (all counted).
    refusal_log_interval: float = Field(10.0, gt=0)

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        return [origin.strip().rstrip("/").lower() for origin in value if origin.strip()]


class MetricsSettings(_Section):
    # A ``tenant`` label on the per-tenant call families. Off by default: the series count must
    # not follow the size of a tenant table; when on, slugs past ``max_tenant_labels`` are "other".
    tenant_labels: bool = False
    max_tenant_labels: int = Field(50, ge=1, le=1000)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CALLBRIDGE_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
        validate_default=True,
    )

    app_env: AppEnv = AppEnv.DEVELOPMENT
    # The event loop ``callbridge serve`` runs on. "auto": uvloop when installed (the ``fast``
    # extra), else asyncio's own. uvloop takes about a fifth less CPU per call (bench/README.md).
    event_loop: EventLoop = EventLoop.AUTO
    log_level: str = "INFO"
    log_json: bool = False
    # Per-module levels, e.g. {"bridge.core.realtime": "DEBUG"}.
    log_levels: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    model: ModelSettings = Field(default_factory=ModelSettings)
    audiosocket: AudioSocketSettings = Field(default_factory=AudioSocketSettings)
    agi: AgiSettings = Field(default_factory=AgiSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    ari: AriSettings = Field(default_factory=AriSettings)
    ami: AmiSettings = Field(default_factory=AmiSettings)
    tenants: TenantSettings = Field(default_factory=TenantSettings)
    recording: RecordingSettings = Field(default_factory=RecordingSettings)
    ops: OpsSettings = Field(default_factory=OpsSettings)
    webrtc: WebRtcSettings = Field(default_factory=WebRtcSettings)
    sip: SipSettings = Field(default_factory=SipSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    limits: CallLimits = Field(default_factory=CallLimits)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)

    @model_validator(mode="after")
    def _not_open_in_production(self) -> Settings:
        from bridge.security.exposure import production_problems

        problems = production_problems(self)
        if problems:
            # A custom error type: the message is shown as written, without "Value error, ".
            raise PydanticCustomError("open_listener", "; ".join(problems))
        return self

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in {"CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"}:
            raise ValueError(f"unknown log level {value!r}")
        return upper

    @field_validator("log_levels", mode="before")
    @classmethod
    def _module_levels(cls, value: Any) -> Any:
        # Also accepted as "bridge.core.realtime=DEBUG,tenants=WARNING" (one environment variable).
        if isinstance(value, str) and value.lstrip().startswith("{"):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise ValueError(f"log_levels is not valid JSON: {exc}") from None
        elif isinstance(value, str):
            pairs = [item.partition("=") for item in value.replace(";", ",").split(",") if item.strip()]
            value = {name.strip(): level.strip() for name, _, level in pairs}
        if isinstance(value, dict):
            for name, level in value.items():
                if str(level).upper() not in {"CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"}:
                    raise ValueError(f"unknown log level {level!r} for module {name!r}")
            return {str(name): str(level).upper() for name, level in value.items()}
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        environ: dict[str, str] = dict(os.environ if _legacy_env.get() is None else _legacy_env.get() or {})
        dotenv_vars = getattr(dotenv_settings, "env_vars", {}) or {}
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            env_settings,
            _LegacyEnvSource(settings_cls, environ),
            _FieldsOnly(settings_cls, dotenv_settings),
            _LegacyEnvSource(settings_cls, {k.upper(): v for k, v in dotenv_vars.items() if v is not None}),
        ]
        yaml_data = _yaml_data.get()
        if yaml_data is not None:
            sources.append(_MappingSource(settings_cls, yaml_data))
        return tuple(sources)

    @model_validator(mode="after")
    def _app_env_defaults(self) -> Settings:
        # APP_ENV as the Voice Live deployments use it: production logs WARNING and above as JSON
        # lines, staging INFO as JSON lines, development INFO as text; LOG_LEVEL / log_json win.
        if self.app_env is not AppEnv.DEVELOPMENT and "log_json" not in self.model_fields_set:
            self.log_json = True
        if self.app_env is AppEnv.PRODUCTION and "log_level" not in self.model_fields_set:
            self.log_level = "WARNING"
        return self

    def secret_values(self) -> list[str]:
        """Every secret configured (each ``SecretStr`` anywhere in the settings), for the log redactor."""
        found: list[str] = []

        def walk(value: Any) -> None:
            if isinstance(value, SecretStr):
                found.append(value.get_secret_value())
            elif isinstance(value, BaseModel):
                for name in type(value).model_fields:
                    walk(getattr(value, name))
            elif isinstance(value, dict):
                for item in value.values():
                    walk(item)
            elif isinstance(value, list | tuple):
                for item in value:
                    walk(item)

        walk(self)
        return found

    @property
    def resolved_provider(self) -> ModelProvider:
        if self.model.provider is not ModelProvider.AUTO:
            return self.model.provider
        if self.model.voicelive_endpoint:
            # With no key: Microsoft Entra ID (DefaultAzureCredential).
            return ModelProvider.AZURE_VOICELIVE
        if self.model.azure_endpoint and self.model.azure_api_key:
            return ModelProvider.AZURE_OPENAI
        if self.model.api_key is not None:
            return ModelProvider.OPENAI
        return ModelProvider.SIMULATOR


# Names used by existing deployments of this kind of bridge, mapped into the nested settings.
LEGACY_ENV: dict[str, tuple[str, ...]] = {
    "OPENAI_API_KEY": ("model", "api_key"),
    "OPENAI_BASE_URL": ("model", "base_url"),
    "OPENAI_REALTIME_MODEL": ("model", "model"),
    "AZURE_OPENAI_ENDPOINT": ("model", "azure_endpoint"),
    "AZURE_OPENAI_API_KEY": ("model", "azure_api_key"),
    "AZURE_OPENAI_DEPLOYMENT": ("model", "azure_deployment"),
    "AZURE_VOICELIVE_ENDPOINT": ("model", "voicelive_endpoint"),
    "AZURE_VOICELIVE_API_KEY": ("model", "voicelive_api_key"),
    "AZURE_VOICELIVE_MODEL": ("model", "voicelive_model"),
    "AZURE_VOICELIVE_API_VERSION": ("model", "voicelive_api_version"),
    "SUPABASE_URL": ("tenants", "supabase_url"),
    "SUPABASE_SERVICE_ROLE_KEY": ("tenants", "supabase_key"),
    "DATABASE_URL": ("tenants", "database_url"),
    "APP_ENV": ("app_env",),
    # Call recordings of the roleplay deployments: an S3 bucket and its credentials.
    "RECORDING_ENABLED": ("recording", "enabled"),
    "AWS_BUCKET_NAME": ("recording", "s3", "bucket"),
    "AWS_REGION": ("recording", "s3", "region"),
    "RECORDING_PATH_PREFIX": ("recording", "s3", "prefix"),
    "AWS_ACCESS_KEY_ID": ("recording", "s3", "access_key_id"),
    "AWS_SECRET_ACCESS_KEY": ("recording", "s3", "secret_access_key"),
    "PORT": ("http", "port"),
    "LOG_LEVEL": ("log_level",),
}

_yaml_data: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("yaml_data", default=None)
_legacy_env: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "legacy_env", default=None
)


class _LegacyEnvSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str] | None) -> None:
        super().__init__(settings_cls)
        self._environ = os.environ if environ is None else environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for name, path in LEGACY_ENV.items():
            value = self._environ.get(name)
            if value is None or value == "":
                continue
            node = result
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = value
        s3 = result.get("recording", {}).get("s3")
        if s3 is not None:
            if "bucket" in s3:
                # A bucket named the legacy way is where recordings go.
                result["recording"].setdefault("storage", "s3")
            else:
                del result["recording"]["s3"]  # credentials alone do not configure a store
        return result


class _FieldsOnly(PydanticBaseSettingsSource):
    """The .env source, keeping only ``CALLBRIDGE_*`` settings: other names in a shared .env file
    (the legacy ones included, handled separately) are not errors."""

    def __init__(self, settings_cls: type[BaseSettings], inner: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self._inner = inner

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        fields = self.settings_cls.model_fields
        return {k: v for k, v in self._inner().items() if k in fields}


class _MappingSource(PydanticBaseSettingsSource):
    """The config file's settings, read and checked once by ``load_settings``."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return copy.deepcopy(self._data)


def load_settings(
    config_file: Path | str | None = None,
    *,
    env_file: Path | str | None = ".env",
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build the settings; raises ConfigError with one message naming each bad setting.

    Unknown names are errors, at every level: a key of the config file, a ``CALLBRIDGE_*``
    variable of the environment or of the ``.env`` file. Each comes with the closest valid name.
    Other variables (``OPENAI_API_KEY``, ``PORT`` ...) are read by name and never checked.
    """
    if config_file is None:
        env = os.environ if environ is None else environ
        named = env.get("CALLBRIDGE_CONFIG")
        config_file = Path(named) if named else None
    path = Path(config_file) if config_file is not None else None
    problems: list[str] = []
    data: dict[str, Any] | None = None
    if path is not None:
        data = read_config_file(path)
        unknown = unknown_keys(data)
        if unknown:
            problems.append(f"config file {path}: " + "; ".join(unknown))
    # The environment source reads the process environment whatever ``environ`` holds.
    problems += unknown_variables(os.environ, "environment variable")
    if environ is not None and environ is not os.environ:
        problems += unknown_variables(environ, "environment variable")
    if env_file is not None and Path(env_file).is_file():
        from dotenv import dotenv_values

        dotenv = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
        problems += unknown_variables(dotenv, f"{env_file}:")
    if problems:
        raise ConfigError("; ".join(dict.fromkeys(problems)))
    yaml_token = _yaml_data.set(data)
    env_token = _legacy_env.set(environ)
    try:
        return Settings(_env_file=env_file, **overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "settings"
            if error["type"] == "extra_forbidden":
                parts = [part for part in where.split(".") if not part.isdigit()]  # list indexes
                problems.append(f"unknown setting {where}{_suggestion(parts, '.')}")
            else:
                problems.append(f"{where}: {error['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
    except SettingsError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None
    finally:
        _yaml_data.reset(yaml_token)
        _legacy_env.reset(env_token)


def read_config_file(path: Path) -> dict[str, Any]:
    """The YAML config file as a mapping; ConfigError saying what is wrong and where."""
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist: check --config / CALLBRIDGE_CONFIG")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror or exc}): "
                          "check its path and permissions") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = exc.problem or exc.context or "syntax error"
        raise ConfigError(f"config file {path} is not valid YAML{where}: {what}; "
                          "check the indentation and the 'key: value' pairs there") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:  # an empty file, or comments only
        return {}
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a single value ({type(data).__name__})"
        raise ConfigError(f"config file {path} holds {kind}; it must be a mapping of sections, "
                          "e.g. 'http:' then '  port: 8000' on the next line")
    return data


# Variables with the CALLBRIDGE_ prefix that are not settings: read by the command line and the
# test suite, and left alone by the check for unknown names.
NOT_SETTINGS = frozenset({"CALLBRIDGE_CONFIG", "CALLBRIDGE_OPS_URL", "CALLBRIDGE_OPS_TOKEN",
                          "CALLBRIDGE_TEST_PG_USER"})
_PREFIX = "CALLBRIDGE_"
_DELIMITER = "__"


def _section(annotation: Any) -> type[BaseModel] | None:
    """The model class of a section field (``S3Settings | None`` included), else None (a list of
    models, such as ``webrtc.ice_servers``, is one value: pydantic names an unknown key in it)."""
    if typing.get_origin(annotation) in (list, tuple):
        return None
    candidates = typing.get_args(annotation) or (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _free_form(annotation: Any) -> bool:
    """A mapping field (``log_levels``, ``ops.tenant_tokens``): any key below it is valid."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _free_form(typing.get_args(annotation)[0])
    return origin is dict


def _setting_paths(model: type[BaseModel] = Settings, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every valid name: each section and each setting, as paths of field names."""
    paths: list[tuple[str, ...]] = []
    for name, info in model.model_fields.items():
        path = (*prefix, name)
        paths.append(path)
        section = _section(info.annotation)
        if section is None and typing.get_origin(info.annotation) in (list, tuple):
            section = _section(typing.get_args(info.annotation)[0])  # the keys of each entry
        if section is not None:
            paths += _setting_paths(section, path)
    return paths


def _suggestion(path: list[str], joiner: str) -> str:
    """ " (did you mean X?)" with the closest valid name in ``joiner`` spelling."""
    names = [joiner.join(p) for p in _setting_paths()]
    wanted = joiner.join(path)
    # Same section first (a misspelt last name), then any name (a misspelt section).
    siblings = [joiner.join(p) for p in _setting_paths() if list(p[:-1]) == path[:-1]]
    close = difflib.get_close_matches(wanted, siblings, n=1, cutoff=0.7) or difflib.get_close_matches(
        wanted, names, n=1, cutoff=0.75)
    if not close:
        return " (remove or rename it)"
    shown = close[0].upper() if joiner == _DELIMITER else close[0]
    return f" (did you mean {_PREFIX + shown if joiner == _DELIMITER else shown}?)"


def unknown_keys(data: Mapping[str, Any], model: type[BaseModel] = Settings,
                 prefix: tuple[str, ...] = ()) -> list[str]:
    """Each key of a config mapping that names no setting, with the closest valid name."""
    problems: list[str] = []
    fields = model.model_fields
    for key, value in data.items():
        path = (*prefix, str(key))
        info = fields.get(str(key))
        if info is None:
            problems.append(f"unknown setting {'.'.join(path)}{_suggestion(list(path), '.')}")
            continue
        section = _section(info.annotation)
        if section is not None and isinstance(value, Mapping):
            problems += unknown_keys(value, section, path)
    return problems


def unknown_variables(environ: Mapping[str, str], source: str) -> list[str]:
    """Each ``CALLBRIDGE_*`` name that names no setting, with the closest valid name."""
    problems: list[str] = []
    for name in environ:
        upper = name.upper()
        if not upper.startswith(_PREFIX) or upper in NOT_SETTINGS:
            continue
        path = upper[len(_PREFIX):].lower().split(_DELIMITER)
        model: type[BaseModel] | None = Settings
        for depth, part in enumerate(path):
            info = model.model_fields.get(part) if model is not None else None
            if info is None:
                problems.append(f"{source} {name} names no setting{_suggestion(path, _DELIMITER)}")
                break
            if _free_form(info.annotation):
                break  # CALLBRIDGE_OPS__TENANT_TOKENS__ACME: a key of the mapping
            model = _section(info.annotation)
            if model is None and depth < len(path) - 1:
                problems.append(f"{source} {name}: {'.'.join(path[:depth + 1])} is a single value, "
                                "not a section")
                break
    return problems


LogFormat = Literal["text", "json"]
