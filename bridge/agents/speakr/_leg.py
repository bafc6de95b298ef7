"""The Speakr agent leg: Speakr's WebSocket, PCM16 8 kHz up, 24 kHz down, pause/continue/clear and statuses.

Theory of operation
-------------------
The session opens once the call has started. Speakr says ``initial``; the sender then sends ``start`` (the
call's parameters over the configured defaults) and Speakr answers ``ready``, which releases the caller's held
audio (:meth:`~bridge._legs.CallPort.ready`). Caller audio arrives already decoded and cut into 512-byte
frames (the leg's capabilities say so) and goes out as binary frames; a segment played in full goes out as
``status``.

Downlink: every ``media`` message is one segment keyed ``(session_id, sequence_id)``, closed at once. Its
audio goes through one resampler for the whole call (:class:`codec.DownlinkEncoder`), never flushed between
messages: Speakr's messages are one continuous stream cut anywhere, and a gap says nothing about where an
answer ends. Its held-back tail (the 1.42 ms group delay) is played at ``end`` and dropped at ``clear``.
``pause``/``continue`` /``clear`` are the soft and hard interruptions, decided by Speakr.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar

import trio
import trio_websocket

import codec
from bridge._ledger import SegmentPlayed
from bridge._legs import (
    AgentClosed,
    CallPort,
    Capabilities,
    UplinkItem,
    WebSocketAgentLeg,
    instructions,
    parameter,
)
from bridge.agents.speakr import _wire as _speakr

if TYPE_CHECKING:
    from bridge._call import CallSettings

__all__ = ["SPEAKR_MAX_MESSAGE_CHARS", "SpeakrLeg"]

#: Largest Speakr message the bridge plays: 4 MiB of base64 is ~65 s of 24 kHz speech in one message. Larger
#: ones are dropped and counted; the call goes on.
SPEAKR_MAX_MESSAGE_CHARS = 4 * 1024 * 1024


class SpeakrLeg(WebSocketAgentLeg):
    max_message_chars = SPEAKR_MAX_MESSAGE_CHARS
    capabilities: ClassVar[Capabilities] = Capabilities(
        name="speakr", uplink_pcm=True, uplink_frame_bytes=512, reports_played=True
    )

    def __init__(self, call: CallPort, settings: CallSettings) -> None:
        super().__init__(call)
        self._url = settings.agent_url
        self.downlink = codec.DownlinkEncoder()
        self.initial = trio.Event()
        self.params = self.start_params()
        call.name_session(self.params.session_id)

    def url(self) -> str:
        return self._url

    def start_params(self) -> _speakr.StartParams:
        config = self.call.config
        defaults = _speakr.StartParams(
            temperature=config.temperature,
            prefix_padding=config.prefix_padding,
            voice_id=config.voice_id,
            silence_duration_ms=config.silence_duration_ms,
            threshold=config.threshold,
            system_prompt=config.system_prompt,
        )
        overrides = {k: v for k, v in self.call.parameters.items() if k not in ("agent", "goal")}
        if parameter(self.call.parameters, "goal") is not None:
            overrides["system_prompt"] = instructions(self.call.parameters, config.system_prompt)
        params, warnings = defaults.with_overrides(overrides)
        for warning in warnings:
            self.call.log.warning("custom parameter ignored: %s", warning)
        return params

    async def wait_sendable(self) -> bool:
        await self.initial.wait()
        ws = self.ws
        if ws is None:
            return False
        try:
            await ws.send_message(_speakr.start_message(self.params))
        except trio_websocket.ConnectionClosed:
            return False
        self.call.log.info("speakr start sent")
        self.arm_writable(ws)
        return True

    async def send(self, item: UplinkItem) -> None:
        ws = self.ws
        if ws is None:
            raise AgentClosed(self.name)
        if type(item) is bytes:
            message: str | bytes = item
        elif type(item) is SegmentPlayed:
            key = item.key
            assert isinstance(key, tuple)  # ours: (session_id, sequence_id), see session()
            message = _speakr.status_message(key[0], key[1])
        else:
            return
        try:
            await ws.send_message(message)
        except trio_websocket.ConnectionClosed as exc:
            self.disarm_writable()
            raise AgentClosed(self.name) from exc

    async def session(self, ws: trio_websocket.WebSocketConnection) -> None:
        call = self.call
        parse = _speakr.parse_event
        downlink = self.downlink
        play = call.play
        receive = self.receive_event
        while True:
            event = await receive(ws, parse)
            if type(event) is _speakr.AgentMedia:
                if not event.audio:
                    continue  # nothing to play: no mark, no status
                audio = event.audio
                await play((event.session_id, event.sequence_id), downlink.process(audio), close=True,
                           received=len(audio))
            elif isinstance(event, _speakr.Initial):
                call.log_event(logging.INFO, "initial", "speakr initial")
                self.initial.set()
            elif isinstance(event, _speakr.Ready):
                call.ready()
            elif isinstance(event, _speakr.Pause):
                call.barge_in("pause")
                await call.pause()
            elif isinstance(event, _speakr.Continue):
                call.barge_in("continue")
                await call.resume()
            elif isinstance(event, _speakr.Clear):
                call.barge_in("clear")
                await call.clear()
                downlink.reset()  # the old answer's filter tail must not leak into the new one
            elif isinstance(event, _speakr.Info):
                call.agent_info(event.kind, event.message)
            elif isinstance(event, _speakr.End):
                await call.play_tail(downlink.flush())
                await call.finish("agent_end")
                return
