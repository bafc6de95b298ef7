"""The two emulators behave like the peers they stand for.

The phone model is tested pure (examples and a property against a reference timeline); the agent server
against a plain trio-websocket client written here; the Twilio caller against a minimal trio-websocket server
(and a tiny HTTP server for the webhook) written here. Everything on 127.0.0.1, port 0, bounded by
``fail_after``.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import hypothesis.strategies as st
import pytest
import trio
import trio_websocket
from hypothesis import given, settings
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]

import codec
from bridge.emulators import (
    AgentSession,
    PhonePlayback,
    SpeakrAgentServer,
    TwilioCaller,
)

# ---------------------------------------------------------------------------------------------- phone model

SPAN = 160


def test_phone_plays_queued_audio_from_the_next_span_then_silence() -> None:
    phone = PhonePlayback()
    phone.enqueue_media(b"\x01" * 200)
    assert phone.tick(SPAN) == (b"\x01" * 160, [])
    assert phone.tick(SPAN) == (b"\x01" * 40 + b"\xff" * 120, [])
    assert phone.tick(SPAN) == (b"\xff" * 160, [])
    assert phone.played_audio_samples == 200 and phone.idle


def test_phone_marks_come_back_in_order_once_their_audio_has_played() -> None:
    phone = PhonePlayback()
    phone.enqueue_media(b"\x01" * 400)  # ends at 50 ms, inside span 2 (40-60 ms)
    assert phone.enqueue_mark("a") == []
    phone.enqueue_media(b"\x02" * 100)  # ends at 62.5 ms, inside span 3
    assert phone.enqueue_mark("b") == []
    due = [phone.tick(SPAN)[1] for _ in range(5)]
    # "a" comes back at the start of span 3 (60 ms), when its audio has finished; "b" at 80 ms.
    assert due == [[], [], [], ["a"], ["b"]]


def test_phone_mark_with_nothing_queued_comes_back_at_once() -> None:
    phone = PhonePlayback()
    assert phone.enqueue_mark("now") == ["now"]
    phone.enqueue_media(b"\x01" * 80)
    phone.tick(SPAN)
    # The span playing now carries audio: a mark behind it is due when the span ends, not at once.
    assert phone.enqueue_mark("after-span") == []
    assert phone.tick(SPAN)[1] == ["after-span"]
    assert phone.enqueue_mark("idle") == ["idle"]


def test_phone_clear_drops_audio_and_returns_every_pending_mark_at_once() -> None:
    phone = PhonePlayback()
    phone.enqueue_media(b"\x01" * 300)
    phone.enqueue_mark("m1")
    phone.enqueue_media(b"\x02" * 8000)
    phone.enqueue_mark("m2")
    phone.tick(SPAN)
    phone.tick(SPAN)  # m1's audio ends in this span: in flight
    assert phone.clear() == ["m1", "m2"]
    assert phone.tick(SPAN) == (b"\xff" * 160, [])
    assert phone.cleared_samples == 8000 - 20
    assert phone.enqueue_mark("m3") == ["m3"]


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("media"), st.integers(1, 500)),
        st.tuples(st.just("mark"), st.just(0)),
        st.tuples(st.just("tick"), st.just(0)),
        st.tuples(st.just("clear"), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(_ops)
def test_phone_matches_a_reference_timeline(ops: list[tuple[str, int]]) -> None:
    """Property: audio plays from the first span after it is queued, in order, time-aligned; a mark comes back
    exactly at the first span boundary at or after its audio's end (at once if that is past), or at a
    clear."""
    phone = PhonePlayback()
    handed = 0  # samples handed to the speaker so far (end of the span playing now)
    queued_end = 0  # timeline position where queued audio ends
    writes: list[tuple[int, bytes]] = []  # (position, audio) as the reference expects it played
    expected_due: dict[str, int] = {}  # mark -> tick index when due
    out = bytearray()
    got_due: dict[str, int] = {}
    immediate: set[str] = set()
    order_sent: list[str] = []
    order_back: list[str] = []
    ticks = 0
    for n, (op, size) in enumerate(ops):
        span_start = max(0, handed - SPAN)
        if op == "media":
            audio = bytes([n % 200 + 1]) * size
            start = max(queued_end, handed)
            writes.append((start, audio))
            queued_end = start + size
            phone.enqueue_media(audio)
        elif op == "mark":
            name = f"m{n}"
            order_sent.append(name)
            end = max(queued_end, span_start)
            back = phone.enqueue_mark(name)
            if end <= span_start:
                assert back == [name]
                immediate.add(name)
                order_back.append(name)
            else:
                assert back == []
                expected_due[name] = math.ceil(end / SPAN)
        elif op == "tick":
            played, due = phone.tick(SPAN)
            out += played
            for name in due:
                got_due[name] = ticks
                order_back.append(name)
            ticks += 1
            handed += SPAN
        else:
            released = phone.clear()
            for name in released:
                got_due[name] = -1  # cleared
                order_back.append(name)
            # Audio not yet handed to the speaker never plays.
            writes = [(p, a[: max(0, handed - p)]) for p, a in writes]
            queued_end = span_start
    timeline = bytearray(b"\xff" * len(out))
    for position, audio in writes:
        piece = audio[: max(0, len(out) - position)]
        timeline[position : position + len(piece)] = piece
    assert bytes(out) == bytes(timeline)
    assert order_back == order_sent[: len(order_back)]
    for name, tick in got_due.items():
        if tick >= 0:
            assert tick == expected_due[name], name


# ---------------------------------------------------------------------------------------------- agent server


async def _start_agent(nursery: trio.Nursery, server: SpeakrAgentServer) -> SpeakrAgentServer:
    started: SpeakrAgentServer = await nursery.start(server.serve)
    return started


def _decode_media(text: str | bytes) -> tuple[dict[str, Any], bytes]:
    msg = json.loads(text)
    assert msg["type"] == "media"
    raw = base64.b64decode(msg["msg"], validate=True)
    metadata, _, pcm = raw.partition(b"\x00")
    return json.loads(metadata), pcm


async def test_agent_speaks_the_speakr_protocol_and_records_the_bridge() -> None:
    speech = bytes(range(256)) * 3 + b"\x07" * 233  # 1001 bytes: odd, split at odd sizes

    async def script(session: AgentSession) -> None:
        await session.wait_audio_bytes(1024)
        await session.send_media(speech, chunk_bytes=[333, 500])
        await session.wait_statuses(3)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await _start_agent(nursery, SpeakrAgentServer(script))
            assert server.url.startswith("ws://127.0.0.1:") and server.url.endswith("/speakr")
            async with trio_websocket.open_websocket_url(server.url + "?api_key=s3cret&x=1") as ws:
                assert json.loads(await ws.get_message()) == {"type": "initial"}
                start = {"voice_id": "jill", "sessionId": "sess-1", "temperature": 0.7}
                await ws.send_message(json.dumps({"type": "start", "msg": json.dumps(start)}))
                assert json.loads(await ws.get_message()) == {"type": "ready"}
                caller_audio = bytes(range(256)) * 4
                await ws.send_message(caller_audio[:512])
                await ws.send_message(caller_audio[512:])
                pieces = [_decode_media(await ws.get_message()) for _ in range(3)]
                for metadata, _ in pieces:
                    await ws.send_message(json.dumps({"type": "status", "msg": metadata}))
                session = await server.wait_for_session(1)
                await session.wait_statuses(3)
            with trio.fail_after(2):
                await session.closed.wait()
            nursery.cancel_scope.cancel()

    assert [len(pcm) for _, pcm in pieces] == [333, 500, 168]
    assert b"".join(pcm for _, pcm in pieces) == speech
    assert [(m["session_id"], m["sequence_id"]) for m, _ in pieces] == [
        ("sess-1", 1),
        ("sess-1", 2),
        ("sess-1", 3),
    ]
    assert session.path == "/speakr" and session.api_key == "s3cret" and session.query["x"] == "1"
    assert "s3cret" not in repr(session)
    assert session.start_params == start
    assert session.frame_sizes == [512, 512] and session.received_audio == caller_audio
    assert session.frames_before_ready == 0
    assert [(s.session_id, s.sequence_id) for s in session.statuses] == [
        ("sess-1", 1),
        ("sess-1", 2),
        ("sess-1", 3),
    ]
    assert [m.size for m in session.sent_media] == [333, 500, 168]
    assert session.closed_by == "peer" and session.close_code == 1000
    assert session.protocol_error_count == 0 and session.errors == []


async def test_agent_server_survives_garbage_resets_and_failing_scripts() -> None:
    async def script(session: AgentSession) -> None:
        if session.index == 1:
            raise RuntimeError("script bug")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await _start_agent(nursery, SpeakrAgentServer(script, send_ready=False))
            # 1: garbage frames, then a TCP reset with no close frame.
            async with trio_websocket.open_websocket_url(server.url) as ws:
                await ws.get_message()
                for junk in ("not json", "[1,2]", '{"type":"bogus"}', '{"type":"status","msg":{}}'):
                    await ws.send_message(junk)
                first = await server.wait_for_session(1)
                await first.wait_until(lambda: first.protocol_error_count == 4)
                stream = ws._stream
                assert isinstance(stream, trio.SocketStream)
                stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                await stream.aclose()
            # 2: not even HTTP.
            raw = await trio.open_tcp_stream("127.0.0.1", server.port)
            await raw.send_all(b"\x16\x03\x01 garbage\r\n\r\n")
            await raw.receive_some(1024)
            await raw.aclose()
            # 3: the script raises: the session closes 1011, the server stays up.
            async with trio_websocket.open_websocket_url(server.url) as ws:
                await ws.get_message()
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    await ws.get_message()
                assert closed.value.reason is not None and closed.value.reason.code == 1011
            # 4: the server still serves.
            async with trio_websocket.open_websocket_url(server.url) as ws:
                assert json.loads(await ws.get_message()) == {"type": "initial"}
            nursery.cancel_scope.cancel()

    assert len(server.sessions) == 3
    assert first.protocol_errors == {"bad_json": 1, "not_object": 1, "unknown_event": 1, "missing_field": 1}
    assert first.closed.is_set() and first.close_code == 1006
    assert (
        server.sessions[1].errors == ["RuntimeError('script bug')"] and server.sessions[1].close_code == 1011
    )


async def test_agent_faults_no_initial_bad_key_slow_ready_and_rejected_upgrade() -> None:
    async def bad_key(session: AgentSession) -> None:
        await session.info({"error": "invalid api key"})
        await session.close(4001, "unauthorized")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            silent = await _start_agent(nursery, SpeakrAgentServer(send_initial=False))
            async with trio_websocket.open_websocket_url(silent.url) as ws:
                with trio.move_on_after(0.2) as waited:
                    await ws.get_message()
                assert waited.cancelled_caught
            refusing = await _start_agent(
                nursery, SpeakrAgentServer(bad_key, send_initial=False, send_ready=False)
            )
            async with trio_websocket.open_websocket_url(refusing.url) as ws:
                assert json.loads(await ws.get_message()) == {
                    "type": "info",
                    "msg": {"error": "invalid api key"},
                }
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    await ws.get_message()
                reason = closed.value.reason
                assert reason is not None and (reason.code, reason.reason) == (4001, "unauthorized")
            slow = await _start_agent(nursery, SpeakrAgentServer(ready_delay_s=0.2))
            async with trio_websocket.open_websocket_url(slow.url) as ws:
                await ws.get_message()
                await ws.send_message(json.dumps({"type": "start", "msg": "{}"}))
                sent_start = trio.current_time()
                assert json.loads(await ws.get_message()) == {"type": "ready"}
                assert trio.current_time() - sent_start >= 0.2
            rejecting = await _start_agent(nursery, SpeakrAgentServer(reject_status=401))
            with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
                async with trio_websocket.open_websocket_url(rejecting.url):
                    pass
            assert rejected.value.status_code == 401
            nursery.cancel_scope.cancel()
    assert refusing.sessions[0].closed_by == "agent" and refusing.sessions[0].close_code == 4001


# ---------------------------------------------------------------------------------------------- Twilio caller

Handler = Callable[[trio_websocket.WebSocketRequest], Awaitable[None]]


async def _serve_ws(nursery: trio.Nursery, handler: Handler) -> str:
    server: trio_websocket.WebSocketServer = await nursery.start(
        trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None
    )
    return f"ws://127.0.0.1:{server.port}/twilio/stream"


class _Recorder:
    """A minimal bridge side: records every frame with its arrival time, and how the socket ended."""

    def __init__(self) -> None:
        self.frames: list[tuple[float, str | bytes]] = []
        self.close: trio_websocket.CloseReason | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.done = trio.Event()

    async def handler(self, request: trio_websocket.WebSocketRequest) -> None:
        self.headers = request.headers
        ws = await request.accept()
        try:
            while True:
                frame = await ws.get_message()
                self.frames.append((trio.current_time(), frame))
        except trio_websocket.ConnectionClosed as exc:
            self.close = exc.reason
        finally:
            self.done.set()

    def json(self) -> list[dict[str, Any]]:
        return [json.loads(f) for _, f in self.frames if isinstance(f, str) and f.startswith("{")]


def _tone(seconds: float) -> bytes:
    n = int(8000 * seconds)
    return b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / 8000))) for i in range(n))


async def test_caller_sends_connected_start_and_paced_media_like_twilio() -> None:
    recorder = _Recorder()
    audio = _tone(1.0)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await _serve_ws(nursery, recorder.handler)
            caller = TwilioCaller(
                stream_url=url,
                audio=audio,
                speed=20,
                hangup_after_s=1.0,
                custom_parameters={"voice_id": "jill"},
            )
            record = await caller.run()
            await recorder.done.wait()
            nursery.cancel_scope.cancel()

    msgs = recorder.json()
    assert msgs[0] == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    start = msgs[1]
    assert start["event"] == "start" and start["sequenceNumber"] == "1"
    assert start["start"]["customParameters"] == {"voice_id": "jill"}
    assert start["streamSid"] == record.stream_sid and record.stream_sid.startswith("MZ")
    assert (
        len(record.call_sid) == 34
        and record.call_sid.startswith("CA")
        and record.account_sid.startswith("AC")
    )
    media = msgs[2:-1]
    assert len(media) == 50 and all(m["event"] == "media" for m in media)
    assert [m["media"]["chunk"] for m in media] == [str(i) for i in range(1, 51)]
    assert [m["media"]["timestamp"] for m in media] == [str(20 * i) for i in range(50)]
    assert [int(m["sequenceNumber"]) for m in msgs[1:]] == list(range(1, 53))
    payload = b"".join(base64.b64decode(m["media"]["payload"]) for m in media)
    assert payload == codec.ulaw_encode(audio) and record.sent_pcm == codec.ulaw_decode(payload)
    assert msgs[-1]["event"] == "stop" and msgs[-1]["stop"]["callSid"] == record.call_sid
    assert recorder.close is not None and recorder.close.code == 1000
    assert record.outcome == "hung_up" and record.closed_by == "caller"
    # Pacing: 1 s of phone time at speed 20 is 50 ms of wall time, and no frame leaves before its deadline.
    # (The test server shares the caller's trio clock: arrivals are measured from the caller's phone time 0.)
    assert record.start_wall_s is not None
    arrivals = [t - record.start_wall_s for t, f in recorder.frames[2:-1]]
    assert 0.05 <= arrivals[-1] <= 0.5
    assert all(t >= (i + 1) * 0.001 for i, t in enumerate(arrivals))
    assert record.counters.frames_sent == 50 and record.duration_s == pytest.approx(1.0)


async def test_caller_echoes_marks_after_playback_and_at_once_on_clear() -> None:
    speed = 4.0

    async def bridge(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.get_message()  # connected
        start = json.loads(await ws.get_message())
        sid = start["streamSid"]

        async def next_echo() -> str:
            while True:
                msg = json.loads(await ws.get_message())
                if msg["event"] == "mark":
                    return str(msg["mark"]["name"])

        def media(byte: int, n: int) -> str:
            payload = base64.b64encode(bytes([byte]) * n).decode()
            return json.dumps({"event": "media", "streamSid": sid, "media": {"payload": payload}})

        def mark(name: str) -> str:
            return json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": name}})

        await ws.send_message(media(0x10, 800))  # 100 ms of phone audio
        await ws.send_message(mark("m1"))
        assert await next_echo() == "m1"
        await ws.send_message(media(0x20, 8000))  # 1 s, then cleared at once
        await ws.send_message(mark("m2"))
        await ws.send_message(json.dumps({"event": "clear", "streamSid": sid}))
        assert await next_echo() == "m2"
        await ws.send_message(mark("m3"))  # nothing queued: at once
        assert await next_echo() == "m3"
        await ws.send_message(json.dumps({"event": "clear", "streamSid": "MZwrong"}))
        await ws.send_message(b"\x00binary")
        await ws.aclose(4000, "bye")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await _serve_ws(nursery, bridge)
            record = await TwilioCaller(stream_url=url, speed=speed).run()
            nursery.cancel_scope.cancel()

    # Phone times from the caller's own record; a tick that woke L late may shift them by L * speed.
    slack = record.max_tick_lateness_s * speed + 1e-6
    media_at = [e.phone_s for e in record.events_of("media_received")]
    clear_at = record.events_of("clear_received")[0].phone_s
    echo_at = [e.phone_s for e in record.events_of("mark_echoed")]
    assert 0.1 - slack <= echo_at[0] - media_at[0] <= 0.1 + 0.02 + 0.5  # after its 100 ms played, not before
    assert echo_at[1] - clear_at <= 0.1  # a cleared mark comes back at once, not after its 1 s of audio
    assert record.outcome == "bridge_closed" and (record.close_code, record.close_reason) == (4000, "bye")
    c = record.counters
    assert (c.media_received, c.marks_received, c.marks_echoed, c.clears_received) == (2, 3, 3, 1)
    assert record.protocol_error_kinds == {"wrong_stream_sid": 1, "binary_frame": 1}
    assert [e.detail for e in record.events_of("mark_echoed")] == ["m1", "m2", "m3"]
    # Heard audio is time-aligned on the phone clock: the 100 ms play from the span after they arrived.
    heard = bytes(record.heard_ulaw)
    first = heard.index(0x10)
    assert heard.count(0x10) == 800 and heard[first : first + 800] == b"\x10" * 800
    assert record.first_audio_heard_s == pytest.approx(first / 8000)
    # From the first span boundary after they arrived (a late tick: up to its lateness earlier).
    assert media_at[0] * 8000 - slack * 8000 <= first <= media_at[0] * 8000 + 160 + 1e-3
    assert heard.count(0x20) < 8000  # most of the cleared second never played
    assert len(record.heard_pcm) == 2 * len(heard)


async def _serve_http(
    nursery: trio.Nursery, answer: Callable[[str, dict[str, str], dict[str, str]], str]
) -> str:
    """A tiny HTTP/1.1 server: one request per connection; ``answer(path, headers, form)`` gives the TwiML."""

    async def handle(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        while len(body) < int(headers.get("content-length", "0")):
            body += await stream.receive_some(65536)
        twiml = answer(lines[0].split()[1], headers, dict(parse_qsl(body.decode()))).encode()
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (len(twiml), twiml)
        )
        await stream.aclose()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/twilio/voice"


async def test_caller_does_the_signed_webhook_then_streams_with_its_parameters() -> None:
    token = "test-auth-token"
    recorder = _Recorder()
    seen: dict[str, Any] = {}
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            ws_url = await _serve_ws(nursery, recorder.handler)
            http_url = ""

            def answer(path: str, headers: dict[str, str], form: dict[str, str]) -> str:
                seen.update(
                    form=form,
                    signature_ok=RequestValidator(token).validate(
                        http_url, form, headers.get("x-twilio-signature", "")
                    ),
                )
                return (
                    '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
                    f'<Stream url="{ws_url}"><Parameter name="bridge_token" value="tok-123"/></Stream>'
                    "</Connect><Say>Sorry, goodbye.</Say></Response>"
                )

            http_url = await _serve_http(nursery, answer)
            caller = TwilioCaller(
                webhook_url=http_url,
                auth_token=token,
                speed=20,
                hangup_after_s=0.1,
                custom_parameters={"x": "1"},
            )
            record = await caller.run()
            await recorder.done.wait()
            nursery.cancel_scope.cancel()

    assert seen["signature_ok"] is True
    form = seen["form"]
    assert form["CallSid"] == record.call_sid and form["AccountSid"] == record.account_sid
    assert (form["CallStatus"], form["Direction"], form["ApiVersion"]) == ("ringing", "inbound", "2010-04-01")
    start = recorder.json()[1]
    assert start["start"]["customParameters"] == {"bridge_token": "tok-123", "x": "1"}
    upgrade_sig = dict(recorder.headers)[b"x-twilio-signature"].decode()
    assert upgrade_sig == RequestValidator(token).compute_signature(ws_url, {})
    assert record.outcome == "hung_up" and record.webhook_status == 200 and token not in repr(caller)


async def test_caller_reports_a_busy_answer_and_does_not_connect() -> None:
    recorder = _Recorder()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await _serve_ws(nursery, recorder.handler)
            http_url = await _serve_http(nursery, lambda *_: '<Response><Reject reason="busy"/></Response>')
            record = await TwilioCaller(webhook_url=http_url, hangup_after_s=0.1).run()
            nursery.cancel_scope.cancel()
    assert record.outcome == "no_stream" and not record.connected and recorder.frames == []
    assert record.twiml is not None and "busy" in record.twiml


async def test_caller_faults_reach_the_bridge_as_sent() -> None:
    recorder = _Recorder()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await _serve_ws(nursery, recorder.handler)
            caller = TwilioCaller(
                stream_url=url,
                speed=10,
                media_before_start=2,
                double_start=True,
                injections=[(0.04, b"\x00\x01"), (0.02, "not json")],
                drop_after_s=0.1,
            )
            record = await caller.run()
            await recorder.done.wait()
            nursery.cancel_scope.cancel()

    texts = [f for _, f in recorder.frames]
    events = [json.loads(f)["event"] if isinstance(f, str) and f.startswith("{") else f for f in texts]
    assert events[:5] == ["connected", "media", "media", "start", "start"]
    assert events.index("not json") < events.index(b"\x00\x01")
    assert "stop" not in events
    assert recorder.close is not None and recorder.close.code == 1006  # no close frame: abnormal closure
    assert record.outcome == "dropped" and record.counters.injections_sent == 2


async def test_caller_reports_a_rejected_upgrade() -> None:
    async def refuse(request: trio_websocket.WebSocketRequest) -> None:
        await request.reject(403)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await _serve_ws(nursery, refuse)
            record = await TwilioCaller(stream_url=url, hangup_after_s=0.1).run()
            nursery.cancel_scope.cancel()
    assert (record.outcome, record.rejected_status) == ("connect_failed", 403)
