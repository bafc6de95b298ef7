"""``speakr-bridge doctor``: what is configured, and does it work?

Everything it prints goes through the same secret scrubbing as the logs: an agent that echoes the
API key back ("invalid api key spk_…") must not put it on an operator's terminal or in a CI log.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import trio
import trio_websocket

import codec
from bridge._config import Config, load_config
from bridge._errors import SpeakrProtocolError
from bridge._logging import register_secret, scrub
from bridge.agents.speakr import _wire as _speakr

__all__ = ["doctor_command", "check_agent"]

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass(frozen=True, slots=True)
class Finding:
    level: str
    what: str


async def check_agent(url: str, timeout_s: float = 5.0) -> Finding:
    """Connect to a Speakr-protocol agent and wait for its ``initial``."""
    try:
        with trio.fail_after(timeout_s):
            async with trio_websocket.open_websocket_url(url, connect_timeout=timeout_s) as ws:
                message = await ws.get_message()
                event = _speakr.parse_event(message)
                if isinstance(event, _speakr.Initial):
                    return Finding(OK, "agent reachable and answered 'initial'")
                if isinstance(event, _speakr.Info):
                    # Scrubbed before it is cut short, so that no prefix of a secret survives.
                    said = scrub(str(event.message))[:120]
                    return Finding(FAIL, f"agent answered info ({event.kind}): {said}")
                return Finding(FAIL, f"agent answered {type(event).__name__} instead of 'initial'")
    except trio.TooSlowError:
        return Finding(FAIL, f"agent did not answer 'initial' within {timeout_s:.0f} s")
    except trio_websocket.ConnectionRejected as exc:
        return Finding(FAIL, f"agent refused the WebSocket (HTTP {exc.status_code}): check SPEAKR_API_KEY")
    except (trio_websocket.HandshakeError, OSError) as exc:
        return Finding(FAIL, f"agent unreachable: {type(exc).__name__}")
    except trio_websocket.ConnectionClosed as exc:
        return Finding(FAIL, f"agent closed the connection before 'initial' ({exc.reason})")
    except SpeakrProtocolError as exc:
        return Finding(FAIL, f"agent sent something that is not Speakr protocol: {exc.kind}")


async def check_public_url(public_url: str, timeout_s: float = 5.0) -> list[Finding]:
    findings = []
    parts = urlsplit(public_url)
    if parts.scheme != "https":
        findings.append(Finding(WARN, "PUBLIC_URL is not https: Twilio needs wss:// for the stream"))
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            response = await client.get(public_url + "/healthz")
        if response.status_code == 200:
            findings.append(Finding(OK, f"PUBLIC_URL reaches a running bridge ({public_url}/healthz)"))
        else:
            findings.append(Finding(FAIL, f"{public_url}/healthz answered HTTP {response.status_code}"))
    except httpx.HTTPError as exc:
        # Twilio reaches the bridge only through PUBLIC_URL: if doctor cannot, calls will not connect.
        findings.append(Finding(FAIL, f"{public_url}/healthz not reachable ({type(exc).__name__}); "
                                      "is `speakr-bridge serve` running behind it?"))
    return findings


async def check_store(config: Config) -> Finding:
    """Which store the server will use, and (for Redis) whether it answers now."""
    from bridge._store import StoreUnavailable, open_store

    if not config.redis_url:
        return Finding(OK, "store: embedded (memory with one worker, SQLite shared by `serve --workers N`); "
                           "set REDIS_URL to share calls across hosts")
    async with open_store(config.redis_url.reveal(), None) as store:
        try:
            await store.ping()
        except StoreUnavailable as exc:
            return Finding(FAIL, f"store: {store.describe()} does not answer ({exc}): new calls would get "
                                 "the busy answer")
        return Finding(OK, f"store: {store.describe()} answers")


async def _agent_findings(config: Config) -> list[Finding]:
    """The configured backend, checked as far as a call needs it before audio flows."""
    findings: list[Finding] = []
    if config.agent in ("openai", "deepgram"):
        from bridge._doctor_agents import check_deepgram, check_openai

        settings = config.openai if config.agent == "openai" else config.deepgram
        variable = "OPENAI_REALTIME_URL" if config.agent == "openai" else "DEEPGRAM_AGENT_URL"
        if not settings.api_key:
            findings.append(Finding(WARN, f"{config.agent.upper()}_API_KEY unset"))
        if urlsplit(settings.url).scheme != "wss":
            findings.append(Finding(WARN, f"{variable} is not wss://: audio travels unencrypted"))
        check = await (check_openai if config.agent == "openai" else check_deepgram)(config)
        findings.append(Finding(OK if check.ok else FAIL, check.what))
        return findings
    if config.agent != "speakr":
        return findings
    agent_url = config.agent_url()
    if agent_url is None:
        from bridge.agents.speakr._local_agent import LocalAgentServer

        async with trio.open_nursery() as nursery:
            agent = LocalAgentServer()
            await nursery.start(agent.serve)
            finding = await check_agent(agent.url)
            nursery.cancel_scope.cancel()
        findings.append(Finding(finding.level, f"built-in local agent (SPEAKR_WS_URL unset): {finding.what}"))
        return findings
    if urlsplit(agent_url).scheme != "wss":
        findings.append(Finding(WARN, "SPEAKR_WS_URL is not wss://: audio travels unencrypted"))
    if not config.speakr_api_key:
        findings.append(Finding(WARN, "SPEAKR_API_KEY unset"))
    findings.append(await check_agent(agent_url))
    return findings


async def _run(config: Config) -> list[Finding]:
    findings: list[Finding] = []
    if codec.IMPLEMENTATION == "cython":
        findings.append(Finding(OK, "codec: compiled (cython)"))
    else:
        findings.append(Finding(WARN, "codec: pure-Python fallback (install a C compiler and reinstall)"))
    if not config.twilio_auth_token:
        findings.append(Finding(WARN, "TWILIO_AUTH_TOKEN unset: Twilio signatures are not checked; anyone "
                                      "who reaches the server can open agent sessions"))
    else:
        findings.append(Finding(OK, "Twilio signature checks on"))
    findings.append(Finding(OK, f"agent: {config.agent} (AGENT; a call's agent parameter may pick another)"))
    findings.extend(await _agent_findings(config))
    findings.append(await check_store(config))
    if config.public_url:
        findings.extend(await check_public_url(config.public_url))
    else:
        findings.append(Finding(WARN, "PUBLIC_URL unset: stream URLs and signature checks use the "
                                      "request's Host (fine locally; set it behind a tunnel or proxy)"))
    return findings


def _say(text: str = "") -> None:
    print(scrub(text))


def doctor_command() -> int:
    config = load_config()
    for secret in config.secrets():
        register_secret(secret.reveal())
    _say("speakr-bridge doctor\n\nconfiguration (secrets redacted):")
    for name, value in config.redacted().items():
        _say(f"  {name:26} {value}")
    _say()
    findings = trio.run(_run, config)
    for f in findings:
        _say(f"  [{f.level:4}] {f.what}")
    failures = [f for f in findings if f.level == FAIL]
    warnings = [f for f in findings if f.level == WARN]
    _say()
    if failures:
        _say(f"verdict: NOT READY ({len(failures)} problem(s), {len(warnings)} warning(s))")
        return 1
    _say(f"verdict: READY ({len(warnings)} warning(s))")
    sys.stdout.flush()
    return 0
