"""Call records for every call: what the call runner observed, kept in the store, and the end-of-call webhook.

Theory of operation
-------------------
One :class:`CallObserver` per stream is handed to the call runner in its settings. The runner tells it, at
control rate, that the stream started, that the agent barged in, that the caller pressed a key, and (for
backends that give text) what was said; it also feeds it the caller's audio per frame and, through the
playback ledger's ``on_played`` hook, each piece of agent audio the moment Twilio confirms it played. Those
two feeds go to the call's recording (``_recording.py``) and nowhere else. Every observer method is
synchronous, cheap, and never raises into the runner: a recording that fails (disk full) is closed, logged and
counted, and the call goes on.

When the stream ends, :meth:`CallRecords.finish` writes the record: the base (created at the voice webhook for
an inbound call, by ``POST /calls`` for an outbound one, or here when neither happened) plus one ``call``
event with everything the observer saw, appended to the store like the status events (``_store.py``), so ``GET
/calls/{sid}`` gives the same answer on every worker and host. Then the webhook (``CALL_WEBHOOK_URL``) is
started in the app's background nursery: the record's JSON, exactly the body ``GET /calls/{sid}`` answers at
that moment, signed ``X-Bridge-Signature: sha256=<hex HMAC-SHA256(body, key=BRIDGE_API_TOKEN)>``, with bounded
retries and backoff. No call waits on it; failures are counted.

The transcript is bounded (:data:`TRANSCRIPT_MAX_ENTRIES`, :data:`TRANSCRIPT_MAX_CHARS`): a record is one
store value, not an unbounded log.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from typing import Any, Final

import httpx
import orjson
import trio
from prometheus_client import Counter

from bridge import _twilio
from bridge._outbound import AMD_PARAMETER
from bridge._recording import BYTES_PER_MINUTE, CallRecording, recording_path
from bridge._store import Store, StoreUnavailable

__all__ = [
    "CALL_SID",
    "CallObserver",
    "CallRecords",
    "sign_body",
    "verify_signature",
]

logger = logging.getLogger("bridge.records")

CALL_SID: Final = re.compile(r"CA[0-9a-fA-F]{32}")
#: At most this many transcript entries per record (a long call's turns; past it the rest is counted).
TRANSCRIPT_MAX_ENTRIES: Final = 500
#: At most this much transcript text per record: a record is one store value.
TRANSCRIPT_MAX_CHARS: Final = 64 * 1024
#: At most this many turn latencies and DTMF digits per record.
MAX_LATENCIES: Final = 500
MAX_DTMF: Final = 256
#: Webhook delivery: attempts, the first backoff (doubled each time) and the bound on one request.
WEBHOOK_ATTEMPTS: Final = 4
WEBHOOK_FIRST_BACKOFF_S: Final = 1.0
WEBHOOK_TIMEOUT_S: Final = 10.0
SIGNATURE_HEADER: Final = "X-Bridge-Signature"
#: For an outbound call, how long the webhook waits for Twilio's final status callback (it comes within a
#: second or two of the stream's end), and how often it looks.
WEBHOOK_FINAL_STATUS_WAIT_S: Final = 10.0
WEBHOOK_FINAL_STATUS_POLL_S: Final = 0.25


def sign_body(body: bytes, key: str) -> str:
    """The ``X-Bridge-Signature`` value for ``body``: ``sha256=`` + hex HMAC-SHA256 keyed by ``key``."""
    return "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str, key: str) -> bool:
    """What a webhook receiver does: recompute the HMAC over the raw body and compare in constant time."""
    return hmac.compare_digest(sign_body(body, key), header)


def _iso_ms(at: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class CallObserver:
    """What one call's runner reports (see the module docstring). Never raises into the runner."""

    def __init__(self, *, recordings_dir: str | None = None, default_agent: str = "speakr") -> None:
        self.recordings_dir = recordings_dir
        self.agent = default_agent
        self.call_sid: str | None = None
        self.stream_sid: str | None = None
        self.started_at: float | None = None
        self.t_started: float | None = None
        self.ended_at: float | None = None
        self.barge_ins: dict[str, int] = {}
        self.dtmf: list[dict[str, Any]] = []
        self.transcript: list[dict[str, Any]] = []
        self.transcript_chars = 0
        self.transcript_dropped = 0
        self.latencies_ms: list[int] = []
        self.outcome: str | None = None
        self.recording: CallRecording | None = None
        self.recording_error: str | None = None
        self.result: Any = None
        #: Set to end this call from outside (``POST /calls/{sid}/hangup`` on the worker that serves it).
        self.stop = trio.Event()
        #: The agent gets its ``start`` only once this is set: at once, unless the call waits for its
        #: answering-machine result (``_amd.py``).
        self.agent_gate = trio.Event()
        self.agent_gate.set()
        self.held_for_amd = False
        self.gate_opened_at: float | None = None  # trio time the gate opened, for a held call

    def _ms(self) -> int:
        return 0 if self.started_at is None else int((time.time() - self.started_at) * 1000)

    # --- control rate -----------------------------------------------------------------------------

    def started(self, start: _twilio.Start) -> None:
        """The stream's ``start`` was accepted."""
        self.call_sid, self.stream_sid = start.call_sid, start.stream_sid
        self.started_at = time.time()
        self.t_started = trio.current_time()
        self.hold_if_asked(start)
        agent = start.custom_parameters.get("agent")
        if isinstance(agent, str) and agent.isidentifier() and len(agent) <= 32:
            self.agent = agent
        if self.recordings_dir and CALL_SID.fullmatch(start.call_sid):
            try:
                self.recording = CallRecording(recording_path(self.recordings_dir, start.call_sid))
            except OSError as exc:
                self.recording_error = f"{type(exc).__name__}: {exc.strerror or exc}"
                logger.error("[%s] recording not started: %s", start.call_sid, self.recording_error)

    def hold_if_asked(self, start: _twilio.Start) -> None:
        """Hold the agent when the call waits for its answering-machine result (once; before any result)."""
        if not self.held_for_amd and start.custom_parameters.get(AMD_PARAMETER) == "1":
            self.held_for_amd = True
            self.agent_gate = trio.Event()

    def open_gate(self) -> None:
        """Let the agent start (a person answered, or no result came)."""
        if not self.agent_gate.is_set():
            self.gate_opened_at = trio.current_time()
            self.agent_gate.set()

    def barge_in(self, kind: str) -> None:
        self.barge_ins[kind] = self.barge_ins.get(kind, 0) + 1

    def dtmf_digit(self, digit: str) -> None:
        if len(self.dtmf) < MAX_DTMF:
            self.dtmf.append({"digit": digit[:1], "at_ms": self._ms()})

    def transcript_text(self, role: str, text: str) -> None:
        """A finished utterance of ``role`` (``caller`` or ``agent``), as the agent backend gives it."""
        if (
            len(self.transcript) >= TRANSCRIPT_MAX_ENTRIES
            or self.transcript_chars + len(text) > TRANSCRIPT_MAX_CHARS
        ):
            self.transcript_dropped += 1
            return
        self.transcript_chars += len(text)
        self.transcript.append({"role": role, "text": text, "at_ms": self._ms()})

    def turn_latency(self, ms: float) -> None:
        """The agent's answer started this long after the caller stopped speaking (when the backend knows)."""
        if len(self.latencies_ms) < MAX_LATENCIES:
            self.latencies_ms.append(round(ms))

    def set_outcome(self, outcome: str) -> None:
        self.outcome = outcome[:200]

    # --- per frame: the recording only ---------------------------------------------------------------

    def caller_audio(self, ulaw: bytes) -> None:
        recording = self.recording
        if recording is not None:
            try:
                recording.writer.add_caller(ulaw)
            except OSError as exc:
                self._recording_failed(exc)

    def heard(self, ulaw: bytes) -> None:
        """The ledger's ``on_played``: this piece has just played to the caller."""
        recording = self.recording
        if recording is not None:
            try:
                recording.writer.add_heard(ulaw)
            except OSError as exc:
                self._recording_failed(exc)

    def _recording_failed(self, exc: OSError) -> None:
        self.recording_error = f"{type(exc).__name__}: {exc.strerror or exc}"
        logger.error("[%s] recording stopped: %s", self.call_sid, self.recording_error)
        self.close_recording()
        self.recording = None

    def close_recording(self) -> None:
        if self.recording is not None:
            try:
                self.recording.close()
            except OSError as exc:
                self.recording_error = f"{type(exc).__name__}: {exc.strerror or exc}"
                logger.error("[%s] recording not finalised: %s", self.call_sid, self.recording_error)

    def ended(self, result: Any) -> None:
        """The runner is done (any path): finalise the recording."""
        self.ended_at = time.time()
        self.result = result
        self.close_recording()

    # --- the record ------------------------------------------------------------------------------------

    def event(self, recording_link: str | None) -> dict[str, Any]:
        """The ``call`` event stored with the record."""
        result = self.result
        stats = getattr(result, "ledger_stats", None)
        seconds = None
        if self.started_at is not None and self.ended_at is not None:
            seconds = round(self.ended_at - self.started_at, 3)
        return {
            "kind": "call",
            "at": time.time(),
            "agent": self.agent,
            "stream_sid": self.stream_sid,
            "started_at": None if self.started_at is None else _iso_ms(self.started_at),
            "ended_at": None if self.ended_at is None else _iso_ms(self.ended_at),
            "duration_s": seconds,
            "end_reason": getattr(result, "reason", "unknown"),
            "barge_ins": dict(self.barge_ins),
            "played_ms": stats.played_ms if stats is not None else 0,
            "cleared_ms": stats.cleared_ms if stats is not None else 0,
            "agent_ready_ms": (
                None
                if getattr(result, "start_to_ready_s", None) is None
                else round(result.start_to_ready_s * 1000)
            ),
            "latency_ms": list(self.latencies_ms),
            "transcript": list(self.transcript),
            "transcript_dropped": self.transcript_dropped,
            "dtmf": list(self.dtmf),
            "outcome": self.outcome,
            "agent_held_ms": (
                None
                if self.gate_opened_at is None or self.t_started is None
                else round((self.gate_opened_at - self.t_started) * 1000)
            ),
            "recording": recording_link,
            "recording_error": self.recording_error,
        }


