"""The shared state of a server or a fleet: admission leases, used stream tokens, call records.

Theory of operation
-------------------
Everything that must hold for the whole server (``serve --workers N``) or the whole fleet (several
``serve`` instances sharing ``REDIS_URL``) goes through one small interface, :class:`Store`, with three
backends:

* :class:`MemoryStore`: one process (an app built in a test, the demo, ``serve`` with one worker).
* :class:`SqliteStore`: the workers of one ``serve`` on one machine; a SQLite database in WAL mode in the
  server's runtime directory, no server to run. Every operation is one short transaction
  (``BEGIN IMMEDIATE``: writers queue on the database lock, so a check and its write are atomic across
  processes). The calls run in a worker thread (``trio.to_thread.run_sync``, one at a time per process):
  a transaction may wait on another worker's lock for milliseconds, and the Trio loop carrying live audio
  must never wait with it.
* :class:`RedisStore`: Redis or Valkey at ``REDIS_URL``, through ``coredis`` (which runs on Trio through
  anyio; ``redis.asyncio`` is asyncio-only). Each check-and-write is one Lua script, so it is atomic on the
  server, and lease expiry uses the server's clock (hosts' clocks may differ).

A **lease** holds one of the ``MAX_CONCURRENT_CALLS`` slots for a CallSid. The voice webhook *reserves*
one (state ``reserved``, a short TTL) before answering "connect"; the stream's ``start`` *claims* it (state
``live``). A stream without a reservation is admitted only if a slot is free, in the same atomic step. The
owner renews its live leases while the calls last; a worker that dies stops renewing and its slots come
back after the TTL. A **used token** is remembered per token *subject* (the CallSid, or an outbound call's
nonce) until the token's expiry: a replayed webhook may hand out a second token for the same CallSid, but
only one stream per subject is ever admitted. **Call records** are a base object (set once) plus an
append-only list of status events, so callbacks landing on different workers or hosts never overwrite each
other and every reader sees the same record.

The store is never on the per-frame path: admission, the start and end of calls, status callbacks and
the renewal tick (every :data:`RENEW_EVERY_S`) are its only users. Every operation is bounded by
:data:`STORE_TIMEOUT_S` and raises :class:`StoreUnavailable` on any failure; the callers decide what an
outage means (see the README: new calls fail closed with the busy answer, live calls go on).
"""

from __future__ import annotations

import abc
import logging
import math
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import orjson
import trio

__all__ = [
    "MemoryStore",
    "RedisStore",
    "SqliteStore",
    "Store",
    "StoreUnavailable",
    "open_store",
    "RESERVATION_TTL_S",
    "LEASE_TTL_S",
    "RENEW_EVERY_S",
    "STORE_TIMEOUT_S",
]

logger = logging.getLogger("bridge.store")

#: A reservation waits this long for its stream: Twilio opens the stream within a second or two of the
#: TwiML; a call that never connects gives its slot back this soon.
RESERVATION_TTL_S: Final = 15.0
#: A live lease lasts this long unless renewed: how long a crashed worker's calls keep their slots.
LEASE_TTL_S: Final = 30.0
#: Live leases are renewed this often (a third of the TTL: two renewals may fail before one lapses).
RENEW_EVERY_S: Final = 10.0
#: Any one store operation; past it the store counts as unreachable (Twilio waits 15 s for a webhook).
STORE_TIMEOUT_S: Final = 1.0
#: Call records (base and events) are kept this long after their last change.
RECORD_TTL_S: Final = 24 * 3600.0
#: At most this many status events are kept per call (Twilio sends about six).
RECORD_MAX_EVENTS: Final = 64
#: The memory store holds at most this many records of any kind.
MEMORY_MAX_RECORDS: Final = 100_000
#: Only call records (keyed by a CallSid) are in the index behind ``record_recent`` and its count bound;
#: other records (the dashboard's) are not.
_INDEXED: Final = re.compile(r"CA[0-9a-fA-F]{32}")
#: Key prefix in Redis, so that one Redis can be shared with other software.
REDIS_PREFIX: Final = "speakr-bridge:"


class StoreUnavailable(Exception):
    """The store could not be reached or did not answer in time."""


