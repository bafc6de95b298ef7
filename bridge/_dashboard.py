"""What the dashboard shows: call summaries published to the store, read back fleet-wide.

Theory of operation
-------------------
Publishing: the stream handler (``bridge.app.serve_stream``) calls :func:`publish_start` once a stream is
admitted and :func:`publish_end` when its call is over; in between, :class:`LiveCall` reads the call's
result and playback ledger every :data:`LIVE_PUBLISH_S` and overwrites its live view
(``dash-live:<CallSid>``: state, barge-ins, audio played and cleared, playout delay) when it changed. The
store is written at control rate, never per frame. Each
call gets its own record under ``dash:<CallSid>`` (a base set once, then one ``end`` event), kept apart
from the outbound-call records (``<CallSid>``), and a line in the index of its minute
(``dash-index:<unix minute>``). Every store backend has records, so the dashboard spans the workers of a
``serve`` (SQLite) and every host sharing ``REDIS_URL`` with no new store operation.

Reading: one :class:`DashboardFeed` per process. While at least one viewer is connected, one task reads
the live-call index, the last :data:`RECENT_MINUTES` minute indexes and the calls' records every
:data:`POLL_S` (records of ended calls do not change and are cached), builds rows, and hands each
viewer the rows that changed since its last update (Server-Sent Events, ``bridge._web``). Viewers cost a
queue each; the store is read once per poll whatever their number. When the server drains, the poller
ends every viewer's stream within a poll (the page's EventSource then reconnects, to another worker).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Any, Final

import orjson
import trio

from bridge._store import Store, StoreUnavailable

__all__ = [
    "DashboardFeed",
    "LiveCall",
    "publish_start",
    "publish_end",
    "live_view",
    "call_direction",
    "WEB_ORIGIN_PARAMETER",
]

logger = logging.getLogger("bridge.dashboard")

#: The store is read this often while someone watches: a dashboard is for people, and a second is
#: faster than anyone reads a table; one read per poll serves every viewer.
POLL_S: Final = 1.0
#: Recent calls: the index of this many past minutes is read (a record lives 24 h in the store).
RECENT_MINUTES: Final = 15
#: Rows kept: every live call plus at most this many ended ones (the most recent).
MAX_ENDED_ROWS: Final = 50
#: The custom parameter the web phone sets (display only: says where a call came from).
WEB_ORIGIN_PARAMETER: Final = "bridge_origin"
#: Updates queued per viewer (a minute of polls); past it diffs are dropped for that viewer, whose
#: next page load (or SSE reconnect) starts again from a snapshot.
VIEWER_QUEUE: Final = 60

_WORKER = f"{socket.gethostname()}:{os.getpid()}"


def _minute(t: float) -> int:
    return int(t // 60)


def call_direction(custom_parameters: Mapping[str, str]) -> str:
    """``web`` (the browser phone), ``outbound`` (placed by ``POST /calls``) or ``inbound``."""
    if custom_parameters.get(WEB_ORIGIN_PARAMETER) == "web":
        return "web"
    if "bridge_nonce" in custom_parameters:
        return "outbound"
    return "inbound"


async def publish_start(store: Store, call_sid: str, custom_parameters: Mapping[str, str]) -> None:
    """Record that ``call_sid`` is being served here (never raises: the call matters more)."""
    now = time.time()
    base = {
        "sid": call_sid,
        "agent": custom_parameters.get("agent", "") or "default",
        "direction": call_direction(custom_parameters),
        "started_at": now,
        "worker": _WORKER,
    }
    index = f"dash-index:{_minute(now)}"
    try:
        await store.record_create("dash:" + call_sid, base)
        await store.record_create(index, {"minute": _minute(now)})
        await store.record_event(index, {"sid": call_sid})
    except StoreUnavailable as exc:
        logger.warning("[%s] dashboard record not stored: %s", call_sid, exc)


async def publish_end(store: Store, call_sid: str, result: Any) -> None:
    """Record how ``call_sid`` ended (``result``: the runner's CallResult). Never raises."""
    stats = getattr(result, "ledger_stats", None)
    ready = getattr(result, "start_to_ready_s", None)
    event = {
        "kind": "end",
        "ended_at": time.time(),
        "reason": str(getattr(result, "reason", "unknown")),
        "barge_ins": sum((getattr(result, "barge_in", None) or {}).values()),
        "played_ms": int(getattr(stats, "played_ms", 0) or 0),
        "cleared_ms": int(
            (getattr(stats, "cleared_bytes", 0) or 0) * 1000 // max(1, getattr(stats, "bytes_per_second", 1))
        ),
        "marks_played": int(getattr(stats, "marks_played", 0) or 0),
        "marks_cleared": int(getattr(stats, "marks_cleared", 0) or 0),
        "ready_ms": None if ready is None else round(ready * 1000.0, 1),
        "delay_ms": None,
        "uplink_frames": int(getattr(result, "uplink_frames", 0) or 0),
    }
    try:
        with trio.CancelScope(shield=True):
            await store.record_event("dash:" + call_sid, event)
    except StoreUnavailable as exc:
        logger.warning("[%s] dashboard end not stored: %s", call_sid, exc)


#: A live call's view is read this often and written to the store when it changed: control rate,
#: never per frame; a second matches the dashboard's own poll.
LIVE_PUBLISH_S: Final = 1.0
#: The live view outlives its last write by this much (a worker that dies stops refreshing it).
LIVE_TTL_S: Final = 30.0


def live_view(result: Any, ledger: Any) -> dict[str, Any]:
    """What the dashboard shows of a call in progress, from the runner's result and playback ledger."""
    stats = ledger.stats
    paused = getattr(getattr(ledger, "state", None), "value", "") == "paused"
    return {
        "state": "paused" if paused else ("agent-speaking" if not ledger.idle else "talking"),
        "barge_ins": sum((result.barge_in or {}).values()),
        "played_ms": int(stats.played_ms),
        "cleared_ms": int(stats.cleared_bytes * 1000 // max(1, stats.bytes_per_second)),
        "marks_played": int(stats.marks_played),
        "marks_cleared": int(stats.marks_cleared),
        "ready_ms": None if result.start_to_ready_s is None else round(result.start_to_ready_s * 1000.0, 1),
        "delay_ms": round(float(ledger.playout_delay_s) * 1000.0, 1),
    }


class LiveCall:
    """The stream handler's one hook: observes its call and publishes the live view at control rate."""

    def __init__(self) -> None:
        self.call_sid: str | None = None  # set once the stream is admitted
        self._observed: tuple[Any, Any] | None = None

    def observe(self, result: Any, ledger: Any) -> None:
        self._observed = (result, ledger)

    async def publish(self, store_of: Any) -> None:
        """Until cancelled: write the live view when it changed, every LIVE_PUBLISH_S."""
        last: dict[str, Any] | None = None
        while True:
            await trio.sleep(LIVE_PUBLISH_S)
            if self.call_sid is None or self._observed is None:
                continue
            view = live_view(*self._observed)
            if view == last:
                continue
            try:
                await store_of().record_put("dash-live:" + self.call_sid, view, LIVE_TTL_S)
            except StoreUnavailable as exc:
                logger.debug("[%s] live view not stored: %s", self.call_sid, exc)
            else:
                last = view


def _row(base: dict[str, Any], events: list[dict[str, Any]], live: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "sid": base.get("sid", ""),
        "agent": base.get("agent", ""),
        "direction": base.get("direction", ""),
        "worker": base.get("worker", ""),
        "started_at": base.get("started_at"),
        "state": "ended",
        "transcript": "",
    }
    end = next((e for e in events if e.get("kind") == "end"), None)
    if end is not None:
        row.update({k: v for k, v in end.items() if k != "kind"})
    elif live is not None:
        row["state"] = "connecting" if live != "live" else "talking"
    else:
        row["state"] = "lost"  # its lease lapsed without an end: the worker died
    return row


class DashboardFeed:
    """The rows of the dashboard, read from the store while anyone watches, pushed as diffs."""

    def __init__(self, store_of: Any, closing: Any = None, poll_seconds: Any = None) -> None:
        self._store_of = store_of  # a callable returning the current store (it is swapped at startup)
        self._closing = closing or (lambda: False)  # true once the server drains: viewers are let go
        self._viewers: set[trio.MemorySendChannel[bytes]] = set()  # each gets SSE-ready bytes
        self._rows: dict[str, dict[str, Any]] = {}
        self._ended: dict[str, dict[str, Any]] = {}  # final rows, never read again
        self._bases: dict[str, dict[str, Any]] = {}  # live calls' bases (set once): only the view is read
        self._poll_seconds = poll_seconds  # a Histogram, or None
        self._wake = trio.Event()
        self.polls = 0

    def rows(self) -> list[dict[str, Any]]:
        return sorted(self._rows.values(), key=lambda r: -(r.get("started_at") or 0.0))

    def subscribe(self) -> tuple[trio.MemoryReceiveChannel[bytes], Any]:
        send, receive = trio.open_memory_channel[bytes](VIEWER_QUEUE)
        self._viewers.add(send)
        self._wake.set()

        def unsubscribe() -> None:
            self._viewers.discard(send)
            send.close()

        return receive, unsubscribe

    async def run(self) -> None:
        """The process's poller: reads the store every POLL_S while there are viewers."""
        while True:
            if not self._viewers:
                self._wake = trio.Event()
                await self._wake.wait()
            if self._closing():  # a draining server must not wait for open dashboards
                for viewer in list(self._viewers):
                    viewer.close()
                self._viewers.clear()
                await trio.sleep(POLL_S)
                continue
            started = time.perf_counter()
            try:
                changed, gone = await self._poll()
            except StoreUnavailable as exc:
                logger.warning("dashboard: store unavailable: %s", exc)
            else:
                if self._poll_seconds is not None:
                    self._poll_seconds.observe(time.perf_counter() - started)
                if changed or gone:
                    self._push({"type": "diff", "rows": changed, "gone": gone})
            await trio.sleep(POLL_S)

    def _push(self, update: dict[str, Any]) -> None:
        message = orjson.dumps(update)  # once, whatever the number of viewers
        for viewer in list(self._viewers):
            try:
                viewer.send_nowait(message)
            except trio.WouldBlock:  # behind: it gets a snapshot on its next read instead
                logger.debug("dashboard viewer behind; dropping one diff")
            except trio.ClosedResourceError:
                self._viewers.discard(viewer)

    async def _poll(self) -> tuple[list[dict[str, Any]], list[str]]:
        store: Store = self._store_of()
        now = time.time()
        live = await store.live_calls()
        sids: dict[str, None] = dict.fromkeys(live)
        for minute in range(_minute(now), _minute(now) - RECENT_MINUTES, -1):
            found = await store.record_get(f"dash-index:{minute}")
            if found is not None:
                sids.update(dict.fromkeys(str(e.get("sid", "")) for e in found[1]))
        rows: dict[str, dict[str, Any]] = {}
        for sid in sids:
            if not sid:
                continue
            if sid in self._ended:
                rows[sid] = self._ended[sid]
                continue
            base = self._bases.get(sid)
            if base is not None and live.get(sid) == "live":
                row = _row(base, [], "live")  # its base is known: one read, of the live view
            else:
                found = await store.record_get("dash:" + sid)
                if found is None:
                    continue  # a lease whose stream has not started (a reservation), or not ours
                row = _row(found[0], found[1], live.get(sid))
                if row["state"] == "talking":
                    self._bases[sid] = found[0]
            if row["state"] == "talking":
                view = await store.record_get("dash-live:" + sid)
                if view is not None:
                    row.update(view[0])
            rows[sid] = row
            if row["state"] in ("ended", "lost"):
                self._ended[sid] = row
        ended = sorted(
            (r for r in rows.values() if r["state"] in ("ended", "lost")),
            key=lambda r: -(r.get("started_at") or 0.0),
        )
        for extra in ended[MAX_ENDED_ROWS:]:
            rows.pop(extra["sid"], None)
        self._ended = {sid: r for sid, r in self._ended.items() if sid in rows}
        self._bases = {sid: b for sid, b in self._bases.items() if live.get(sid) == "live"}
        changed = [r for sid, r in rows.items() if self._rows.get(sid) != r]
        gone = [sid for sid in self._rows if sid not in rows]
        self._rows = rows
        self.polls += 1
        return changed, gone
