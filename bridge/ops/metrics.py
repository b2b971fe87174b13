"""Prometheus metrics: one registry built by the app and passed down.

Naming follows the Prometheus guide: prefix ``callbridge_``, base units, counters end in
``_total``. Labels come only from small fixed sets (transport, outcome, direction, reason,
provider, kind); never a call id or a phone number.
"""

from __future__ import annotations

import itertools
import math
import platform
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from bridge import __version__

# prometheus_client's label text for a bucket bound (Go's float format); the library leaves it untyped.
_bound_text: Callable[[float], str] = floatToGoString

# Label value for tenants beyond the configured bound (or every tenant when tenant labels are off).
OTHER_TENANT = "other"

# Buckets sized for telephony: tens of milliseconds matter, seconds are a failure.
_LATENCY_BUCKETS = (
    0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0,
)
_FAST_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64)
_DURATION_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)

# How a call reached the daemon. AudioSocket media is labelled by what set the call up:
# audiosocket_fastagi (FastAGI) or audiosocket_ari (ARI External Media); plain audiosocket is an
# AudioSocket connection refused before any call was known (an unregistered UUID).
TRANSPORTS = ("audiosocket_fastagi", "audiosocket_ari", "audiosocket", "rtp", "chan_websocket", "twilio",
              "freeswitch", "ws_audio", "webrtc")
OUTCOMES = (
    "normal", "caller_hangup", "agent_hangup", "transferred", "model_error", "model_rejected_config",
    "refused", "protocol_error", "shutdown", "timeout", "idle", "error",
)


