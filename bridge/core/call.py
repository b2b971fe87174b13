"""One phone call bridged to one realtime-model session.

Theory of operation
-------------------
A transport (AudioSocket, RTP, a WebSocket media stream) owns the socket to the PBX. It builds a
``Call`` with a ``CallerLeg`` (how to send audio back, flush remote playback, hang up) and feeds it
what it reads: ``receive_audio``, ``receive_dtmf``, ``caller_hung_up``, ``protocol_error``. ``run``
connects the model and runs three tasks in one TaskGroup, so none outlives the call:

* model sender: caller audio, already decoded, suppressed and resampled on arrival, is appended
  to the model's input buffer there and then when the model connection can take it without
  waiting (the common case: no task switch per frame); otherwise it waits in a bounded queue
  (oldest dropped and counted) for this task, behind any control event; when frames have piled up
  (the model link was slow) they go out together in one append;
* model receiver: server events; agent audio is resampled to the caller's rate into the playout
  buffer; ``speech_started`` triggers barge-in; tool calls are carried out;
* pacer: exactly one frame per 20 ms against ``t0 + n * 20 ms`` on the monotonic clock, agent
  audio when buffered, else silence on legs that need keep-alive (Asterisk's AudioSocket() app
  hangs up after 2 s without frames). A leg without keep-alive (the WebSocket media streams) gets
  frames only while the agent speaks: between talkspurts the pacer sleeps until agent audio
  arrives, sends its first frame at once and paces the talkspurt from there (no wait for the next
  slot of an idle 20 ms grid, and no wake-ups while nobody speaks).

Barge-in: on ``input_audio_buffer.speech_started`` the playout buffer is cleared at once, remote
playback is flushed (where the transport buffers), and ``conversation.item.truncate`` reports the
milliseconds of the agent item actually sent to the caller, less the outbound resampler's delay
and what the far end reports unplayed, clamped to what the model produced.
Later deltas of the truncated item are discarded. A tenant whose turn detection says
``interrupt_response: false`` gets none of this: the model still hears the caller, and the agent
keeps talking.

The session configuration: an ``error`` event before ``session.updated`` means the model refused
the tenant's ``session.update``; the call ends with ``model_rejected_config`` instead of going on
with an unconfigured agent.

Model continuity (``bridge.core.continuity``): the model leg runs one session at a time. A session
that fails (the connection drops, the provider closes it at its session limit, or it sends
nothing for ``stall_timeout`` while the caller waits for an answer) is replaced: a new session is
opened, configured like the first and given the conversation so far; the pacer keeps playing
what was already received, so the caller hears at most a short gap (or the tenant's reconnect
prompt when the outage lasts). After ``reconnect_attempts`` failed attempts in a row the tenant's
unavailable announcement plays and the call ends as ``model_error``. A transport that could open
the session before answering the caller hands it in (``session=``) and reports a model that
cannot be reached to its PBX instead.

Call states::

    connecting --model up--> bridged --end(outcome)--> ending --cleanup--> ended
    bridged --session lost--> reconnecting --new session, conversation replayed--> bridged
    reconnecting --attempts exhausted--> announcing --played--> ending (model_error)
    connecting --model unreachable--> announcing --played--> ending (model_error)

``end(outcome)`` is idempotent; the first outcome wins.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from bridge.core.continuity import TURN_CHARS, ConversationHistory, ModelPolicy, PromptError, load_prompt
from bridge.core.info import CallInfo, CallLogAdapter, CallStatistics, Outcome, mask_number
from bridge.core.leg import CallerLeg, CallTap
from bridge.core.ratelimit import DTMF_BURST, DTMF_PER_SECOND, TokenBucket
from bridge.core.realtime import ModelEndpoint, ModelError, ModelSession, open_session
from bridge.core.tools import call_tools
from bridge.ops.metrics import Metrics
from bridge.settings import ModelProvider
from media import g711
from media.chain import InboundChain, OutboundChain
from media.codec import MODEL_RATE_HZ, AudioFormat, Encoding
from media.pacing import FRAME_PERIOD, Pacer
from media.playout import PlayoutBuffer
from sip import realtime as rt
from tenants.config import AudioMode, TenantConfig, TransferTarget

log = logging.getLogger(__name__)

Clock = Callable[[], float]

# Caller audio waiting for the model: 2 s of 20 ms frames. Beyond that the model link is stalled
# and the oldest audio is the least useful.
INBOUND_QUEUE_FRAMES = 100
CLEANUP_TIMEOUT = 3.0
_INT16 = np.dtype(np.int16)



__all__ = [
    "Call", "CallInfo", "CallLogAdapter", "CallStatistics", "CallTap", "CallerLeg", "Outcome", "call_tools",
    "mask_number",
]

DTMF_DIGITS = frozenset("0123456789*#ABCD")  # RFC 4733 section 3.2 events 0-15
MAX_REASON_CHARS = 200


def tenant_endpoint(endpoint: ModelEndpoint, tenant: TenantConfig) -> ModelEndpoint:
    """The endpoint a call of ``tenant`` connects to: its model, and for the simulator its cues."""
    out = endpoint.with_model(tenant.model)
    if tenant.simulator is not None and out.provider is ModelProvider.SIMULATOR:
        # The simulator's cues for this tenant travel in the session URL (bridge.simulator.script).
        out = out.with_query(script=tenant.simulator.to_query())
    return out


def leg_problem(tenant: TenantConfig, fmt: AudioFormat) -> str | None:
    """Why a call of ``tenant`` cannot run on a leg of format ``fmt``, or None."""
    if tenant.audio_mode is AudioMode.PASSTHROUGH and fmt.rate_hz != 8000:
        return "passthrough audio needs an 8 kHz caller leg"
    return None


class Call:
    def __init__(
        self,
        info: CallInfo,
        leg: CallerLeg,
        endpoint: ModelEndpoint,
        metrics: Metrics,
        *,
        tap: CallTap | None = None,
        clock: Clock = time.monotonic,
        max_duration: float | None = None,
        session: ModelSession | None = None,
        policy: ModelPolicy | None = None,
    ) -> None:
        self.info = info
        self.leg = leg
        self.tenant = info.tenant
        self.endpoint = tenant_endpoint(endpoint, info.tenant)
        self.metrics = metrics
        self.tap = tap
        self.clock = clock
        self.max_duration = min(max_duration or info.tenant.max_call_duration, info.tenant.max_call_duration)
        self.log = CallLogAdapter(log, {"call_id": info.call_id, "tenant": info.tenant.slug})
        self.stats = CallStatistics()

        fmt = leg.audio_format
        self.caller_format = fmt
        self.passthrough = info.tenant.audio_mode is AudioMode.PASSTHROUGH
        problem = leg_problem(info.tenant, fmt)
        if problem is not None:
            raise ValueError(problem)
        self.inbound: InboundChain | None = None
        self.outbound: OutboundChain | None = None
        if not self.passthrough:
            self.inbound = InboundChain(
                fmt.rate_hz,
                MODEL_RATE_HZ,
                suppression=info.tenant.noise_suppression.value,
                level_db=info.tenant.noise_suppression_level_db,
            )
            self.outbound = OutboundChain(MODEL_RATE_HZ, fmt.rate_hz)
            metrics.inbound_chain_latency.set(self.inbound.latency_seconds)
        frame_samples = fmt.samples_for_ms(20)
        self.playout = PlayoutBuffer(fmt.rate_hz, frame_samples)

        self._inbound_queue: deque[bytes | bytearray] = deque()  # model-format audio, one chunk per caller frame
        self._control_queue: deque[str] = deque()
        self._keypad_interrupts: list[Callable[[], Any]] = []
        self._held = False  # the caller's side has the call on hold (SIP re-INVITE)
        # Set while the model sender waits for something to send; resolved to wake it.
        self._sender_idle: asyncio.Future[None] | None = None
        self._ended = asyncio.Event()
        self._caller_gone = False
        self._session: ModelSession | None = None
        self._truncated_items: set[str] = set()
        self._produced_samples: dict[str, int] = {}  # model-rate samples per item
        self._current_item: str | None = None
        self._speech_stopped_at: float | None = None
        self._awaiting_first_frame = False
        self._pending_action: tuple[str, TransferTarget | None] | None = None
        self._responding = False
        self._playing = False  # agent audio of the current response has started toward the caller
        self._action_deadline = 0.0
        self._announcement: str | None = None  # a transfer line waiting for the model to be free
        self._announcement_playing = False
        self._response_requested = False  # a response.create of ours not yet answered by response.created
        self._keypad_waiting = False  # a keypad digit to answer once the current response is done
        self._agent_speaking = False  # as the caller hears it (live events)
        self._interrupts = info.tenant.turn_detection.interrupt_response
        self._config_pending = False  # session.update sent, session.updated not yet seen
        self._started = clock()
        # Each digit becomes a model request: a peer must not be able to send them at any rate.
        self._dtmf_limit = TokenBucket(DTMF_BURST, DTMF_PER_SECOND, clock)
        self._dtmf_dropped = 0
        self._backlog_drops = metrics.frames_dropped.labels("inbound", "model_backlog")
        self._pacer_idle: asyncio.Future[None] | None = None
        self._leg_unplayed_ms: Callable[[], float] | None = getattr(leg, "unplayed_ms", None)
        self._leg_end_of_segment: Callable[[], Any] | None = getattr(leg, "end_of_segment", None)
        # Model continuity.
        self.policy = policy or ModelPolicy()
        self.history = ConversationHistory()
        self.reconnects = 0
        self._preopened = session
        self._lost_reason = "dropped"  # why the last session ended: dropped, stalled, session_limit
        self._answered = False
        self._waiting_since: float | None = None  # the caller waits for the agent's answer
        self._stall_timer: asyncio.Timeout | None = None
        # The agent item being spoken and its transcript so far, kept if its session is lost.
        self._partial_item: str | None = None
        self._partial_text: list[str] = []
        self._partial_chars = 0

    # ----------------------------------------------------------------- transport -> call
    def receive_audio(self, payload: bytes) -> None:
        """One chunk of caller audio in the leg's format (any length; usually 20 ms)."""
        if self._ended.is_set() or not payload:
            return
        self.stats.frames_in += 1
        fmt = self.caller_format
        chunk: bytes | bytearray
        if self.passthrough:
            if fmt.encoding is Encoding.ULAW:
                ulaw = payload
                if self.tap is not None:
                    self.tap.caller_audio(g711.ulaw_decode(payload), fmt.rate_hz)
            else:
                samples = fmt.decode(payload)
                ulaw = g711.ulaw_encode(samples)
                if self.tap is not None:
                    self.tap.caller_audio(samples, fmt.rate_hz)
            chunk = ulaw
        else:
            assert self.inbound is not None
            samples = fmt.decode(payload)
            if self.tap is not None:
                self.tap.caller_audio(samples, fmt.rate_hz)
            chunk = self.inbound.process_pcm(samples)
            if not chunk:
                return
        if self._held:  # recorded, but music on hold is not the caller speaking
            return
        queue = self._inbound_queue
        session = self._session
        if (
            session is not None
            and self._sender_idle is not None  # the sender has nothing in hand or in flight
            and not queue
            and not self._control_queue
            and session.send_audio_now(chunk)
        ):
            return
        if len(queue) >= INBOUND_QUEUE_FRAMES:
            queue.popleft()
            self.stats.inbound_dropped += 1
            self._backlog_drops.inc()
        queue.append(chunk)
        self._wake_sender()

    def receive_dtmf(self, digit: str) -> None:
        if self._ended.is_set():
            return
        if len(digit) != 1 or digit not in DTMF_DIGITS:
            self.log.warning("ignoring a DTMF event that is not a keypad digit (%d characters)", len(digit))
            return
        if not self._dtmf_limit.allow():
            self._dtmf_dropped += 1
            self.metrics.control_events_dropped.labels(self.leg.transport).inc()
            if self._dtmf_dropped == 1:
                self.log.warning("DTMF faster than %g digits a second; further digits are dropped and counted",
                                 DTMF_PER_SECOND)
            return
        self.metrics.dtmf.labels(self.leg.transport).inc()
        self.log.info("DTMF %s", digit)
        if self.tap is not None:
            self.tap.event("dtmf", digit=digit)
        tenant = self.tenant
        if tenant.dtmf_transfer_digit and digit == tenant.dtmf_transfer_digit and tenant.transfer_targets:
            target = tenant.transfer_targets[0]
            self._pending_action = ("transfer", target)
            self._announce(target)
            self._request_action_after_playout()
            return
        # The model has no DTMF input on a bridged session: tell it in words. Only one response
        # may be in progress: while the agent speaks the digit joins the conversation at once and
        # is answered when the response ends ("queue"), or the response is cut short first
        # ("interrupt", as if the caller had spoken).
        text = f"[The caller pressed the telephone key {digit}]"
        self.history.add("user", text)
        if self._session is not None or not self._answered:
            self._send_soon(rt.user_text(text))  # between sessions the replayed history carries it
        if not (self._responding or self._response_requested):
            self._request_response()
            return
        self._keypad_waiting = True
        if tenant.dtmf_during_response == "interrupt" and self._responding:
            self._interrupt_for_keypad()

    def _request_response(self) -> None:
        self._response_requested = True
        self._send_soon(rt.response_create())

    def _interrupt_for_keypad(self) -> None:
        """Cut the agent short (barge-in, then cancel the response): a keypad digit, or a hold."""

        async def interrupt() -> None:
            await self._barge_in()
            if self._session is not None and self._responding:
                await self._session.send(rt.response_cancel())

        # Runs on the model sender's order: the truncation and cancel go out before any later event.
        self._keypad_interrupts.append(interrupt)
        self._wake_sender()

    def hold(self, held: bool) -> None:
        """The caller's side put the call on hold, or took it off hold. While held, what arrives
        (music on hold, or nothing) is recorded but not sent to the model, and the agent stops:
        what it was saying is cut where the caller stopped hearing it, as in a barge-in."""
        if self._ended.is_set() or held == self._held:
            return
        self._held = held
        self.log.info("the caller %s", "put the call on hold" if held else "took the call off hold")
        if self.tap is not None:
            self.tap.event("hold", held=held)
        if held and (self._responding or self.playout.buffered_samples):
            self._interrupt_for_keypad()

    def caller_hung_up(self) -> None:
        self._caller_gone = True
        self.end(Outcome.CALLER_HANGUP)

    def protocol_error(self, reason: str) -> None:
        # Reasons are the daemon's own words, but may quote the peer: never log more than a line.
        self.log.warning("caller leg protocol error: %s", reason[:MAX_REASON_CHARS])
        self._caller_gone = True
        self.end(Outcome.PROTOCOL_ERROR)

    def end(self, outcome: Outcome) -> None:
        if self.info.outcome is None:
            self.info.outcome = outcome
        self._ended.set()

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    # ----------------------------------------------------------------- lifecycle
    async def run(self) -> Outcome:
        """Bridge the call until it ends; returns the outcome. Never raises for peer errors."""
        transport = self.leg.transport
        self.metrics.calls_active.labels(transport).inc()
        self.log.info("call from %s to %s over %s", mask_number(self.info.caller_id), self.info.dialled, transport)
        try:
            await self._run()
        except* ModelError as group:
            err = group.exceptions[0]
            assert isinstance(err, ModelError)
            self.log.warning("model failure: %s", err)
            self.metrics.model_errors.labels(self.endpoint.provider.value, err.kind).inc()
            self.end(Outcome.MODEL_ERROR)
        except* Exception as group:
            self.log.error("call failed", exc_info=group.exceptions[0])
            self.end(Outcome.ERROR)
        finally:
            await self._cleanup()
        outcome = self.info.outcome or Outcome.NORMAL
        self.metrics.calls_active.labels(transport).dec()
        self.metrics.calls.labels(transport, outcome.value).inc()
        self.metrics.call_duration.labels(transport).observe(self.clock() - self._started)
        self.log.info("call ended: %s", outcome.value)
        return outcome

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(self._model_link()),
                tg.create_task(self._pacer()),
            ]
            try:
                async with asyncio.timeout(self.max_duration):
                    await self._ended.wait()
            except TimeoutError:
                self.log.info("maximum call duration reached")
                self.end(Outcome.TIMEOUT)
            for task in tasks:
                task.cancel()

    async def _cleanup(self) -> None:
        session, self._session = self._session, None
        preopened, self._preopened = self._preopened, None
        for unused in (session, preopened):
            if unused is not None:
                await asyncio.shield(unused.close())
        if not self._caller_gone:
            self._caller_gone = True
            try:
                async with asyncio.timeout(CLEANUP_TIMEOUT):
                    await asyncio.shield(self.leg.hangup())
            except (TimeoutError, OSError, ConnectionError) as exc:
                self.log.debug("hangup toward caller failed: %s", exc)
        self.info.ended_at = time.time()
        if self.tap is not None:
            self.tap.event("ended", outcome=(self.info.outcome or Outcome.NORMAL).value)

    # ----------------------------------------------------------------- model link
    async def _model_link(self) -> None:
        """Keep one model session serving the call, replacing it when it fails (see the top)."""
        session, self._preopened = self._preopened, None
        provider = self.endpoint.provider.value
        while not self._ended.is_set():
            if session is None:
                session = await self._open_session()
                if session is None:
                    await self._give_up()
                    return
            first = not self._answered
            try:
                self._config_pending = True
                await session.send(rt.session_update(self.tenant, model=self.endpoint.model,
                                                      tools=call_tools(self.tenant), dialect=session.dialect))
                if first:
                    if self.tenant.greeting:
                        await session.send(rt.greeting_response(self.tenant.greeting))
                        self._response_requested = True
                        self._caller_waits()
                    self.info.answered_at = time.time()
                    self.metrics.calls_answered.labels(self.leg.transport).inc()
                    if self.tap is not None:
                        self.tap.event("answered")
                    self._answered = True
                else:
                    await self._resume(session)
                self._session = session
                async with asyncio.TaskGroup() as tg:
                    sender = tg.create_task(self._model_sender(session))
                    await self._model_receiver(session)
                    sender.cancel()
                return  # the model closed the session normally: the receiver ended the call
            except* ModelError as group:
                err = group.exceptions[0]
                assert isinstance(err, ModelError)
            finally:
                self._session = None
                await asyncio.shield(session.close())
            session = None
            if self._ended.is_set():
                return
            if err.kind == "session_limit":  # expected on long calls: not an error
                self.log.info("model session reached the provider's limit; rolling over to a new one")
                self._lost_reason = "session_limit"
            else:
                self.log.warning("model session lost (%s): %s; reconnecting", err.kind, err)
                self.metrics.model_errors.labels(provider, err.kind).inc()
                self._lost_reason = "stalled" if err.kind == "stalled" else "dropped"
            self._session_lost()

    async def _open_session(self) -> ModelSession | None:
        """A new session within ``reconnect_attempts`` attempts, or None. While it takes longer than
        ``prompt_after``, the tenant's reconnect prompt plays (once per outage)."""
        policy = self.policy
        provider = self.endpoint.provider.value
        started = self.clock()
        prompted = False
        attempts = max(1, policy.reconnect_attempts)
        for attempt in range(1, attempts + 1):
            t0 = self.clock()
            try:
                session = await open_session(self.endpoint)
            except ModelError as exc:
                self.log.warning("model connection attempt %d of %d failed: %s", attempt, attempts, exc)
                self.metrics.model_errors.labels(provider, exc.kind).inc()
                if attempt == attempts:
                    return None
                delay = policy.backoff(attempt)
                if (not prompted and self._answered and self.tenant.reconnect_prompt
                        and self.clock() + delay - started >= policy.prompt_after):
                    prompted = True
                    await self._play_prompt(self.tenant.reconnect_prompt)
                await asyncio.sleep(delay)
                continue
            self.metrics.model_connect.labels(provider).observe(self.clock() - t0)
            if self._answered:
                self.reconnects += 1
                self.metrics.model_reconnects.labels(provider, self._lost_reason).inc()
                self.log.info("model session re-established after %.2f s (attempt %d)",
                              self.clock() - started, attempt)
            return session
        return None

    async def _resume(self, session: ModelSession) -> None:
        """Give a replacement session the conversation so far; answer the caller if they waited."""
        for event in self.history.replay_events():
            await session.send(event)
        if self.tap is not None:
            self.tap.event("model_reconnected", turns=len(self.history))
        create = '"type":"response.create"'
        if self._waiting_since is not None and not any(create in e for e in self._control_queue):
            await session.send(rt.response_create())
            self._response_requested = True
            self._caller_waits()

    def _session_lost(self) -> None:
        """Forget the lost session's response state; audio already received keeps playing."""
        if self._partial_item is not None and self._partial_text:
            self.history.add_partial(self._partial_item, "".join(self._partial_text))
        self._partial_item = None
        self._partial_text = []
        self._partial_chars = 0
        if self._responding or self._response_requested or self._keypad_waiting:
            # The answer was cut off or never came: the new session gives it.
            if self._waiting_since is None:
                self._waiting_since = self.clock()
        self._finish_audio()
        self._responding = False
        self._response_requested = False
        self._keypad_waiting = False
        self._announcement_playing = False
        self._current_item = None
        self._stall_timer = None
        # Control events were meant for the old session's items; caller audio waits for the new one.
        self._control_queue.clear()
        if self._announcement is not None:
            self._send_announcement()  # a transfer line still to be said: the new session says it

    async def _give_up(self) -> None:
        """The model cannot be reached: the tenant's announcement, then the call ends (model_error)."""
        self.log.warning("model unavailable after %d attempts; ending the call", max(1, self.policy.reconnect_attempts))
        self.info.outcome = self.info.outcome or Outcome.MODEL_ERROR
        self._announcement = None
        self._announcement_playing = False
        path = self.tenant.unavailable_announcement
        seconds = await self._play_prompt(path) if path else 0.0
        if seconds <= 0:
            self.end(Outcome.MODEL_ERROR)
            return
        self._pending_action = ("model_error", None)
        self._action_deadline = self.clock() + seconds + 2.0
        self._kick_pacer()

    async def _play_prompt(self, path: str) -> float:
        """Queue a recorded prompt for the caller; returns its length in seconds (0 if unplayable)."""
        rate = self.caller_format.rate_hz
        try:
            samples = await asyncio.to_thread(load_prompt, path, rate)
        except PromptError as exc:
            self.log.error("%s", exc)
            return 0.0
        self.playout.write(samples, None)
        self.playout.end_of_audio()
        self._kick_pacer()
        return len(samples) / rate

    # ----------------------------------------------------------------- stall detection
    def _caller_waits(self) -> None:
        """The caller now waits for the agent's answer: a silent model counts as stalled."""
        if self._waiting_since is None:
            self._waiting_since = self.clock()
        self._arm_stall_timer()

    def _caller_answered(self) -> None:
        self._waiting_since = None
        self._arm_stall_timer()

    def _arm_stall_timer(self) -> None:
        """No model event for ``stall_timeout`` while the caller waits for an answer, or in the
        middle of a response, is a stalled session."""
        timer = self._stall_timer
        if timer is None:
            return
        if self._waiting_since is None and not self._responding:
            if timer.when() is not None:
                timer.reschedule(None)
            return
        # Moved at most a few times a second, not on every audio delta: the deadline may run up
        # to a quarter of the timeout early.
        limit = self.policy.stall_timeout
        deadline = asyncio.get_running_loop().time() + limit
        when = timer.when()
        if when is None or deadline - when > min(1.0, limit / 4):
            timer.reschedule(deadline)

    # ----------------------------------------------------------------- model leg
    def _send_soon(self, event: dict[str, Any]) -> None:
        """Queue a control event for the model ahead of pending audio."""
        # One sender task keeps the order of everything sent to the model; control events go
        # ahead of queued audio.
        self._control_queue.append(json.dumps(event, separators=(",", ":")))
        if event.get("type") == "response.create":
            self._caller_waits()
        self._wake_sender()

    def _wake_sender(self) -> None:
        # A bare future rather than an asyncio.Event: this runs for every caller frame.
        waiter = self._sender_idle
        if waiter is not None:
            self._sender_idle = None
            if not waiter.done():
                waiter.set_result(None)

    async def _model_sender(self, session: ModelSession) -> None:
        loop = asyncio.get_running_loop()
        queue = self._inbound_queue
        control = self._control_queue
        while True:
            if not control and not queue and not self._keypad_interrupts:
                waiter = self._sender_idle = loop.create_future()
                try:
                    await waiter
                finally:
                    self._sender_idle = None
            while control or queue or self._keypad_interrupts:
                if self._keypad_interrupts:
                    await self._keypad_interrupts.pop(0)()
                elif control:
                    await session.send_raw(control.popleft())
                elif len(queue) == 1:
                    await session.send_audio(queue.popleft())
                else:
                    # Frames piled up while a send waited: one append carries them all, in order.
                    chunk = b"".join(queue)
                    queue.clear()
                    await session.send_audio(chunk)

    async def _model_receiver(self, session: ModelSession) -> None:
        timer = asyncio.timeout(None)
        try:
            async with timer:
                self._stall_timer = timer
                self._arm_stall_timer()
                try:
                    await self._receive_events(session)
                finally:
                    if self._stall_timer is timer:
                        self._stall_timer = None
        except TimeoutError:
            if not timer.expired():
                raise
            raise ModelError(f"no model event for {self.policy.stall_timeout:.1f} s while the caller "
                             "waited for an answer", "stalled") from None
        # The model closed the session normally: nothing more can be said on this call.
        self.end(Outcome.NORMAL if self.info.outcome is None else self.info.outcome)

    async def _receive_events(self, session: ModelSession) -> None:
        async for event in session.events():
            kind = event["type"]
            if kind == rt.AUDIO_DELTA:
                if self._waiting_since is not None:
                    self._caller_answered()
                self._on_audio_delta(event)
            elif kind == rt.SPEECH_STARTED:
                self._caller_answered()
                if self._interrupts:
                    await self._barge_in()
            elif kind == rt.SESSION_UPDATED:
                self._config_pending = False
            elif kind == rt.SPEECH_STOPPED:
                self._speech_stopped_at = self.clock()
                self._awaiting_first_frame = True
                if self._creates_response():
                    self._caller_waits()
            elif kind == rt.AUDIO_DONE:
                self._finish_audio()
            elif kind == rt.RESPONSE_CREATED:
                self._responding = True
                self._response_requested = False
            elif kind == rt.RESPONSE_DONE:
                self._responding = False
                self._caller_answered()
                self._playing = False
                self._finish_audio()
                if self._announcement is not None:
                    self._send_announcement()
                elif self._announcement_playing:
                    self._announcement_playing = False
                elif self._keypad_waiting and self._pending_action is None:
                    self._keypad_waiting = False
                    self._request_response()
                if self.playout.buffered_samples == 0:
                    self._set_speaking(False)
            elif kind == rt.OUTPUT_ITEM_DONE:
                await self._on_output_item_done(event)
            elif kind == rt.INPUT_TRANSCRIPT_DONE:
                transcript = str(event.get("transcript", ""))
                self.history.add("user", transcript)
                if self.tap is not None:
                    self.tap.transcript("caller", transcript, time.time())
            elif kind == rt.OUTPUT_TRANSCRIPT_DONE:
                self._partial_item = None
                self._partial_text = []
                self._partial_chars = 0
                transcript = str(event.get("transcript", ""))
                item_id = event.get("item_id")
                self.history.add("assistant", transcript, item_id if isinstance(item_id, str) else None)
                if isinstance(item_id, str) and item_id in self._truncated_items:
                    self.history.mark_interrupted(item_id)
                if self.tap is not None:
                    self.tap.transcript("agent", transcript, time.time())
            elif kind == rt.OUTPUT_TRANSCRIPT_DELTA or kind == rt.INPUT_TRANSCRIPT_DELTA:
                if kind == rt.OUTPUT_TRANSCRIPT_DELTA:
                    self._on_transcript_delta(event)
                if self.tap is not None:
                    self.tap.event("transcription", role="agent" if kind == rt.OUTPUT_TRANSCRIPT_DELTA
                                   else "caller", text=str(event.get("delta", "")), final=False)
            elif kind == rt.ERROR:
                err = event.get("error") or {}
                self._response_requested = False
                if err.get("code") == "conversation_already_has_active_response":
                    # Ours crossed a response the server started itself: answer after it instead.
                    self._keypad_waiting = True
                self.log.warning("model error event: %s %s", err.get("code") or err.get("type"),
                                 err.get("message"))
                self.metrics.model_errors.labels(self.endpoint.provider.value, "event").inc()
                if self._config_pending:
                    self.log.error("the model refused the tenant's session configuration (%s): %s",
                                   err.get("param") or err.get("code"), err.get("message"))
                    self.end(Outcome.MODEL_REJECTED_CONFIG)
                    return
            self._arm_stall_timer()

    def _on_transcript_delta(self, event: dict[str, Any]) -> None:
        item_id = event.get("item_id")
        delta = event.get("delta")
        if not isinstance(item_id, str) or not isinstance(delta, str):
            return
        if item_id != self._partial_item:
            self._partial_item = item_id
            self._partial_text = []
            self._partial_chars = 0
        if self._partial_chars < TURN_CHARS:
            self._partial_text.append(delta[: TURN_CHARS - self._partial_chars])
            self._partial_chars += len(self._partial_text[-1])

    def _creates_response(self) -> bool:
        """Whether the end of a caller turn makes the model answer by itself (turn detection)."""
        return bool(getattr(self.tenant.turn_detection, "create_response", True))

    def _on_audio_delta(self, event: dict[str, Any]) -> None:
        item_id = event.get("item_id")
        if not isinstance(item_id, str) or item_id in self._truncated_items:
            return
        delta = event.get("delta")
        if not isinstance(delta, str):
            return
        try:
            # binascii itself (what b64decode calls): ASCII text in, the same errors, no wrapper.
            raw = binascii.a2b_base64(delta)
        except ValueError:
            self.metrics.frames_dropped.labels("outbound", "malformed").inc()
            return
        if self.passthrough:
            samples = g711.ulaw_decode(raw)
            produced = len(samples) * (MODEL_RATE_HZ // 8000)
        else:
            assert self.outbound is not None
            model_samples = np.frombuffer(raw, _INT16, len(raw) // 2)
            produced = len(model_samples)
            samples = self.outbound.process(model_samples)
        self._produced_samples[item_id] = self._produced_samples.get(item_id, 0) + produced
        if len(self._produced_samples) > 64:
            oldest = next(iter(self._produced_samples))
            del self._produced_samples[oldest]
        self._current_item = item_id
        if len(samples):
            dropped = self.playout.write(samples, item_id)
            self._kick_pacer()
            if dropped:
                self.metrics.frames_dropped.labels("outbound", "playout_full").inc(
                    max(1, dropped // self.playout.frame_samples))

    def _finish_audio(self) -> None:
        if self.outbound is not None and self._current_item not in self._truncated_items:
            tail = self.outbound.flush()
            if len(tail) and self._current_item is not None:
                self.playout.write(tail, self._current_item)
        self.playout.end_of_audio()
        self._kick_pacer()

    async def _barge_in(self) -> None:
        started = self.clock()
        item = self._current_item
        self._speech_stopped_at = None
        self._awaiting_first_frame = False
        if item is None or item in self._truncated_items:
            return
        produced_ms = self._produced_samples.get(item, 0) * 1000 // MODEL_RATE_HZ
        played_ms = self.playout.played_ms(item)
        if self.outbound is not None:
            # The resampler toward the caller delays the item by its filter's latency (a few ms):
            # the samples handed out end that much before the model position they came from.
            played_ms = max(0, played_ms - round(self.outbound.latency_seconds * 1000))
        if self._leg_unplayed_ms is not None:
            # What the far end still holds of the audio sent was never heard.
            played_ms = max(0, played_ms - int(self._leg_unplayed_ms()))
        if self.playout.buffered_samples == 0 and not self._responding:
            return  # the agent had already finished speaking: nothing to interrupt
        self.playout.clear()
        self._playing = False
        if self.outbound is not None:
            self.outbound.reset()
        self._truncated_items.add(item)
        self.history.mark_interrupted(item)
        self.info.barge_ins += 1
        transport = self.leg.transport
        self.metrics.barge_ins.labels(transport).inc()
        await self.leg.clear_playback()
        reaction = self.clock() - started
        self.stats.barge_in_reactions.append(reaction)
        self.metrics.barge_in_reaction.labels(transport).observe(reaction)
        audio_end_ms = min(played_ms, produced_ms)
        self.stats.truncates.append((item, audio_end_ms))
        self.log.info("barge-in: truncating agent item at %d ms of %d ms", audio_end_ms, produced_ms)
        if self.tap is not None:
            self.tap.event("barge_in", played_ms=audio_end_ms)
        self._set_speaking(False)
        if self._session is not None:
            await self._session.send(rt.truncate(item, audio_end_ms))

    async def _on_output_item_done(self, event: dict[str, Any]) -> None:
        item = event.get("item")
        if not isinstance(item, dict) or item.get("type") != "function_call":
            return
        name = item.get("name")
        call_id = str(item.get("call_id", ""))
        try:
            args = json.loads(item.get("arguments") or "{}")
        except ValueError:
            args = {}
        if not isinstance(args, dict):
            args = {}
        session = self._session
        if session is None:
            return
        if self.tap is not None and name in ("end_call", "transfer_call"):
            self.tap.event("tool_call", tool=name, arguments={k: str(v)[:200] for k, v in args.items()})
        if name == "end_call":
            self.log.info("agent ends the call: %s", str(args.get("reason", ""))[:200])
            await session.send(rt.function_output(call_id, {"ok": True}))
            self._pending_action = ("hangup", None)
            self._request_action_after_playout()
        elif name == "transfer_call":
            wanted = str(args.get("target", ""))
            target = next((t for t in self.tenant.transfer_targets if t.name == wanted), None)
            if target is None:
                await session.send(rt.function_output(call_id, {"ok": False, "error": "unknown target"}))
                await session.send(rt.response_create())
                return
            await session.send(rt.function_output(call_id, {"ok": True, "target": target.name}))
            self._pending_action = ("transfer", target)
            self._announce(target)
            self._request_action_after_playout()
        else:
            await session.send(rt.function_output(call_id, {"ok": False, "error": f"unknown tool {name}"}))

    def _announce(self, target: TransferTarget) -> None:
        """Have the agent say the target's configured line before the caller leaves.

        A response cannot be requested while one is in progress, so the request waits for the
        current response to finish; the transfer then waits for the line to play out.
        """
        if not target.announcement:
            return
        self._announcement = target.announcement
        if not self._responding:
            self._send_announcement()

    def _send_announcement(self) -> None:
        text, self._announcement = self._announcement, None
        if text is None:
            return
        self._announcement_playing = True
        self._send_soon({
            "type": "response.create",
            "response": {"instructions": "Say exactly these words to the caller, then stop: " + text},
        })

    def _request_action_after_playout(self) -> None:
        """The pacer carries out a pending hangup/transfer once queued agent audio has played."""
        self._action_deadline = self.clock() + 8.0
        self._kick_pacer()

    async def _carry_out_action(self) -> None:
        action, self._pending_action = self._pending_action, None
        if action is None:
            return
        kind, target = action
        if kind == "hangup":
            self.end(Outcome.AGENT_HANGUP)
            return
        if kind == "model_error":  # the unavailable announcement has played
            self.end(Outcome.MODEL_ERROR)
            return
        assert target is not None
        self.log.info("transferring to %s (%s)", target.name, target.kind)
        ok = await self.leg.transfer(target)
        if self.tap is not None:
            self.tap.event("transfer", target=target.name, kind=target.kind, ok=ok)
        if ok:
            self.info.transfer_target = target.name
            self._caller_gone = True  # the PBX has the caller now
            self.end(Outcome.TRANSFERRED)
        else:
            self.log.warning("transport %s cannot transfer", self.leg.transport)
            if self._session is not None:
                await self._session.send(rt.user_text("[The transfer failed; tell the caller.]"))
                await self._session.send(rt.response_create())

    def _set_speaking(self, speaking: bool) -> None:
        """Whether the caller is hearing the agent now; told to the tap when it changes."""
        if speaking == self._agent_speaking:
            return
        self._agent_speaking = speaking
        if self.tap is not None:
            self.tap.event("agent_speaking" if speaking else "agent_listening")

    # ----------------------------------------------------------------- pacing
    def _kick_pacer(self) -> None:
        """Wake an idle pacer: there may be something to send or do now."""
        waiter = self._pacer_idle
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _pacer(self) -> None:
        loop = asyncio.get_running_loop()
        clock = self.clock
        leg = self.leg
        fmt = self.caller_format
        silence = fmt.silence()
        playout = self.playout
        pacer = Pacer(start=clock())
        lateness_metric = self.metrics.pacer_lateness
        underruns = self.metrics.playout_underruns.labels(leg.transport)
        tap = self.tap
        rate = fmt.rate_hz
        zeros = np.zeros(fmt.samples_for_ms(20), dtype=np.int16)
        end_of_segment = self._leg_end_of_segment
        in_segment = False
        keepalive = leg.keepalive
        while True:
            delay = pacer.delay(clock())
            if delay > 0:
                await asyncio.sleep(delay)
            frame = playout.read_frame()
            if frame is not None:
                payload = fmt.encode(frame.samples)
                if self._awaiting_first_frame and self._speech_stopped_at is not None:
                    latency = clock() - self._speech_stopped_at
                    self.stats.response_latencies.append(latency)
                    self.metrics.response_latency.labels(leg.transport).observe(latency)
                    self._awaiting_first_frame = False
                self.stats.agent_frames += 1
                self._playing = True
                in_segment = True
                if not self._agent_speaking:
                    self._set_speaking(True)
                await leg.send_audio(payload)
                if tap is not None:
                    tap.agent_audio(frame.samples, rate)
            else:
                if in_segment:
                    in_segment = False
                    if not self._responding:
                        self._set_speaking(False)
                    if end_of_segment is not None:
                        await end_of_segment()
                starved = self._responding and self._playing
                if starved:
                    self.stats.underruns += 1
                    underruns.inc()
                if keepalive:
                    await leg.send_audio(silence)
                if tap is not None and starved:
                    # Silence inside a response is part of what the caller heard. Between
                    # responses nothing is handed over: the recording pads a quiet track itself.
                    tap.agent_audio(zeros, rate)
                if self._pending_action is not None and (
                    (not self._responding and playout.buffered_samples == 0
                     and self._announcement is None and not self._announcement_playing)
                    or clock() >= self._action_deadline
                ):
                    await self._carry_out_action()
                elif not keepalive and self._pending_action is None:
                    # A leg without keep-alive gets frames only while the agent speaks: sleep until
                    # agent audio (or an action) arrives, then send its first frame at once and
                    # pace the talkspurt from there, instead of waiting for the old 20 ms grid.
                    self.stats.frames_out += 1
                    lateness_metric.observe(pacer.frame_sent(clock()))
                    idle_since = clock()
                    waiter = self._pacer_idle = loop.create_future()
                    try:
                        await waiter
                    finally:
                        self._pacer_idle = None
                    now = clock()
                    if starved and self._responding:
                        missed = int((now - idle_since) / FRAME_PERIOD)
                        self.stats.underruns += missed
                        underruns.inc(missed)
                    pacer.restart(now)
                    continue
            self.stats.frames_out += 1
            lateness_metric.observe(pacer.frame_sent(clock()))
