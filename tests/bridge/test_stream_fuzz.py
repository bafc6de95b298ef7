"""End to end: thousands of hostile frames thrown at one LIVE Twilio Media Stream.

One real bridge and one agent emulator for the whole test. A raw WebSocket client plays a Twilio that
has gone mad: before ``start`` and between every real 20 ms audio frame it sends generated garbage —
random bytes, random Unicode, truncated Twilio messages, well-formed Twilio messages with one field of
the wrong type (every field of every event, in turn), huge strings, deep nesting, odd JSON scalars and
events out of order (``mark``/``dtmf``/``media`` before ``start``, a second ``start``, ``connected``
again, ``stop`` twice). The call must survive all of it: every real audio sample reaches the agent
exactly once, in order, and a fresh call afterwards works.

The generator is a seeded ``random.Random`` (deterministic, so a failure replays exactly); it never
produces a message a correct bridge must accept as audio or as the end of the call, so the expected
result is known: garbage that happens to be a valid no-op (an unknown mark, a dtmf) is fine either way.
Every ``media`` message it produces either carries an empty payload or an invalid one, and it never
sends a ``stop`` until the very end.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable
from typing import Any

import httpx
import trio
import trio_websocket
from e2e_helpers import RunningBridge, speechlike, start_agent, start_bridge

import codec
from bridge import _twilio
from bridge.emulators import TwilioCaller

SEED = 20_240_521
PRE_START_FRAMES = 200
AUDIO_FRAMES = 100  # 2 s of real caller audio
GARBAGE_PER_AUDIO_FRAME = 18
TOTAL_GARBAGE = PRE_START_FRAMES + AUDIO_FRAMES * GARBAGE_PER_AUDIO_FRAME  # 2000
#: Hypercorn refuses (closes with 1009) messages over 1 MiB, which would end the call legitimately.
MAX_FRAME_BYTES = 900_000
LIMIT_S = 60

STREAM_SID = "MZ" + "f" * 32
CALL_SID = "CA" + "f" * 32
ACCOUNT_SID = "AC" + "f" * 32


def templates() -> dict[str, dict[str, Any]]:
    """One well-formed instance of every inbound Twilio event (media with an empty, harmless payload)."""
    return {
        "connected": {"event": "connected", "protocol": "Call", "version": "1.0.0"},
        "start": json.loads(
            _twilio.start_message(
                stream_sid=STREAM_SID, call_sid=CALL_SID, account_sid=ACCOUNT_SID,
                custom_parameters={"voice_id": "jill"},
            )
        ),
        "media": {
            "event": "media", "sequenceNumber": "7", "streamSid": STREAM_SID,
            "media": {"track": "inbound", "chunk": "6", "timestamp": "100", "payload": ""},
        },
        "mark": {"event": "mark", "sequenceNumber": "8", "streamSid": STREAM_SID, "mark": {"name": "m-nope"}},
        "dtmf": {
            "event": "dtmf", "sequenceNumber": "9", "streamSid": STREAM_SID,
            "dtmf": {"track": "inbound_track", "digit": "5"},
        },
        "stop": json.loads(
            _twilio.stop_message(
                stream_sid=STREAM_SID, call_sid=CALL_SID, account_sid=ACCOUNT_SID, sequence_number=10
            )
        ),
    }


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into nested dicts/lists (the object's fields at any depth)."""
    out = []
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, list):
        items = enumerate(obj)
    else:
        return out
    for key, child in items:
        out.append(prefix + (key,))
        out.extend(_paths(child, prefix + (key,)))
    return out


def _set(obj: Any, path: tuple[Any, ...], new: Any) -> None:
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = new