class CallRecords:
    """The app's side of records: writing them at the end of a call, and the webhook.

    Args:
        store: where records live (replaced by the app when the server's store opens).
        webhook_url: ``CALL_WEBHOOK_URL`` or None.
        webhook_key: ``BRIDGE_API_TOKEN`` (the HMAC key); the webhook is not sent without one.
        registry: the app's Prometheus registry.
    """

    def __init__(
        self,
        store: Store,
        *,
        webhook_url: str | None,
        webhook_key: str,
        registry: Any,
        recordings_dir: str | None,
        default_agent: str = "speakr",
    ) -> None:
        self.store = store
        #: The backend a record names when the call's ``agent`` parameter does not (``AGENT``).
        self.default_agent = default_agent
        self.webhook_url = webhook_url
        self._webhook_key = webhook_key
        self.recordings_dir = recordings_dir
        self.background: trio.Nursery | None = None
        #: The observers of the calls this process is serving, by CallSid (for hang-up).
        self.live: dict[str, CallObserver] = {}
        self.webhooks = Counter(
            "bridge_call_webhooks",
            "End-of-call webhook deliveries, by outcome",
            ["outcome"],
            registry=registry,
        )
        self.webhook_attempts = Counter(
            "bridge_call_webhook_attempts",
            "End-of-call webhook POSTs, by result",
            ["result"],
            registry=registry,
        )
        self.records = Counter(
            "bridge_call_records",
            "Call records written at the end of a stream, by outcome",
            ["outcome"],
            registry=registry,
        )
        self.recording_bytes = Counter(
            "bridge_recording_bytes", "Bytes of call recordings written", registry=registry
        )
        # What a view function gives: the record as GET /calls/{sid} answers it (set by the app).
        self.view: Any = None
        #: Started for a call held for its answering-machine result (set by the app: _amd.watch_store).
        self.on_held: Any = None

    def __repr__(self) -> str:
        hook = "set" if self.webhook_url else "unset"
        return f"CallRecords(webhook={hook}, recordings={self.recordings_dir!r})"

    def observer(self) -> CallObserver:
        return CallObserver(recordings_dir=self.recordings_dir, default_agent=self.default_agent)

    async def begin(self, start: _twilio.Start, observer: CallObserver) -> None:
        """At the stream's admission: the call is live here, and its record exists from now on (an inbound
        call that came without the voice webhook gets its base now). Best effort: a store outage is logged."""
        call_sid = start.call_sid
        self.live[call_sid] = observer
        observer.hold_if_asked(start)
        if observer.held_for_amd and self.on_held is not None and self.background is not None:
            self.background.start_soon(self.on_held, call_sid, observer)
        now = time.time()
        base = {
            "sid": call_sid,
            "to": None,
            "from": None,
            "created_at": now,
            "source": "inbound",
            "direction": "inbound",
        }
        try:
            if CALL_SID.fullmatch(call_sid) and await self.store.record_create(call_sid, base):
                await self.store.record_event(call_sid, {"status": "in-progress", "at": now})
        except StoreUnavailable as exc:
            logger.warning("[%s] call record not started: %s", call_sid, exc)

    async def finish(self, observer: CallObserver) -> None:
        """Store the call's record (bounded, shielded), then start the webhook in the background."""
        sid = observer.call_sid
        if sid is None or not CALL_SID.fullmatch(sid):
            return
        self.live.pop(sid, None)
        link = None
        if observer.recording is not None:
            link = f"/calls/{sid}/recording.wav"
            self.recording_bytes.inc(observer.recording.bytes_written)
        event = observer.event(link)
        now = time.time()
        base = {
            "sid": sid,
            "to": None,
            "from": None,
            "created_at": observer.started_at or now,
            "source": "inbound",
            "direction": "inbound",
        }
        try:
            with trio.CancelScope(shield=True), trio.fail_after(5.0):
                await self.store.record_create(sid, base)
                found = await self.store.record_get(sid)
                await self.store.record_event(sid, event)
                if found is not None and found[0].get("direction", "outbound") == "inbound":
                    # No status callbacks for a call we answered: its stream's end is its end.
                    await self.store.record_event(sid, {"status": "completed", "at": now})
        except (StoreUnavailable, trio.TooSlowError) as exc:
            self.records.labels("store_unavailable").inc()
            logger.error("[%s] call record not stored: %s", sid, exc)
            return
        self.records.labels("stored").inc()
        if self.webhook_url and self._webhook_key and self.background is not None:
            self.background.start_soon(self.send_webhook, sid)

    async def send_webhook(self, sid: str) -> None:
        """POST the record to ``CALL_WEBHOOK_URL``: bounded retries with backoff; counted, never raised."""
        assert self.webhook_url is not None and self.view is not None
        try:
            record = await self.view(sid)
            # A call we placed ends for Twilio a moment after its stream: wait (bounded) for Twilio's final
            # status callback, so that the body is the finished record.
            deadline = trio.current_time() + WEBHOOK_FINAL_STATUS_WAIT_S
            while (
                record is not None
                and record.get("end_status") is None
                and record.get("direction") == "outbound"
                and trio.current_time() < deadline
            ):
                await trio.sleep(WEBHOOK_FINAL_STATUS_POLL_S)
                record = await self.view(sid)
        except StoreUnavailable as exc:
            self.webhooks.labels("store_unavailable").inc()
            logger.error("[%s] webhook not sent: %s", sid, exc)
            return
        if record is None:
            self.webhooks.labels("no_record").inc()
            return
        body = orjson.dumps(record)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign_body(body, self._webhook_key),
            "User-Agent": "speakr-bridge",
        }
        backoff = WEBHOOK_FIRST_BACKOFF_S
        async with httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_S) as client:
            for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
                try:
                    response = await client.post(self.webhook_url, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    self.webhook_attempts.labels("error").inc()
                    why = type(exc).__name__
                else:
                    if 200 <= response.status_code < 300:
                        self.webhook_attempts.labels("ok").inc()
                        self.webhooks.labels("delivered").inc()
                        logger.info("[%s] call webhook delivered (attempt %d)", sid, attempt)
                        return
                    self.webhook_attempts.labels(str(response.status_code // 100) + "xx").inc()
                    why = f"HTTP {response.status_code}"
                    if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                        break  # the receiver refuses this body: retrying will not help
                logger.warning("[%s] call webhook attempt %d failed: %s", sid, attempt, why)
                if attempt < WEBHOOK_ATTEMPTS:
                    await trio.sleep(backoff)
                    backoff *= 2
        self.webhooks.labels("failed").inc()
        logger.error("[%s] call webhook failed", sid)


def disk_per_minute_text() -> str:
    return f"{BYTES_PER_MINUTE / 1e6:.2f} MB per minute of call"
