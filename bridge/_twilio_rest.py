"""Twilio's REST API, as much of it as the bridge uses: create a call, update it (hang up), fetch it.

Why ``httpx.AsyncClient`` and not the ``twilio`` package's REST client: that client is synchronous
(``requests``). Under Trio it would have to run in a worker thread (``trio.to_thread.run_sync``), and a thread
blocked in a socket read cannot be cancelled: a timeout or a call's cancel scope would abandon the thread, not
stop it, and a burst of slow answers would fill Trio's thread pool. httpx runs natively under Trio (through
anyio), so Trio's cancel scopes and deadlines bound every request, and the three endpoints we need are small
and documented (``POST /2010-04-01/Accounts/{AccountSid}/Calls.json`` and
``POST|GET .../Calls/{CallSid}.json``, form-encoded, JSON answers, errors as
``{"code", "message", "more_info", "status"}``). The ``twilio`` package is still used where it does no I/O:
TwiML building and signature checks.

Credentials come from the configuration: HTTP basic auth ``AccountSid:AuthToken``. The token stays in a
:class:`~bridge._config.Secret` and is revealed only into the ``Authorization`` header; no repr, log line,
error or metric carries it.

One connection per request, no pool: calls are placed one at a time (Twilio queues outbound calls at one
per second per account by default), so a pooled client would save a TLS handshake at most, and would need a
lifetime tied to both the app and the ``call`` command.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import quote

import httpx
import orjson
import trio

from bridge._config import Config, Secret
from bridge._errors import BridgeError, ConfigError, short_repr

__all__ = [
    "API_VERSION",
    "CALL_NOT_IN_PROGRESS",
    "STATUS_CALLBACK_EVENTS",
    "CallInfo",
    "HangupOutcome",
    "TwilioRest",
    "TwilioRestError",
]

logger = logging.getLogger("bridge.twilio_rest")

API_VERSION: Final = "2010-04-01"
#: Bound on one REST request, connection included. Twilio answers in well under a second; past this the
#: caller of the API gets a clear 502 instead of a hung request.
DEFAULT_TIMEOUT_S: Final = 10.0
#: Every call-progress event Twilio can post to ``StatusCallback`` (``StatusCallbackEvent``, repeatable).
STATUS_CALLBACK_EVENTS: Final = ("initiated", "ringing", "answered", "completed")
#: Twilio's "Invalid call state": a realtime operation (such as hanging up) on a call that is not in progress.
CALL_NOT_IN_PROGRESS: Final = 21220
#: How much of a non-JSON error body we keep (a proxy's HTML page must not flood a log line).
_MAX_ERROR_TEXT: Final = 200

_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
_CALL_SID = re.compile(r"CA[0-9a-fA-F]{32}")

#: What :meth:`TwilioRest.complete_call` reports. ``already_ended`` and ``not_found`` are not failures: the
#: call is over either way.
HangupOutcome = Literal["completed", "already_ended", "not_found", "failed"]


class TwilioRestError(BridgeError):
    """Twilio's REST API refused a request, or could not be reached.

    Attributes:
        status: the HTTP status Twilio answered, or None when no answer came (connection failure, timeout).
        code: Twilio's error code (``21211``, ``20003``, ...), when it gave one.
        twilio_message: Twilio's own explanation, or what went wrong on the way.
        more_info: Twilio's link to the error's documentation, when it gave one.

    Never carries credentials: Twilio does not echo them, and transport errors are reduced to their type.
    """

    def __init__(
        self,
        twilio_message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        more_info: str | None = None,
    ) -> None:
        super().__init__(twilio_message, status, code)
        self.twilio_message = twilio_message
        self.status = status
        self.code = code
        self.more_info = more_info

    @property
    def unreachable(self) -> bool:
        """True when Twilio never answered (as opposed to answering with an error)."""
        return self.status is None

    def as_json(self) -> dict[str, Any]:
        """Twilio's error, in Twilio's own shape, for our API's 502 answer."""
        return {
            "code": self.code,
            "message": self.twilio_message,
            "more_info": self.more_info,
            "status": self.status,
        }

    def __str__(self) -> str:
        if self.status is None:
            return f"Twilio's REST API could not be reached: {self.twilio_message}"
        code = f" {self.code}" if self.code is not None else ""
        return f"Twilio's REST API answered HTTP {self.status}{code}: {self.twilio_message}"