class Garbage:
    """Seeded generator of hostile inbound frames (see the module docstring for its guarantees)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.templates = templates()
        # Each (event, field path) pair in turn, so every field of every event gets its wrong types.
        self._fields = [
            (name, path) for name, t in self.templates.items() if name != "stop" for path in _paths(t)
        ]
        self._next_field = 0
        self.kinds: dict[str, int] = {}

    # -- values ----------------------------------------------------------------------------------

    def unicode(self, n: int) -> str:
        chars = []
        for _ in range(n):
            cp = self.rng.choice([self.rng.randrange(0x20, 0x7F), self.rng.randrange(0xA0, 0xD800),
                                  self.rng.randrange(0xE000, 0x110000), self.rng.randrange(0, 0x20)])
            chars.append(chr(cp))
        return "".join(chars)

    def wrong_value(self) -> Any:
        """A value of a type no Twilio field has, or a string no Twilio field could hold."""
        r = self.rng
        return r.choice([
            lambda: None, lambda: True, lambda: False, lambda: r.randrange(-2**63, 2**63),
            lambda: 10**r.randrange(20, 400), lambda: r.random() * 1e300, lambda: -0.0,
            lambda: [], lambda: [1, "a", None], lambda: {}, lambda: {"x": {"y": [None]}},
            lambda: "*" * r.randrange(1, 64),  # not base64, not an event name, not a digit
            lambda: "*" + self.unicode(r.randrange(0, 40)),
            lambda: "*" * r.randrange(70_000, 300_000),  # huge
        ])()

    # -- frames ----------------------------------------------------------------------------------

    def frame(self, *, before_start: bool) -> str | bytes:
        r = self.rng
        makers: list[tuple[str, Callable[[], str | bytes], int]] = [
            ("random_bytes", lambda: r.randbytes(r.choice([0, 1, 7, 160, 513, r.randrange(0, 200_000)])), 8),
            ("random_text", lambda: self.unicode(r.randrange(0, 500)), 8),
            ("truncated", self.truncated, 12),
            ("wrong_type", self.wrong_type, 40),
            ("huge", self.huge, 2),
            ("deep", self.deep, 2),
            ("odd_json", self.odd_json, 8),
            ("bad_payload", self.bad_payload, 10),
            ("out_of_order", lambda: self.out_of_order(before_start), 10),
        ]
        names, funcs, weights = zip(*makers, strict=True)
        i = r.choices(range(len(makers)), weights=weights)[0]
        data = funcs[i]()
        size = len(data.encode("utf-8") if isinstance(data, str) else data)
        if size > MAX_FRAME_BYTES:
            return self.frame(before_start=before_start)
        self.kinds[names[i]] = self.kinds.get(names[i], 0) + 1
        return data

    def truncated(self) -> str:
        name = self.rng.choice(list(self.templates))
        text = json.dumps(self.templates[name])
        if name == "media":  # truncate a real-looking audio message too
            text = _twilio.media_event_message(
                stream_sid=STREAM_SID, payload=self.rng.randbytes(160), chunk=1, timestamp_ms=0,
                sequence_number=1,
            )
        return text[: self.rng.randrange(0, len(text) - 1)]  # never the closing brace: never valid JSON

    def wrong_type(self) -> str:
        name, path = self._fields[self._next_field % len(self._fields)]
        self._next_field += 1
        message = json.loads(json.dumps(self.templates[name]))
        _set(message, path, self.wrong_value())
        return json.dumps(message, ensure_ascii=self.rng.random() < 0.5)

    def huge(self) -> str:
        r = self.rng
        return r.choice([
            lambda: "A" * r.randrange(100_000, 850_000),
            lambda: json.dumps({"event": "media", "streamSid": STREAM_SID,
                                "media": {"payload": "*" * r.randrange(100_000, 800_000)}}),
            lambda: json.dumps({"event": "x" * r.randrange(100_000, 800_000)}),
            lambda: json.dumps({"event": "mark", "streamSid": STREAM_SID, "mark": {"name": "n" * 500_000}}),
        ])()

    def deep(self) -> str:
        depth = self.rng.choice([1_000, 50_000, 200_000])
        if self.rng.random() < 0.5:
            return "[" * depth + "]" * depth
        return '{"event":' * depth + "1" + "}" * depth

    def odd_json(self) -> str:
        return self.rng.choice([
            "null", "true", "0", "-1", "1e999", "-1e999", "123456789012345678901234567890", '"media"',
            "[]", "{}", "NaN", "Infinity", '{"event":null}', '{"event":5}', '{"event":["media"]}',
            '{"event":"media"}', '{"event":"media","media":null}', '{"event":"media","media":[]}',
            '{"event":"start"}', '{"event":"start","start":{}}', '{"event":"mark"}', '{"event":"dtmf"}',
            '{"event":"MEDIA ","media":{"payload":"*"}}', '{"event":"connected","event":"media"}',
            '{"event":"media","media":{"payload":""},"media":{"payload":"**"}}', "\ufeff{}", " ", "",
            '{"event":"media","media":{"payload":"' + "\\u0000" * 100 + '"}}', '{"\\ud800":1}',
        ])

    def bad_payload(self) -> str:
        """A media message whose payload is not usable audio (never valid, non-empty base64 under the cap)."""
        r = self.rng
        good = base64.b64encode(r.randbytes(160)).decode()
        payload = r.choice([
            "*" * 40, good[:-1], good[:-2] + "*=", good + "=", "====",
            good.replace("A", "-").replace("+", "-") + "-",
            " " * 10, "\u00e9" * 20, base64.b64encode(r.randbytes(100_000)).decode(),  # far over 160 bytes
        ])
        message = json.loads(json.dumps(self.templates["media"]))
        message["media"]["payload"] = payload
        return json.dumps(message)

    def out_of_order(self, before_start: bool) -> str:
        r = self.rng
        choices = ["connected", "mark", "dtmf", "media"]
        if not before_start:
            choices.append("start")  # a second start
        name = r.choice(choices)
        message = json.loads(json.dumps(self.templates[name]))
        if name == "mark":
            message["mark"]["name"] = self.unicode(r.randrange(0, 30))
        if name == "start" and r.random() < 0.5:
            message["start"]["streamSid"] = message["streamSid"] = "MZ" + "0" * 32
            message["start"]["callSid"] = "CA" + "0" * 32
        return json.dumps(message)


async def healthy(bridge: RunningBridge) -> bool:
    async with httpx.AsyncClient(timeout=5.0) as client:
        return (await client.get(bridge.base_url + "/healthz")).status_code == 200


async def test_a_live_stream_survives_thousands_of_hostile_frames(nursery):
    agent = await start_agent(nursery)
    bridge = await start_bridge(nursery, speakr_ws_url=agent.url)
    garbage = Garbage(SEED)
    pre = [garbage.frame(before_start=True) for _ in range(PRE_START_FRAMES)]
    post = [garbage.frame(before_start=False) for _ in range(AUDIO_FRAMES * GARBAGE_PER_AUDIO_FRAME)]
    fields = len(garbage._fields)
    assert garbage._next_field >= fields  # every field of every event got a wrong value at least once
    audio = codec.ulaw_encode(speechlike(AUDIO_FRAMES * 0.02, 8000, seed=95))
    sent = bytearray()
    sequence = 100
    with trio.fail_after(LIMIT_S):
        async with trio_websocket.open_websocket_url(
            bridge.stream_url, max_message_size=16 * 1024 * 1024
        ) as ws:
            await ws.send_message(_twilio.connected_message())
            for frame in pre:
                await ws.send_message(frame)
            await ws.send_message(json.dumps(garbage.templates["start"]))
            session = await agent.wait_for_session(1)
            await session.wait_until(lambda: session.ready_wall_s is not None, "ready")
            for i in range(AUDIO_FRAMES):
                chunk = audio[i * 160 : (i + 1) * 160]
                sequence += 1
                await ws.send_message(
                    _twilio.media_event_message(
                        stream_sid=STREAM_SID, payload=chunk, chunk=i + 1, timestamp_ms=20 * i,
                        sequence_number=sequence,
                    )
                )
                sent += chunk
                for frame in post[i * GARBAGE_PER_AUDIO_FRAME : (i + 1) * GARBAGE_PER_AUDIO_FRAME]:
                    await ws.send_message(frame)
                # Pace on the agent: every whole 512-byte frame of real audio has arrived (no overload drop).
                await session.wait_audio_bytes(len(sent) * 2 // 512 * 512)
            stop = json.dumps(garbage.templates["stop"])
            await ws.send_message(stop)
            try:
                await ws.send_message(stop)  # stop twice
            except trio_websocket.ConnectionClosed:
                pass
        await session.closed.wait()
        await bridge.wait_idle()
        assert await healthy(bridge)
    expected = codec.ulaw_decode(bytes(sent))
    received = session.received_audio
    assert received[: len(expected)] == expected  # every real sample, once, in order
    assert len(received) - len(expected) < 512 and not any(received[len(expected) :])  # then end padding
    assert set(session.frame_sizes) == {512}
    assert session.close_code == 1000
    assert bridge.metric("bridge_calls_ended_total", {"reason": "twilio_stop"}) == 1
    assert bridge.metric("bridge_calls_ended_total", {"reason": "internal_error"}) == 0
    twilio_errors = sum(
        s.value
        for f in bridge.state.metrics.registry.collect()
        for s in f.samples
        if s.name == "bridge_protocol_errors_total" and s.labels.get("peer") == "twilio"
    )
    assert twilio_errors >= TOTAL_GARBAGE // 2
    print(f"fuzz: {TOTAL_GARBAGE} hostile frames ({garbage.kinds}), {fields} event fields mutated, "
          f"{twilio_errors:.0f} counted as protocol errors")

    # And the server takes a fresh call as if nothing happened.
    fresh_audio = speechlike(1.0, 8000, seed=96)
    with trio.fail_after(LIMIT_S):
        record = await TwilioCaller(
            stream_url=bridge.stream_url, audio=fresh_audio, speed=5.0, hangup_after_s=1.2
        ).run()
        fresh = await agent.wait_for_session(2)
        await fresh.closed.wait()
    assert record.outcome == "hung_up"
    assert fresh.received_audio[: len(record.sent_pcm)] == record.sent_pcm
