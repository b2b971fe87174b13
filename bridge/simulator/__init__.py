"""A local server of the OpenAI Realtime API (GA protocol) with a deterministic model behind it.

callbridge starts it when no model API key is configured, so a PBX administrator can test a line
end to end without a cloud account; the test suite and the load benchmarks use it as the model.
The official ``openai`` SDK connects to it unchanged::

    client = AsyncOpenAI(api_key="anything", websocket_base_url=server.url)   # ws://host:port/v1
    async with client.realtime.connect(model="gpt-realtime") as conn: ...

Wire surface
------------
* ``GET /v1/realtime?model=...`` (the SDK appends ``/realtime`` to ``websocket_base_url``) and
  ``GET /openai/v1/realtime?model=...`` (the Azure OpenAI v1 surface). A key must be presented as
  ``Authorization: Bearer <key>`` or ``api-key: <key>``; any value is accepted unless the server
  was given ``api_key``. A missing or wrong key is refused with HTTP 401 before the upgrade.
* A request carrying ``OpenAI-Beta: realtime=v1`` is upgraded, sent an ``error`` and closed with
  code 4000 "beta_api_shape_disabled", as the hosted service does since the beta shape was shut down.
* Client events: ``session.update``, ``input_audio_buffer.append`` / ``.commit`` / ``.clear``,
  ``conversation.item.create`` / ``.retrieve`` / ``.truncate`` / ``.delete``, ``response.create``,
  ``response.cancel``. Anything else (and bad JSON, bad fields, beta-era flat session fields) gets
  an ``error`` event shaped like the service's (``type``, ``code``, ``message``, ``param``,
  ``event_id`` of the offending client event); the connection stays up.
* Server events use the GA names and field sets of ``openai.types.realtime``.
* Sessions end after ``max_session_seconds`` (default 60 minutes) with close code 1001, like the
  service.

Theory of operation
-------------------
Input audio is decoded per the session's ``audio.input.format`` (PCM16 24 kHz, G.711 mu-law or
A-law 8 kHz) and cut into 20 ms frames. With ``turn_detection`` set, an energy detector stands in
for the service's VAD: a frame is speech when its RMS level exceeds a level derived from
``threshold`` (0.5 maps to -45 dBFS, each 0.1 to 5 dB; once speaking, 6 dB less keeps the turn open).
Three speech frames in a row open a turn; ``silence_duration_ms`` of non-speech closes it.
``semantic_vad`` is approximated with a silence wait chosen by its ``eagerness``. Positions count
from the first byte of audio appended in the session, as the service's do:
``audio_start_ms`` = onset - ``prefix_padding_ms``, ``audio_end_ms`` = the position at which the
silence wait ran out (so it includes the silence).

    turn detector     frame is speech        frame is silence
    idle              run += 1; at 3 ->      run = 0
                      speaking, emit
                      speech_started
    speaking          silence = 0            silence += 20 ms; at silence_duration_ms ->
                                             idle, emit speech_stopped, commit the turn

A committed turn becomes a user ``message`` item (``input_audio``), announced with
``input_audio_buffer.committed``, ``conversation.item.added`` and ``conversation.item.done``, then
``conversation.item.input_audio_transcription.completed`` when transcription is configured (the
simulator cannot recognise words: the transcript reads ``[caller speech 2.3 s]``). With
``create_response`` (the default) a response follows. A turn that starts while a response is
streaming cancels it when ``interrupt_response`` is true (the default): ``response.done`` with
status ``cancelled`` and reason ``turn_detected``.

One response streams at a time (a second ``response.create`` gets
``conversation_already_has_active_response``). Its events come in the service's order:
``response.created``, ``rate_limits.updated``, ``response.output_item.added``,
``conversation.item.added``, ``response.content_part.added``, then ``response.output_audio.delta``
interleaved with ``response.output_audio_transcript.delta``, then ``response.output_audio.done``,
``response.output_audio_transcript.done``, ``response.content_part.done``,
``response.output_item.done``, ``conversation.item.done`` and ``response.done`` (also after a
cancellation, with the item ``incomplete``). Audio deltas carry ``delta_ms`` each in the session's
output format: the first ``LEAD_MS`` (200 ms) at once, then one per ``delta_ms / pace`` seconds of
``clock`` (which must advance in real time), so ``pace=1.0`` is real time. With
``output_modalities: ["text"]`` the same words come as ``response.output_text.delta`` / ``.done``.

What a response says is deterministic; the latest user-side conversation item decides:

* a ``function_call_output`` item: a short spoken confirmation, transcript ``[tool result received]``;
* a text item with the tool hook below: a function call;
* no caller turn in the conversation yet: the greeting, a recorded voice saying
  "Hello, this is the callbridge test line. Say something and I will repeat it." (or its
  Portuguese version, see below);
* a caller turn: the caller's own audio played back (at most 10 s), transcript
  ``[echo of caller speech 2.3 s]``;
* a text item after the caller has spoken: the short clip, transcript ``[reply to text message]``.

The recorded clips follow the session's language where it can, which means: where a recording
exists for it. There are two, English and Portuguese (``GREETINGS``). The session's input
transcription ``language`` decides first (``pt``, ``pt-BR`` -> Portuguese; a language with no
recording, such as ``es``, falls through); then the instructions, the response's own before the
session's: a text that names Portuguese (``português``, ``Portuguese``, ``pt-BR``) or holds three
of a few common Portuguese words (``você``, ``não``, ``uma`` ...) gets Portuguese; anything else
English. The transcript of a greeting is the words of the recording actually played; the
simulator never synthesises the tenant's own greeting text.

With ``server_vad`` ``idle_timeout_ms`` set, silence that long after the last response finished
playing emits ``input_audio_buffer.timeout_triggered`` and a short prompt, transcript
``[are you still there?]``.

Test hook for function calling: when the last user item is a text message containing
``call_tool:<name> <arguments>`` and the session (or the ``response.create``) declares a function
tool ``<name>``, the response is a ``function_call`` item instead of audio
(``response.output_item.added``, ``response.function_call_arguments.delta`` / ``.done``,
``response.output_item.done``, ``response.done``). ``<arguments>`` is passed on verbatim (``{}`` when
empty), so malformed JSON can be sent on purpose. An undeclared tool (or ``tool_choice: "none"``)
gets the short clip with transcript ``[tool <name> is not available]``; each hook fires once. A
bridge that forwards DTMF digits as text lets a phone keypad trigger tools this way.
``conversation.item.create`` alone never starts a response.

``SimulatorServer.sessions`` keeps a ``SimulatedSession`` record per accepted connection with what the
client sent (session updates, truncations, cancellations, response requests, speech timestamps on
the server's clock), so tests can assert what a bridge did. Audio is never kept beyond the last
caller turn (at most 10 s).

Timing log (``events_log``, ``--events-log FILE``): one JSON line per timing event, stamped with the
server's clock (``time.monotonic()`` by default, which is system-wide on Linux, so another process
on the host can line its own readings up with them). Off by default; when off the audio path pays
one ``is None`` test per append. Lines (``s`` is the session id, ``t`` the clock reading)::

    {"e": "open", "s", "t"}
    {"e": "speech_started", "s", "t", "agent": true|false}     t: just before the event is sent;
                                                                agent: a response was streaming audio
    {"e": "speech_end", "s", "t", "stopped": t2}               t: arrival of the append that completed
                                                                the turn's last speech frame
    {"e": "first_audio", "s", "r", "t", "kind"}                t: just before the first delta is sent
    {"e": "done", "s", "r", "t", "status", "audio_ms", "voiced_ms": [first, last]}
                                                                voiced_ms: span of non-zero samples
                                                                within the audio sent
    {"e": "close", "s", "t"}
"""

from __future__ import annotations

from bridge.simulator.audio import GREETING_TRANSCRIPT, GREETINGS, SimulatorError, greeting_samples, session_language
from bridge.simulator.connection import MAX_APPEND_BYTES, MAX_SESSION_SECONDS
from bridge.simulator.conversation import SimulatedSession
from bridge.simulator.responses import LEAD_MS
from bridge.simulator.server import SimulatorServer, TimingLog
from sip.realtime_session import InvalidRequest, apply_session_update

__all__ = [
    "GREETINGS", "GREETING_TRANSCRIPT", "LEAD_MS", "MAX_APPEND_BYTES", "MAX_SESSION_SECONDS", "InvalidRequest",
    "SimulatedSession", "SimulatorError", "SimulatorServer", "TimingLog", "apply_session_update",
    "greeting_samples", "session_language",
]