class Store(abc.ABC):
    """The shared-state interface. Every method raises :class:`StoreUnavailable` on failure."""

    kind: str = "?"
    #: Record bounds (CALL_RECORDS_MAX, CALL_RECORDS_MAX_AGE_S): the oldest goes first past the count, and
    #: a record is forgotten this long after its last change.
    record_max: int = 10_000
    record_ttl_s: float = RECORD_TTL_S

    @abc.abstractmethod
    async def reserve(self, call_sid: str, *, limit: int, ttl_s: float = RESERVATION_TTL_S) -> bool:
        """Reserve a slot for ``call_sid`` (idempotent); False when the server is full."""

    @abc.abstractmethod
    async def admit(
        self,
        call_sid: str,
        *,
        subject: str | None,
        token_expiry: float,
        limit: int,
        ttl_s: float = LEASE_TTL_S,
    ) -> str | None:
        """In one atomic step: use up ``subject``'s token (when given) and claim or take a slot.

        Returns None when admitted, else ``"reused_token"``, ``"duplicate_call"`` or ``"busy"``
        (nothing is written then). ``token_expiry`` is the token's own expiry (unix seconds).
        """

    @abc.abstractmethod
    async def renew(self, call_sids: Sequence[str], ttl_s: float = LEASE_TTL_S) -> None:
        """Extend the live leases of ``call_sids`` (this process's live calls).

        A lease that lapsed meanwhile (the store was unreachable for longer than its TTL) is put back:
        the call is live, and the limit must count it again.
        """

    @abc.abstractmethod
    async def release(self, call_sid: str) -> None:
        """Give ``call_sid``'s slot back."""

    @abc.abstractmethod
    async def live_calls(self) -> dict[str, str]:
        """The live-call index: every unexpired lease, CallSid -> ``reserved`` or ``live``."""

    @abc.abstractmethod
    async def record_create(self, call_sid: str, base: dict[str, Any]) -> bool:
        """Store a call record's base unless one exists; True when this one was stored."""

    @abc.abstractmethod
    async def record_event(self, call_sid: str, event: dict[str, Any]) -> None:
        """Append one event to a call's record."""

    @abc.abstractmethod
    async def record_get(self, call_sid: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """A call's base and events, or None when unknown."""

    @abc.abstractmethod
    async def record_recent(self, *, limit: int, before: float | None = None) -> list[tuple[str, float]]:
        """Up to ``limit`` records, newest first, created strictly before ``before``: (CallSid, created)."""

    @abc.abstractmethod
    async def record_put(self, key: str, base: dict[str, Any], ttl_s: float = LEASE_TTL_S) -> None:
        """Set (overwrite) the base of record ``key``, kept ``ttl_s``: a small value that changes (the
        dashboard's live view of a call). Read back with :meth:`record_get`."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the store answers."""

    def describe(self) -> str:
        return self.kind


# --- one process -------------------------------------------------------------------------------------


class MemoryStore(Store):
    """The store of one process. Trio runs one task at a time and nothing here awaits: atomic."""

    kind = "memory"

    def __init__(self) -> None:
        self._leases: dict[str, tuple[str, float]] = {}  # sid -> (state, expiry)
        self._tokens: dict[str, float] = {}  # subject -> expiry
        self._records: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
        self._record_times: dict[str, tuple[float, float]] = {}  # sid -> (created, expires)
        self._expiring: dict[str, float] = {}  # key -> expiry, for records set by record_put

    def _expire(self, now: float) -> None:
        for sid in [s for s, (_, exp) in self._leases.items() if exp <= now]:
            del self._leases[sid]
        if len(self._tokens) > 10_000:
            self._tokens = {k: e for k, e in self._tokens.items() if e > now}

    async def reserve(self, call_sid: str, *, limit: int, ttl_s: float = RESERVATION_TTL_S) -> bool:
        now = time.time()
        self._expire(now)
        if call_sid in self._leases:
            return True
        if len(self._leases) >= limit:
            return False
        self._leases[call_sid] = ("reserved", now + ttl_s)
        return True

    async def admit(
        self,
        call_sid: str,
        *,
        subject: str | None,
        token_expiry: float,
        limit: int,
        ttl_s: float = LEASE_TTL_S,
    ) -> str | None:
        now = time.time()
        self._expire(now)
        if subject is not None and self._tokens.get(subject, 0.0) > now:
            return "reused_token"
        lease = self._leases.get(call_sid)
        if lease is not None and lease[0] == "live":
            return "duplicate_call"
        if lease is None and len(self._leases) >= limit:
            return "busy"
        self._leases[call_sid] = ("live", now + ttl_s)
        if subject is not None:
            self._tokens[subject] = max(token_expiry, now + 1.0)
        return None

    async def renew(self, call_sids: Sequence[str], ttl_s: float = LEASE_TTL_S) -> None:
        now = time.time()
        for sid in call_sids:
            self._leases[sid] = ("live", now + ttl_s)

    async def release(self, call_sid: str) -> None:
        self._leases.pop(call_sid, None)

    async def live_calls(self) -> dict[str, str]:
        self._expire(time.time())
        return {sid: state for sid, (state, _) in self._leases.items()}

    def _expire_records(self, now: float) -> None:
        old = [sid for sid, (_, expires) in self._record_times.items() if expires <= now]
        for sid in old:
            self._records.pop(sid, None)
            self._record_times.pop(sid, None)

    async def record_create(self, call_sid: str, base: dict[str, Any]) -> bool:
        now = time.time()
        self._expire_records(now)
        if call_sid in self._records:
            return False
        indexed = _INDEXED.fullmatch(call_sid) is not None
        # Call records: the oldest goes first past the count (dicts keep insertion order).
        while indexed and len(self._record_times) >= self.record_max:
            oldest = next(iter(self._record_times))
            del self._record_times[oldest]
            self._records.pop(oldest, None)
        if len(self._records) >= MEMORY_MAX_RECORDS:  # everything else: a plain memory bound
            del self._records[next(iter(self._records))]
        self._records[call_sid] = (dict(base), [])
        if indexed:
            self._record_times[call_sid] = (float(base.get("created_at", now)), now + self.record_ttl_s)
        return True

    async def record_event(self, call_sid: str, event: dict[str, Any]) -> None:
        record = self._records.get(call_sid)
        if record is not None and len(record[1]) < RECORD_MAX_EVENTS:
            record[1].append(dict(event))
            if call_sid in self._record_times:
                created = self._record_times[call_sid][0]
                self._record_times[call_sid] = (created, time.time() + self.record_ttl_s)

    async def record_recent(self, *, limit: int, before: float | None = None) -> list[tuple[str, float]]:
        self._expire_records(time.time())
        items = sorted(
            ((sid, created) for sid, (created, _) in self._record_times.items()
             if before is None or created < before),
            key=lambda item: item[1], reverse=True,
        )
        return items[:limit]

    async def record_get(self, call_sid: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        record = self._records.get(call_sid)
        if record is None:
            return None
        expiry = self._expiring.get(call_sid)
        if expiry is not None and expiry <= time.time():
            del self._records[call_sid], self._expiring[call_sid]
            return None
        return dict(record[0]), [dict(e) for e in record[1]]

    async def record_put(self, key: str, base: dict[str, Any], ttl_s: float = LEASE_TTL_S) -> None:
        if key not in self._records and len(self._records) >= 10_000:
            del self._records[next(iter(self._records))]
        self._records[key] = (dict(base), [])
        self._expiring[key] = time.time() + ttl_s
        if len(self._expiring) > 10_000:
            now = time.time()
            for gone in [k for k, exp in self._expiring.items() if exp <= now]:
                self._records.pop(gone, None)
                del self._expiring[gone]

    async def ping(self) -> None:
        return None


# --- the workers of one serve --------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (sid TEXT PRIMARY KEY, state TEXT NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (subject TEXT PRIMARY KEY, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS records (sid TEXT PRIMARY KEY, base BLOB NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, sid TEXT NOT NULL, body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_sid ON events (sid);
CREATE TABLE IF NOT EXISTS record_index (sid TEXT PRIMARY KEY, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS record_index_created ON record_index (created);
"""
#: How long a transaction waits for another worker's lock before the store counts as unavailable.
_SQLITE_BUSY_TIMEOUT_MS: Final = int(STORE_TIMEOUT_S * 1000)


class SqliteStore(Store):
    """A SQLite database (WAL) shared by the worker processes of one ``serve``."""

    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=0)
        self._db.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_MS}")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")  # state of live calls, not a ledger: no fsync each
        self._db.executescript(_SCHEMA)
        self._limiter = trio.CapacityLimiter(1)  # one connection: one thread at a time

    def describe(self) -> str:
        return f"sqlite ({self.path})"

    async def _run(self, fn: Any, *args: Any) -> Any:
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite: {exc}") from exc

    def _tx(self, body: Any, *args: Any) -> Any:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            result = body(db, time.time(), *args)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    @staticmethod
    def _reserve(db: sqlite3.Connection, now: float, sid: str, limit: int, ttl_s: float) -> bool:
        db.execute("DELETE FROM leases WHERE expires <= ?", (now,))
        if db.execute("SELECT 1 FROM leases WHERE sid = ?", (sid,)).fetchone():
            return True
        (count,) = db.execute("SELECT COUNT(*) FROM leases").fetchone()
        if count >= limit:
            return False
        db.execute("INSERT INTO leases VALUES (?, 'reserved', ?)", (sid, now + ttl_s))
        return True

    async def reserve(self, call_sid: str, *, limit: int, ttl_s: float = RESERVATION_TTL_S) -> bool:
        return bool(await self._run(self._tx, self._reserve, call_sid, limit, ttl_s))

    @staticmethod
    def _admit(
        db: sqlite3.Connection,
        now: float,
        sid: str,
        subject: str | None,
        token_expiry: float,
        limit: int,
        ttl_s: float,
    ) -> str | None:
        db.execute("DELETE FROM leases WHERE expires <= ?", (now,))
        if subject is not None:
            db.execute("DELETE FROM tokens WHERE expires <= ?", (now,))
            if db.execute("SELECT 1 FROM tokens WHERE subject = ?", (subject,)).fetchone():
                return "reused_token"
        row = db.execute("SELECT state FROM leases WHERE sid = ?", (sid,)).fetchone()
        if row is not None and row[0] == "live":
            return "duplicate_call"
        if row is None:
            (count,) = db.execute("SELECT COUNT(*) FROM leases").fetchone()
            if count >= limit:
                return "busy"
        db.execute("INSERT OR REPLACE INTO leases VALUES (?, 'live', ?)", (sid, now + ttl_s))
        if subject is not None:
            db.execute("INSERT INTO tokens VALUES (?, ?)", (subject, max(token_expiry, now + 1.0)))
        return None

    async def admit(
        self,
        call_sid: str,
        *,
        subject: str | None,
        token_expiry: float,
        limit: int,
        ttl_s: float = LEASE_TTL_S,
    ) -> str | None:
        result = await self._run(self._tx, self._admit, call_sid, subject, token_expiry, limit, ttl_s)
        return None if result is None else str(result)

    async def renew(self, call_sids: Sequence[str], ttl_s: float = LEASE_TTL_S) -> None:
        def body(db: sqlite3.Connection, now: float) -> None:
            db.executemany(
                "INSERT OR REPLACE INTO leases VALUES (?, 'live', ?)", [(s, now + ttl_s) for s in call_sids]
            )

        await self._run(self._tx, body)

    async def release(self, call_sid: str) -> None:
        await self._run(self._db.execute, "DELETE FROM leases WHERE sid = ?", (call_sid,))

    async def live_calls(self) -> dict[str, str]:
        def body() -> dict[str, str]:
            rows = self._db.execute("SELECT sid, state FROM leases WHERE expires > ?", (time.time(),))
            return dict(rows.fetchall())

        return dict(await self._run(body))

    async def record_create(self, call_sid: str, base: dict[str, Any]) -> bool:
        ttl, most = self.record_ttl_s, self.record_max

        def body(db: sqlite3.Connection, now: float) -> bool:
            gone = "SELECT sid FROM records WHERE expires <= ?"
            db.execute(f"DELETE FROM events WHERE sid IN ({gone})", (now,))
            db.execute(f"DELETE FROM record_index WHERE sid IN ({gone})", (now,))
            db.execute("DELETE FROM records WHERE expires <= ?", (now,))
            cur = db.execute(
                "INSERT OR IGNORE INTO records VALUES (?, ?, ?)",
                (call_sid, orjson.dumps(base), now + ttl),
            )
            if cur.rowcount != 1:
                return False
            if not _INDEXED.fullmatch(call_sid):
                return True
            db.execute(
                "INSERT OR REPLACE INTO record_index VALUES (?, ?)",
                (call_sid, float(base.get("created_at", now))),
            )
            extra = "SELECT sid FROM record_index ORDER BY created DESC LIMIT -1 OFFSET ?"
            for table in ("events", "records"):
                db.execute(f"DELETE FROM {table} WHERE sid IN ({extra})", (most,))
            db.execute(f"DELETE FROM record_index WHERE sid IN ({extra})", (most,))
            return True

        return bool(await self._run(self._tx, body))

    async def record_event(self, call_sid: str, event: dict[str, Any]) -> None:
        ttl = self.record_ttl_s

        def body(db: sqlite3.Connection, now: float) -> None:
            (count,) = db.execute("SELECT COUNT(*) FROM events WHERE sid = ?", (call_sid,)).fetchone()
            if count < RECORD_MAX_EVENTS:
                db.execute("INSERT INTO events (sid, body) VALUES (?, ?)", (call_sid, orjson.dumps(event)))
                db.execute("UPDATE records SET expires = ? WHERE sid = ?", (now + ttl, call_sid))

        await self._run(self._tx, body)

    async def record_get(self, call_sid: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        def body() -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
            row = self._db.execute(
                "SELECT base FROM records WHERE sid = ? AND expires > ?", (call_sid, time.time())
            ).fetchone()
            if row is None:
                return None
            events = self._db.execute("SELECT body FROM events WHERE sid = ? ORDER BY id", (call_sid,))
            return orjson.loads(row[0]), [orjson.loads(b) for (b,) in events.fetchall()]

        result: tuple[dict[str, Any], list[dict[str, Any]]] | None = await self._run(body)
        return result

    async def record_recent(self, *, limit: int, before: float | None = None) -> list[tuple[str, float]]:
        def body() -> list[tuple[str, float]]:
            rows = self._db.execute(
                "SELECT i.sid, i.created FROM record_index i JOIN records r ON r.sid = i.sid "
                "WHERE r.expires > ? AND i.created < ? ORDER BY i.created DESC LIMIT ?",
                (time.time(), math.inf if before is None else before, limit),
            )
            return [(str(sid), float(created)) for sid, created in rows.fetchall()]

        result: list[tuple[str, float]] = await self._run(body)
        return result

    async def record_put(self, key: str, base: dict[str, Any], ttl_s: float = LEASE_TTL_S) -> None:
        def body(db: sqlite3.Connection, now: float) -> None:
            row = (key, orjson.dumps(base), now + ttl_s)
            db.execute("INSERT OR REPLACE INTO records VALUES (?, ?, ?)", row)

        await self._run(self._tx, body)

    async def ping(self) -> None:
        await self._run(self._db.execute, "SELECT 1")

    def close(self) -> None:
        self._db.close()


# --- a fleet ----------------------------------------------------------------------------------------------

_LUA_NOW_AND_EXPIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, sid in ipairs(gone) do redis.call('HDEL', KEYS[2], sid) end
if #gone > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) end
"""
# KEYS: leases (zset sid -> expiry ms), states (hash sid -> state). ARGV: sid, limit, ttl ms.
_LUA_RESERVE = (
    _LUA_NOW_AND_EXPIRE
    + """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], 'reserved')
return 1
"""
)
# KEYS: leases, states, token key. ARGV: sid, limit, ttl ms, token ttl ms, '1' when a token is used.
_LUA_ADMIT = (
    _LUA_NOW_AND_EXPIRE
    + """
if ARGV[5] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then return 'reused_token' end
local state = redis.call('HGET', KEYS[2], ARGV[1])
if state == 'live' then return 'duplicate_call' end
if not state and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 'busy' end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], 'live')
if ARGV[5] == '1' then redis.call('SET', KEYS[3], '1', 'PX', math.max(1000, tonumber(ARGV[4]) - now)) end
return 'ok'
"""
)
# KEYS: leases, states. ARGV: ttl ms, sid...
_LUA_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], 'live')
end
return 1
"""
# KEYS: leases, states.
_LUA_LIVE = _LUA_NOW_AND_EXPIRE + "return redis.call('HGETALL', KEYS[2])"
# KEYS: events list, record key. ARGV: event json, max events, ttl s.
# KEYS: record key, index zset. ARGV: base json, ttl s, created ms, max records, record key prefix.
_LUA_CREATE = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[7] ~= '1' then return 1 end
redis.call('ZADD', KEYS[2], ARGV[3], string.sub(KEYS[1], string.len(ARGV[5]) + 1))
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if extra > 0 then
  for _, sid in ipairs(redis.call('ZRANGE', KEYS[2], 0, extra - 1)) do
    redis.call('DEL', ARGV[5] .. sid, ARGV[6] .. sid)
  end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, extra - 1)
end
return 1
"""
# KEYS: index zset. ARGV: max score (exclusive, '+inf' or '(<ms>'), limit, record key prefix.
_LUA_RECENT = """
local out = {}
local rows = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[1], '-inf', 'WITHSCORES', 'LIMIT', 0, ARGV[2] * 4)
for i = 1, #rows, 2 do
  if redis.call('EXISTS', ARGV[3] .. rows[i]) == 1 then
    table.insert(out, rows[i]); table.insert(out, rows[i + 1])
    if #out >= ARGV[2] * 2 then break end
  else
    redis.call('ZREM', KEYS[1], rows[i])
  end
end
return out
"""
_LUA_EVENT = """
if redis.call('LLEN', KEYS[1]) < tonumber(ARGV[2]) then redis.call('RPUSH', KEYS[1], ARGV[1]) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""


class RedisStore(Store):
    """Redis or Valkey shared by every instance of a fleet."""

    kind = "redis"

    def __init__(self, client: Any, where: str) -> None:
        self._r = client
        self._where = where
        p = REDIS_PREFIX
        self._leases, self._states = p + "leases", p + "lease-state"
        self._reserve = client.register_script(_LUA_RESERVE)
        self._admit = client.register_script(_LUA_ADMIT)
        self._renew = client.register_script(_LUA_RENEW)
        self._live = client.register_script(_LUA_LIVE)
        self._event = client.register_script(_LUA_EVENT)
        self._create = client.register_script(_LUA_CREATE)
        self._recent = client.register_script(_LUA_RECENT)
        self._index = p + "rec-index"

    def describe(self) -> str:
        return f"redis ({self._where})"

    async def _do(self, awaitable_fn: Any) -> Any:
        import coredis.exceptions

        try:
            with trio.fail_after(STORE_TIMEOUT_S):
                return await awaitable_fn()
        except trio.TooSlowError as exc:
            raise StoreUnavailable(f"redis: no answer within {STORE_TIMEOUT_S:g} s") from exc
        except (OSError, coredis.exceptions.RedisError) as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    async def reserve(self, call_sid: str, *, limit: int, ttl_s: float = RESERVATION_TTL_S) -> bool:
        keys = [self._leases, self._states]
        result = await self._do(lambda: self._reserve(keys=keys, args=[call_sid, limit, int(ttl_s * 1000)]))
        return bool(int(result))

    async def admit(
        self,
        call_sid: str,
        *,
        subject: str | None,
        token_expiry: float,
        limit: int,
        ttl_s: float = LEASE_TTL_S,
    ) -> str | None:
        token_key = REDIS_PREFIX + "token:" + (subject or "")
        keys = [self._leases, self._states, token_key]
        args = [call_sid, limit, int(ttl_s * 1000), int(token_expiry * 1000), "1" if subject else "0"]
        result = await self._do(lambda: self._admit(keys=keys, args=args))
        text = result.decode() if isinstance(result, bytes) else str(result)
        return None if text == "ok" else text

    async def renew(self, call_sids: Sequence[str], ttl_s: float = LEASE_TTL_S) -> None:
        if call_sids:
            args: list[Any] = [int(ttl_s * 1000), *call_sids]
            await self._do(lambda: self._renew(keys=[self._leases, self._states], args=args))

    async def release(self, call_sid: str) -> None:
        async def both() -> None:
            await self._r.zrem(self._leases, [call_sid])
            await self._r.hdel(self._states, [call_sid])

        await self._do(both)

    async def live_calls(self) -> dict[str, str]:
        flat = await self._do(lambda: self._live(keys=[self._leases, self._states], args=[]))
        items = [x.decode() if isinstance(x, bytes) else str(x) for x in flat]
        return dict(zip(items[::2], items[1::2], strict=True))

    async def record_create(self, call_sid: str, base: dict[str, Any]) -> bool:
        key = REDIS_PREFIX + "rec:" + call_sid
        created_ms = int(float(base.get("created_at", time.time())) * 1000)
        args = [
            orjson.dumps(base), int(self.record_ttl_s), created_ms, self.record_max,
            REDIS_PREFIX + "rec:", REDIS_PREFIX + "ev:", "1" if _INDEXED.fullmatch(call_sid) else "0",
        ]
        result = await self._do(lambda: self._create(keys=[key, self._index], args=args))
        return bool(int(result))

    async def record_recent(self, *, limit: int, before: float | None = None) -> list[tuple[str, float]]:
        top = "+inf" if before is None else f"({round(before * 1000)}"
        args = [top, limit, REDIS_PREFIX + "rec:"]
        flat = await self._do(lambda: self._recent(keys=[self._index], args=args))
        items = [x.decode() if isinstance(x, bytes) else str(x) for x in flat]
        return [(sid, int(float(ms)) / 1000) for sid, ms in zip(items[::2], items[1::2], strict=True)]

    async def record_event(self, call_sid: str, event: dict[str, Any]) -> None:
        keys = [REDIS_PREFIX + "ev:" + call_sid, REDIS_PREFIX + "rec:" + call_sid]
        args = [orjson.dumps(event), RECORD_MAX_EVENTS, int(self.record_ttl_s)]
        await self._do(lambda: self._event(keys=keys, args=args))

    async def record_get(self, call_sid: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        async def both() -> tuple[Any, Any]:
            base = await self._r.get(REDIS_PREFIX + "rec:" + call_sid)
            events = await self._r.lrange(REDIS_PREFIX + "ev:" + call_sid, 0, -1) if base else []
            return base, events

        base, events = await self._do(both)
        if base is None:
            return None
        return orjson.loads(base), [orjson.loads(e) for e in events]

    async def record_put(self, key: str, base: dict[str, Any], ttl_s: float = LEASE_TTL_S) -> None:
        body = orjson.dumps(base)
        await self._do(lambda: self._r.set(REDIS_PREFIX + "rec:" + key, body, ex=max(1, int(ttl_s))))

    async def ping(self) -> None:
        await self._do(self._r.ping)


def _redis_where(url: str) -> str:
    """The URL without credentials, for logs and ``doctor``."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or parts.path
    port = f":{parts.port}" if parts.port else ""
    path = parts.path if parts.hostname else ""
    return f"{parts.scheme}://{host}{port}{path}"


@asynccontextmanager
async def open_store(redis_url: str | None, runtime_dir: str | None) -> AsyncIterator[Store]:
    """The store for this process: Redis when ``redis_url``, SQLite in ``runtime_dir``, else memory.

    Opening never fails for an unreachable Redis (calls fail closed until it answers, see the README);
    it fails for a malformed URL.
    """
    if redis_url:
        import coredis

        client = coredis.Redis.from_url(
            redis_url,
            connect_timeout=STORE_TIMEOUT_S,
            stream_timeout=STORE_TIMEOUT_S,
            verify_version=False,
        )
        async with client:
            yield RedisStore(client, _redis_where(redis_url))
    elif runtime_dir:
        store = SqliteStore(Path(runtime_dir) / "store.sqlite3")
        try:
            yield store
        finally:
            store.close()
    else:
        yield MemoryStore()