@dataclass(frozen=True, slots=True)
class CallInfo:
    """The parts of Twilio's Call resource the bridge reads."""

    sid: str
    status: str
    to: str | None = None
    from_: str | None = None
    direction: str | None = None
    duration_s: int | None = None

    @classmethod
    def from_json(cls, data: Any) -> CallInfo:
        """Read a Call resource; raises :class:`TwilioRestError` when it is not one."""
        if not isinstance(data, dict) or not isinstance(data.get("sid"), str):
            raise TwilioRestError(f"unexpected answer {short_repr(data)}", status=200)
        duration = data.get("duration")
        try:
            duration_s = int(duration) if duration not in (None, "") else None
        except (TypeError, ValueError):
            duration_s = None
        return cls(
            sid=data["sid"],
            status=str(data.get("status") or "unknown"),
            to=data.get("to") if isinstance(data.get("to"), str) else None,
            from_=data.get("from") if isinstance(data.get("from"), str) else None,
            direction=data.get("direction") if isinstance(data.get("direction"), str) else None,
            duration_s=duration_s,
        )


class TwilioRest:
    """A client for Twilio's Calls resource.

    Args:
        account_sid: ``AC`` followed by 32 hex digits (``TWILIO_ACCOUNT_SID``).
        auth_token: the account's auth token (``TWILIO_AUTH_TOKEN``).
        base_url: ``https://api.twilio.com``, or a stand-in (``TWILIO_API_BASE_URL``).
        timeout_s: bound on each request, connection included.

    Raises:
        ValueError: a malformed account SID or an empty token (the message never shows the token).
    """

    def __init__(
        self,
        account_sid: str,
        auth_token: Secret,
        *,
        base_url: str = "https://api.twilio.com",
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if not _ACCOUNT_SID.fullmatch(account_sid):
            raise ValueError(f"an account SID is AC followed by 32 hex digits, got {short_repr(account_sid)}")
        if not auth_token:
            raise ValueError("the auth token is empty")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.account_sid = account_sid
        self._auth_token = auth_token
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    @classmethod
    def from_config(cls, config: Config, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> TwilioRest:
        """The client the configuration describes.

        Raises:
            ConfigError: ``TWILIO_ACCOUNT_SID`` or ``TWILIO_AUTH_TOKEN`` is unset or malformed.
        """
        if not config.twilio_account_sid:
            raise ConfigError("TWILIO_ACCOUNT_SID", "TWILIO_ACCOUNT_SID is not set: outbound calls need it")
        if not _ACCOUNT_SID.fullmatch(config.twilio_account_sid):
            raise ConfigError(
                "TWILIO_ACCOUNT_SID",
                f"TWILIO_ACCOUNT_SID must be AC followed by 32 hex digits, got "
                f"{short_repr(config.twilio_account_sid)}",
            )
        if not config.twilio_auth_token:
            raise ConfigError("TWILIO_AUTH_TOKEN", "TWILIO_AUTH_TOKEN is not set: outbound calls need it")
        return cls(
            config.twilio_account_sid,
            config.twilio_auth_token,
            base_url=config.twilio_api_base_url,
            timeout_s=timeout_s,
        )

    def __repr__(self) -> str:
        return f"TwilioRest(account_sid={self.account_sid!r}, base_url={self.base_url!r})"

    # --- the endpoints ------------------------------------------------------------------------------

    def calls_path(self, call_sid: str | None = None) -> str:
        """``/2010-04-01/Accounts/{AccountSid}/Calls.json``, or ``.../Calls/{CallSid}.json``."""
        base = f"/{API_VERSION}/Accounts/{self.account_sid}/Calls"
        return f"{base}.json" if call_sid is None else f"{base}/{quote(call_sid, safe='')}.json"

    async def create_call(
        self,
        *,
        to: str,
        from_: str,
        twiml: str,
        status_callback: str | None = None,
        status_callback_events: Sequence[str] = STATUS_CALLBACK_EVENTS,
        timeout_s: float | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> CallInfo:
        """Place a call that runs ``twiml`` once answered; Twilio answers at once with the queued call.

        Raises:
            TwilioRestError: Twilio refused (invalid number, bad credentials, ...) or did not answer.
        """
        form: dict[str, str | list[str]] = {"To": to, "From": from_, "Twiml": twiml}
        if status_callback is not None:
            form["StatusCallback"] = status_callback
            form["StatusCallbackMethod"] = "POST"
            if status_callback_events:
                form["StatusCallbackEvent"] = list(status_callback_events)
        form.update(extra or {})
        return CallInfo.from_json(await self._request("POST", self.calls_path(), form, timeout_s))

    async def update_call(
        self, call_sid: str, fields: Mapping[str, str], *, timeout_s: float | None = None
    ) -> CallInfo:
        """Update a live call (``Status=completed`` hangs it up).

        Raises:
            TwilioRestError: Twilio refused (21220: the call is not in progress; 20404: unknown call) or did
                not answer.
            ValueError: ``call_sid`` is not ``CA`` followed by 32 hex digits.
        """
        _check_call_sid(call_sid)
        return CallInfo.from_json(
            await self._request("POST", self.calls_path(call_sid), dict(fields), timeout_s)
        )

    async def fetch_call(self, call_sid: str, *, timeout_s: float | None = None) -> CallInfo:
        """The call as Twilio knows it now."""
        _check_call_sid(call_sid)
        return CallInfo.from_json(await self._request("GET", self.calls_path(call_sid), None, timeout_s))

    async def complete_call(self, call_sid: str, *, timeout_s: float | None = None) -> HangupOutcome:
        """Hang up a call (``Status=completed``), tolerating a call that has already ended.

        Never raises for a REST failure: it is logged and reported as ``"failed"``, so a hang-up that goes
        wrong cannot break the call runner that asked for it (cancellation still propagates).

        Returns:
            ``"completed"`` when Twilio hung up, ``"already_ended"`` when Twilio says the call is not in
            progress any more (21220), ``"not_found"`` for a call Twilio does not know (20404), ``"failed"``
            otherwise (a malformed SID included).
        """
        try:
            await self.update_call(call_sid, {"Status": "completed"}, timeout_s=timeout_s)
        except ValueError:
            logger.warning("hang-up skipped: %s is not a call SID", short_repr(call_sid))
            return "failed"
        except TwilioRestError as exc:
            if exc.code == CALL_NOT_IN_PROGRESS:
                logger.info("[%s] hang-up: the call had already ended", call_sid)
                return "already_ended"
            if exc.status == 404:
                logger.warning("[%s] hang-up: Twilio does not know this call (%s)", call_sid, exc)
                return "not_found"
            logger.warning("[%s] hang-up failed: %s", call_sid, exc)
            return "failed"
        logger.info("[%s] hung up through the REST API", call_sid)
        return "completed"

    # --- the wire -----------------------------------------------------------------------------------

    async def _request(
        self, method: str, path: str, form: Mapping[str, str | list[str]] | None, timeout_s: float | None
    ) -> Any:
        bound = self.timeout_s if timeout_s is None else timeout_s
        auth = httpx.BasicAuth(self.account_sid, self._auth_token.reveal())
        response: httpx.Response | None = None
        failure = "timed out"
        # Trio's deadline bounds the whole request; httpx's own timeout is a backstop per phase.
        with trio.move_on_after(bound):
            try:
                async with httpx.AsyncClient(base_url=self.base_url, auth=auth, timeout=bound) as client:
                    response = await client.request(
                        method, path, data=form, headers={"Accept": "application/json"}
                    )
            except httpx.HTTPError as exc:
                # The type only: an httpx message may quote the URL, and nothing more is needed to act on it.
                failure = type(exc).__name__
        if response is None:
            logger.warning("%s %s: no answer from Twilio (%s)", method, path, failure)
            raise TwilioRestError(failure)
        data = _json_or_none(response.content)
        if response.is_success:
            return data
        raise _error_from(response.status_code, data, response.text)


def _check_call_sid(call_sid: str) -> None:
    if not isinstance(call_sid, str) or not _CALL_SID.fullmatch(call_sid):
        raise ValueError(f"a call SID is CA followed by 32 hex digits, got {short_repr(call_sid)}")


def _json_or_none(content: bytes) -> Any:
    try:
        return orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        return None


def _error_from(status: int, data: Any, text: str) -> TwilioRestError:
    """Twilio's documented error body, ``{"code", "message", "more_info", "status"}``, or the bare status."""
    if isinstance(data, dict):
        code = data.get("code")
        message = data.get("message")
        more_info = data.get("more_info")
        return TwilioRestError(
            message if isinstance(message, str) and message else f"HTTP {status}",
            status=status,
            code=code if isinstance(code, int) and not isinstance(code, bool) else None,
            more_info=more_info if isinstance(more_info, str) else None,
        )
    preview = text.strip()[:_MAX_ERROR_TEXT]
    return TwilioRestError(f"HTTP {status}" + (f": {preview}" if preview else ""), status=status)
