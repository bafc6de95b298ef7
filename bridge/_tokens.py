"""Per-call stream tokens: proof that a Media Stream was set up by our own signed TwiML.

Theory of operation: the voice webhook (signed by Twilio, so trusted) answers
TwiML whose ``<Stream>`` carries ``<Parameter name="bridge_token">``: an HMAC of
the CallSid and an expiry time, keyed by a key derived from the Twilio auth
token (so every worker and the ``call`` command derive the same key and no
state is shared). Twilio hands it back in ``start.customParameters``. A stream
is served only if its token is genuine, for this CallSid, unexpired, and not
used before. :meth:`CallTokens.verify` is the pure check; the app then uses up the
token's *subject* (not the token: a replayed webhook hands out a second token for
the same CallSid) in the shared store, in one step with admission (``_store.py``),
so single use holds across workers and hosts. :meth:`CallTokens.redeem` keeps a
process-local used set for callers without a store.
"""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = ["CallTokens"]

_TOKEN_PARAMETER = "bridge_token"


class CallTokens:
    """Issues and redeems ``bridge_token`` values."""

    PARAMETER = _TOKEN_PARAMETER

    def __init__(self, auth_token: str, ttl_s: float = 300.0) -> None:
        self._key = hashlib.sha256(b"speakr-bridge stream token:" + auth_token.encode()).digest()
        self._ttl_s = ttl_s
        self._used: dict[str, float] = {}  # token -> its expiry

    def __repr__(self) -> str:
        return f"CallTokens(ttl_s={self._ttl_s})"

    def _mac(self, call_sid: str, expiry: str) -> str:
        return hmac.new(self._key, f"{call_sid}.{expiry}".encode(), hashlib.sha256).hexdigest()

    def issue(self, call_sid: str, now: float | None = None) -> str:
        """A token for ``call_sid``: ``<expiry unix seconds>.<hex hmac>``."""
        expiry = str(int((time.time() if now is None else now) + self._ttl_s))
        return f"{expiry}.{self._mac(call_sid, expiry)}"

    def verify(self, call_sid: str, token: str | None, now: float | None = None) -> tuple[str | None, float]:
        """Check ``token`` without using it up: (why it is refused or None, its expiry in unix seconds)."""
        if not token:
            return "missing_token", 0.0
        now = time.time() if now is None else now
        expiry, _, mac = token.partition(".")
        if not (expiry.isascii() and expiry.isdigit()) or len(mac) != 64 or len(expiry) > 12:
            return "bad_token", 0.0
        if not hmac.compare_digest(self._mac(call_sid, expiry), mac):
            return "bad_token", 0.0
        if int(expiry) < now:
            return "expired_token", 0.0
        return None, float(expiry)

    def redeem(self, call_sid: str, token: str | None, now: float | None = None) -> str | None:
        """Check and use up ``token``; returns why it is refused, or None when it is good."""
        if not token:
            return "missing_token"
        now = time.time() if now is None else now
        expiry, _, mac = token.partition(".")
        if not (expiry.isascii() and expiry.isdigit()) or len(mac) != 64:
            return "bad_token"
        if not hmac.compare_digest(self._mac(call_sid, expiry), mac):
            return "bad_token"
        if int(expiry) < now:
            return "expired_token"
        if len(self._used) > 10_000:
            self._used = {t: e for t, e in self._used.items() if e >= now}
        if token in self._used:
            return "reused_token"
        self._used[token] = float(expiry)
        return None