class FrameHistogram(Collector):
    """A histogram without labels for values observed once per audio frame, on one thread.

    ``prometheus_client.Histogram.observe`` takes a lock for the sum and another for the bucket,
    which costs about five times as much as counting here. This keeps plain integers, so every
    ``observe`` must come from the same thread (the event loop's); the registry collects it on that
    thread too (the metrics endpoint is served by the loop), so a scrape sees a consistent state.
    Bucket bounds are inclusive (``le``) as in Prometheus.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        bounds = [float(b) for b in buckets]
        if bounds and bounds[-1] == math.inf:
            bounds.pop()
        if not bounds or any(a >= b for a, b in itertools.pairwise(bounds)):
            raise ValueError("buckets must be finite, strictly increasing and not empty")
        self.name = name
        self.documentation = documentation
        self._bounds = tuple(bounds)
        self._counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self._sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def collect(self) -> Iterable[Metric]:
        cumulative: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self._bounds, math.inf), self._counts, strict=True):
            running += count
            cumulative.append((_bound_text(bound), running))
        family = HistogramMetricFamily(self.name, self.documentation, labels=())
        family.add_metric((), cumulative, self._sum)
        return [family]

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=())]


class Metrics:
    """Every metric family callbridge exports, registered on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.build_info = Info("callbridge_build", "Version of the running callbridge", registry=r)
        self.build_info.info({"version": __version__, "python": platform.python_version()})
        self.ready = Gauge("callbridge_ready", "1 while accepting new calls, 0 while draining", registry=r)
        self.sip_registered = Gauge(
            "callbridge_sip_registered",
            "1 while the SIP trunk is registered with the carrier (sip.registrations, by position)",
            ["registration"], registry=r,
        )
        self.sip_challenges = Counter(
            "callbridge_sip_auth_challenges_total",
            "INVITEs answered 401 with a digest challenge (sip.auth); failures count as refusals",
            registry=r,
        )
        self.calls_active = Gauge(
            "callbridge_calls_active", "Calls currently bridged", ["transport"], registry=r
        )
        self.calls = Counter(
            "callbridge_calls_total", "Calls ended, by outcome", ["transport", "outcome"], registry=r
        )
        self.calls_offered = Counter(
            "callbridge_calls_offered_total",
            "Calls that reached the daemon's media or signalling side, refused ones included",
            ["transport"], registry=r,
        )
        self.calls_answered = Counter(
            "callbridge_calls_answered_total",
            "Calls bridged to a connected model session", ["transport"], registry=r,
        )
        self.tenant_calls = Counter(
            "callbridge_tenant_calls_total",
            "Calls ended, by tenant slug (only when metrics.tenant_labels bounds the tenant count)",
            ["tenant", "outcome"], registry=r,
        )
        self.tenant_calls_active = Gauge(
            "callbridge_tenant_calls_active",
            "Calls currently bridged, by tenant slug (only when metrics.tenant_labels is on)",
            ["tenant"], registry=r,
        )
        self.calls_capacity = Gauge(
            "callbridge_calls_capacity", "Concurrent calls this instance admits (limits.max_calls)",
            registry=r,
        )
        self.calls_refused = Counter(
            "callbridge_calls_refused_total",
            "Calls refused before reaching the model",
            ["transport", "reason"],
            registry=r,
        )
        self.connections_refused = Counter(
            "callbridge_connections_refused_total",
            "Connections and call set-ups refused by source: outside the listener's allow-list "
            "(network), over the per-source set-up rate (rate), bad or missing credentials (auth), "
            "a browser Origin not allowed (origin); over the listener's connection limit (limit), "
            "or no file descriptor left to accept them (descriptors)",
            ["listener", "reason"],
            registry=r,
        )
        self.call_duration = Histogram(
            "callbridge_call_duration_seconds", "Duration of bridged calls", ["transport"],
            buckets=_DURATION_BUCKETS, registry=r,
        )
        self.tenant_lookup = Histogram(
            "callbridge_tenant_lookup_seconds", "Time to resolve a dialled number to a tenant",
            buckets=_FAST_BUCKETS, registry=r,
        )
        self.tenant_cache = Counter(
            "callbridge_tenant_cache_total", "Tenant lookups by cache result (hit, miss, stale, error)",
            ["result"], registry=r,
        )
        self.model_connect = Histogram(
            "callbridge_model_connect_seconds", "Time to open a realtime model session", ["provider"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.model_errors = Counter(
            "callbridge_model_errors_total", "Model session errors by kind", ["provider", "kind"], registry=r
        )
        self.model_reconnects = Counter(
            "callbridge_model_reconnects_total",
            "Model sessions replaced during a call, by why the old one ended (dropped, stalled, session_limit)",
            ["provider", "reason"], registry=r,
        )
        self.response_latency = Histogram(
            "callbridge_response_latency_seconds",
            "Caller end of speech (model speech_stopped) to the first agent frame sent to the phone",
            ["transport"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.barge_in_reaction = Histogram(
            "callbridge_barge_in_reaction_seconds",
            "speech_started received to agent audio stopped toward the caller",
            ["transport"], buckets=_FAST_BUCKETS, registry=r,
        )
        self.barge_ins = Counter(
            "callbridge_barge_ins_total", "Agent speech interrupted by the caller", ["transport"], registry=r
        )
        self.pacer_lateness = FrameHistogram(
            "callbridge_pacer_lateness_seconds", "How late each 20 ms frame left for the caller",
            _FAST_BUCKETS, r,
        )
        self.playout_underruns = Counter(
            "callbridge_playout_underruns_total",
            "Frames due during agent speech with no agent audio buffered", ["transport"], registry=r,
        )
        self.frames_dropped = Counter(
            "callbridge_frames_dropped_total", "Audio frames dropped, by direction and reason",
            ["direction", "reason"], registry=r,
        )
        self.rtp_lost = Counter(
            "callbridge_rtp_packets_lost_total", "RTP packets lost on receive (RFC 3550 A.3)", registry=r
        )
        self.rtp_jitter = Histogram(
            "callbridge_rtp_jitter_seconds", "RTP interarrival jitter at call end (RFC 3550 A.8)",
            buckets=_FAST_BUCKETS, registry=r,
        )
        self.agent_audio_unplayed = Counter(
            "callbridge_agent_audio_unplayed_total",
            "Calls whose far end did not play agent audio (binary_discarded, files_not_played) or "
            "cannot confirm that it does (unconfirmed)",
            ["transport", "reason"], registry=r,
        )
        self.dtmf = Counter("callbridge_dtmf_digits_total", "DTMF digits received", ["transport"], registry=r)
        self.recordings = Counter(
            "callbridge_recordings_total", "Call recordings by result (written, failed, repaired)",
            ["result"], registry=r,
        )
        self.recording_bytes = Counter(
            "callbridge_recording_bytes_total", "Bytes of recordings written", registry=r
        )
        self.uploads_pending = Gauge(
            "callbridge_uploads_pending", "Recordings waiting to be uploaded to object storage", registry=r
        )
        self.uploads = Counter(
            "callbridge_uploads_total", "Upload attempts to object storage by result (ok, failed)",
            ["result"], registry=r,
        )
        self.webhooks = Counter(
            "callbridge_webhooks_total",
            "Post-call webhook deliveries by result (delivered, failed, dropped)",
            ["result"], registry=r,
        )
        self.evaluations = Counter(
            "callbridge_evaluations_total",
            "Post-call evaluations by result (ok, failed)", ["result"], registry=r,
        )
        self.live_events_dropped = Counter(
            "callbridge_live_events_dropped_total",
            "Live call events dropped because a subscriber read too slowly", registry=r,
        )
        self.event_loop_lag = Histogram(
            "callbridge_event_loop_lag_seconds", "Delay of a periodic event-loop probe past its deadline",
            buckets=_FAST_BUCKETS, registry=r,
        )
        self.gc_pause = Histogram(
            "callbridge_gc_pause_seconds",
            "Duration of each cyclic garbage collection by generation (the event loop waits it out)",
            ["generation"], buckets=_FAST_BUCKETS, registry=r,
        )
        self.peers_closed = Counter(
            "callbridge_peers_closed_total",
            "Connections closed because the peer broke a bound (oversize message or buffer, "
            "too slow, too many events)", ["listener", "reason"], registry=r,
        )
        self.control_events_dropped = Counter(
            "callbridge_control_events_dropped_total",
            "DTMF and other control events from a caller leg ignored over the per-call rate limit",
            ["transport"], registry=r,
        )
        self.archive_write_errors = Counter(
            "callbridge_archive_write_errors_total",
            "Failed writes of a finished call's metadata file or index row (retried until they land)",
            ["kind"], registry=r,
        )
        self.refusals_not_indexed = Counter(
            "callbridge_refusals_not_indexed_total",
            "Refused calls counted but not written to the call index (too many being written at once)",
            registry=r,
        )
        self.inbound_chain_latency = Gauge(
            "callbridge_inbound_chain_latency_seconds",
            "Algorithmic latency of the caller-to-model audio chain of the last call set up",
            registry=r,
        )


class TenantLabels:
    """Bounds the ``tenant`` label: the first ``limit`` slugs seen keep their name, later ones
    become ``other``, so a growing tenant table cannot grow the series count without bound."""

    def __init__(self, enabled: bool, limit: int) -> None:
        self.enabled = enabled
        self.limit = limit
        self._named: set[str] = set()

    def label(self, slug: str) -> str | None:
        """The label value for ``slug``, or None when tenant labels are off."""
        if not self.enabled:
            return None
        if slug in self._named:
            return slug
        if len(self._named) < self.limit:
            self._named.add(slug)
            return slug
        return OTHER_TENANT
