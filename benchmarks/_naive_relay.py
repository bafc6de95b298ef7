"""The baseline of the capacity benchmark: the relay one writes first (STACK-NOTES' "naive relay").

Hypercorn + Quart-Trio for Twilio's Media Stream, one trio-websocket client socket per call to the agent,
orjson, and every message relayed one by one as it comes, both ways: each Twilio ``media`` is decoded and
appended to the uplink buffer, and every complete 512-byte frame is sent to the agent at once; each agent
``media`` is resampled and sent to Twilio as one ``media`` plus one ``mark``, and a returned mark becomes a
``status``. ``pause`` and ``clear`` send Twilio a ``clear``; ``continue`` does nothing (no ledger: the
baseline need not be right about playback, only carry the same traffic as the bridge does, so that the
comparison is about the architecture). The same codec is used as the bridge's.

Run: ``python benchmarks/_naive_relay.py --host 127.0.0.1 --port P`` with ``SPEAKR_WS_URL`` set.
"""

from __future__ import annotations

import argparse
import binascii
import os
import sys

import orjson
import trio
import trio_websocket
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import websocket
from quart_trio import QuartTrio

import codec

FRAME_BYTES = 512
#: Before the agent is ready the relay keeps at most this much caller audio (1 s), like the bridge.
PREROLL_BYTES = 16000

app = QuartTrio("naive-relay")


@app.get("/healthz")
async def healthz() -> tuple[str, int]:
    return "ok\n", 200


def _start_message(params: dict[str, str]) -> str:
    inner = {
        "temperature": 0.7,
        "prefixPadding": 0.7,
        "voice_id": "jill",
        "silenceDuration": 1000,
        "threshold": 0.18,
        "system_prompt": params.get("system_prompt", "You are a helpful assistant"),
        "sessionId": binascii.hexlify(os.urandom(16)).decode(),
    }
    return orjson.dumps({"type": "start", "msg": orjson.dumps(inner).decode()}).decode()


class _Relay:
    def __init__(self, agent: trio_websocket.WebSocketConnection) -> None:
        self.agent = agent
        self.stream_sid = ""
        self.params: dict[str, str] | None = None
        self.started = trio.Event()
        self.ready = False
        self.pcm = bytearray()
        self.encoder = codec.DownlinkEncoder()

    async def twilio_to_agent(self) -> None:
        while True:
            msg = orjson.loads(await websocket.receive())
            event = msg.get("event")
            if event == "media":
                self.pcm += codec.ulaw_decode(binascii.a2b_base64(msg["media"]["payload"]))
                if self.ready:
                    while len(self.pcm) >= FRAME_BYTES:
                        await self.agent.send_message(bytes(self.pcm[:FRAME_BYTES]))
                        del self.pcm[:FRAME_BYTES]
                elif len(self.pcm) > PREROLL_BYTES:
                    del self.pcm[: len(self.pcm) - PREROLL_BYTES]
            elif event == "mark":
                sequence = msg["mark"]["name"]
                status = {"type": "status", "msg": {"session_id": "s", "sequence_id": sequence}}
                await self.agent.send_message(orjson.dumps(status).decode())
            elif event == "start":
                self.stream_sid = msg["start"]["streamSid"]
                self.params = msg["start"].get("customParameters", {})
                self.started.set()
            elif event == "stop":
                return

    async def agent_to_twilio(self) -> None:
        while True:
            msg = orjson.loads(await self.agent.get_message())
            kind = msg.get("type")
            if kind == "media":
                raw = binascii.a2b_base64(msg["msg"])
                meta, _, pcm = raw.partition(b"\x00")
                sequence = orjson.loads(meta)["sequence_id"]
                ulaw = self.encoder.process(pcm)
                if ulaw:
                    payload = binascii.b2a_base64(ulaw, newline=False).decode()
                    await websocket.send(
                        orjson.dumps(
                            {"event": "media", "streamSid": self.stream_sid, "media": {"payload": payload}}
                        ).decode()
                    )
                await websocket.send(
                    orjson.dumps(
                        {"event": "mark", "streamSid": self.stream_sid, "mark": {"name": str(sequence)}}
                    ).decode()
                )
            elif kind == "initial":
                await self.started.wait()
                await self.agent.send_message(_start_message(self.params or {}))
            elif kind == "ready":
                self.ready = True
            elif kind in ("pause", "clear"):
                await websocket.send(orjson.dumps({"event": "clear", "streamSid": self.stream_sid}).decode())
                if kind == "clear":
                    self.encoder.reset()
            elif kind == "end":
                return


@app.websocket("/twilio/stream")
async def stream() -> None:
    await websocket.accept()
    async with trio_websocket.open_websocket_url(os.environ["SPEAKR_WS_URL"]) as agent:
        relay = _Relay(agent)
        async with trio.open_nursery() as nursery:

            async def one_way(direction: object) -> None:
                try:
                    await direction()  # type: ignore[operator]
                except trio_websocket.ConnectionClosed:
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(one_way, relay.twilio_to_agent)
            nursery.start_soon(one_way, relay.agent_to_twilio)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    config = Config()
    config.bind = [f"{args.host}:{args.port}"]
    config.worker_class = "trio"
    config.accesslog = None
    trio.run(serve, app, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
