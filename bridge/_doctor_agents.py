"""``doctor`` for the OpenAI and Deepgram agents: each is checked up to the step a call needs before audio
flows.

OpenAI: socket upgrade -> ``session.update`` sent -> ``session.updated`` reading back ``audio/pcmu`` both
ways. Deepgram: socket upgrade -> ``Welcome`` -> ``Settings`` sent -> ``SettingsApplied``. A failure names its
step and, for a refused upgrade, the HTTP status (401/403: the key). The keys go only into the handshake
headers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio
import trio_websocket

from bridge._config import Config
from bridge._errors import ProtocolError
from bridge._logging import scrub

__all__ = ["AgentCheck", "check_deepgram", "check_openai"]


@dataclass(frozen=True, slots=True)
class AgentCheck:
    ok: bool
    what: str


async def _exchange(
    name: str, url: str, headers: list[tuple[str, str]], steps: Any, timeout_s: float
) -> AgentCheck:
    step = "connect"
    try:
        with trio.fail_after(timeout_s):
            async with trio_websocket.open_websocket_url(
                url, extra_headers=[(k.encode(), v.encode()) for k, v in headers], connect_timeout=timeout_s
            ) as ws:
                step = "session set-up"
                result: AgentCheck = await steps(ws)
                return result
    except trio.TooSlowError:
        return AgentCheck(False, f"{name}: no answer within {timeout_s:.0f} s at step '{step}'")
    except trio_websocket.ConnectionRejected as exc:
        hint = ": check the API key" if exc.status_code in (401, 403) else ""
        status = exc.status_code
        return AgentCheck(False, f"{name}: the WebSocket upgrade was refused with HTTP {status}{hint}")
    except (trio_websocket.HandshakeError, OSError) as exc:
        cause = type(exc.__cause__ or exc).__name__
        return AgentCheck(False, f"{name}: unreachable at step '{step}' ({cause})")
    except trio_websocket.ConnectionClosed as exc:
        said = scrub(str(exc.reason))[:120]
        return AgentCheck(False, f"{name}: closed the connection at step '{step}' ({said})")
    except ProtocolError as exc:
        return AgentCheck(False, f"{name}: sent something outside its protocol at step '{step}' ({exc})")


async def check_openai(config: Config, timeout_s: float = 5.0) -> AgentCheck:
    """Open a Realtime session and configure it as a call would, up to ``session.updated``."""
    from bridge.agents.openai import Handshake, HandshakeState, parse_server_event

    settings = config.openai
    headers = [("Authorization", f"Bearer {settings.api_key.reveal()}")]

    async def steps(ws: trio_websocket.WebSocketConnection) -> AgentCheck:
        handshake = Handshake(instructions=config.system_prompt, voice=settings.voice)
        await ws.send_message(handshake.initial_message())
        while not handshake.done:
            handshake.receive(parse_server_event(await ws.get_message()))
        if handshake.state is HandshakeState.READY:
            return AgentCheck(True, "openai: session.updated reads back audio/pcmu both ways")
        detail = scrub(handshake.detail)[:160]
        return AgentCheck(False, f"openai: step 'session.updated' refused ({handshake.reason}): {detail}")

    return await _exchange("openai", settings.url, headers, steps, timeout_s)


async def check_deepgram(config: Config, timeout_s: float = 5.0) -> AgentCheck:
    """Open a Voice Agent session and send a call's ``Settings``, up to ``SettingsApplied``."""
    from bridge.agents.deepgram import AgentSettings, settings_message
    from bridge.agents.deepgram._wire import AgentError, SettingsApplied, Welcome, parse_event

    settings = config.deepgram
    headers = [("Authorization", f"Token {settings.api_key.reveal()}")]

    async def steps(ws: trio_websocket.WebSocketConnection) -> AgentCheck:
        welcome = parse_event(await ws.get_message())
        if not isinstance(welcome, Welcome):
            return AgentCheck(False, f"deepgram: step 'Welcome': got {type(welcome).__name__} instead")
        await ws.send_message(settings_message(AgentSettings(prompt=config.system_prompt)))
        while True:
            event = parse_event(await ws.get_message())
            if isinstance(event, SettingsApplied):
                return AgentCheck(True, "deepgram: SettingsApplied (mulaw 8000 both ways)")
            if isinstance(event, AgentError):
                said = scrub(event.description)[:160]
                return AgentCheck(False, f"deepgram: step 'SettingsApplied' refused ({event.code}): {said}")

    return await _exchange("deepgram", settings.url, headers, steps, timeout_s)
