"""End to end: what an operator sees (metrics, status callbacks, JSON logs) and what nobody may see (secrets).

In-process bridges on loopback for metrics and callbacks; real ``python -m bridge serve`` and
``python -m bridge doctor`` subprocesses for the JSON log format and the doctor, whose output is what an
operator's log shipper or terminal actually receives.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path

import httpx
import trio
from e2e_helpers import RunningBridge, speechlike, start_agent, start_bridge
from prometheus_client.parser import text_string_to_metric_families
from twilio.request_validator import RequestValidator

from bridge._config import Config, Secret
from bridge.emulators import TwilioCaller

SPEED = 5.0
LIMIT_S = 30
REPO = Path(__file__).resolve().parents[2]

SPEAKR_API_KEY = "sk-test-SECRET-1234"
TWILIO_AUTH_TOKEN = "tok-test-SECRET-5678"
BRIDGE_API_TOKEN = "bt-test-SECRET-9012"
SECRETS = (SPEAKR_API_KEY, TWILIO_AUTH_TOKEN, BRIDGE_API_TOKEN)
SECRET_CONFIG = {
    "speakr_api_key": Secret(SPEAKR_API_KEY),
    "twilio_auth_token": Secret(TWILIO_AUTH_TOKEN),
    "bridge_api_token": Secret(BRIDGE_API_TOKEN),
}
SECRET_ENV = {
    "SPEAKR_API_KEY": SPEAKR_API_KEY,
    "TWILIO_AUTH_TOKEN": TWILIO_AUTH_TOKEN,
    "BRIDGE_API_TOKEN": BRIDGE_API_TOKEN,
}
_OUR_VARIABLES = ("SPEAKR_", "TWILIO_", "BRIDGE_", "PUBLIC_URL", "MAX_CONCURRENT_CALLS", "LOG_FORMAT")


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{where} shows a secret"
        # Nor a recognisable piece of one (a prefix cut to a width, say).
        assert secret[-8:] not in text, f"{where} shows the end of a secret"


Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


async def scrape(bridge: RunningBridge) -> tuple[str, Samples, dict[str, str]]:
    """GET /metrics: the text, ``{sample name: {sorted labels: value}}`` and ``{family: type}``."""
    async with httpx.AsyncClient(timeout=5.0) as client:
        response = await client.get(bridge.base_url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    types = {}
    for family in text_string_to_metric_families(response.text):
        types[family.name] = family.type
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return response.text, samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OUR_VARIABLES)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def open_log(path: Path) -> int:
    """A file descriptor for a child's stdout and stderr (a local file: opening it is instant)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sign(url: str, form: dict[str, str], token: str = TWILIO_AUTH_TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, form)


# --- metrics ----------------------------------------------------------------------------------------


async def test_metrics_after_one_call_show_every_family_an_operator_needs(nursery):
    first = speechlike(1.0, 24000, seed=90)
    second = speechlike(0.5, 24000, seed=91)

    async def script(session):
        await session.send_media(first, chunk_bytes=4800, sequence_start=1)
        await session.wait_statuses(3)
        await session.pause()
        await trio.sleep(0.05)
        await session.clear()
        sent = await session.send_media(second, chunk_bytes=4800, sequence_start=100)
        await session.wait_until(lambda: any(s.sequence_id == sent[-1][1] for s in session.statuses))
        await session.end()

    agent = await start_agent(nursery, script)
    bridge = await start_bridge(nursery, speakr_ws_url=agent.url)
    audio = speechlike(3.0, 8000, seed=92)
    with trio.fail_after(LIMIT_S):
        record = await TwilioCaller(stream_url=bridge.stream_url, audio=audio, speed=SPEED).run()
        session = await agent.wait_for_session(1)
        await session.closed.wait()
        await bridge.wait_idle()
        text, samples, types = await scrape(bridge)
    assert record.outcome == "bridge_closed"
    assert value(samples, "bridge_calls_total") == 1
    assert value(samples, "bridge_calls_ended_total", reason="agent_end") == 1
    assert value(samples, "bridge_calls_active") == 0
    # Frames and bytes, each way, consistent with what the emulators saw.
    for direction in ("twilio_in", "speakr_out", "speakr_in", "twilio_out"):
        assert value(samples, "bridge_frames_total", direction=direction) > 0, direction
    twilio_in = value(samples, "bridge_frames_total", direction="twilio_in")
    assert twilio_in <= record.counters.frames_sent
    assert value(samples, "bridge_audio_bytes_total", direction="twilio_in") == 160 * twilio_in
    assert value(samples, "bridge_frames_total", direction="speakr_out") == len(session.frames)
    assert value(samples, "bridge_audio_bytes_total", direction="speakr_out") == 512 * len(session.frames)
    assert value(samples, "bridge_audio_bytes_total", direction="speakr_in") == len(first) + len(second)
    assert value(samples, "bridge_frames_total", direction="twilio_out") == record.counters.media_received
    twilio_out_bytes = value(samples, "bridge_audio_bytes_total", direction="twilio_out")
    assert twilio_out_bytes == record.counters.bytes_received
    # Latency histograms: every forwarded hop was timed; start -> ready once.
    assert types["bridge_hop_latency_seconds"] == "histogram"
    assert value(samples, "bridge_hop_latency_seconds_count", direction="uplink") == len(session.frames)
    assert value(samples, "bridge_hop_latency_seconds_count", direction="downlink") > 0
    inf_bucket = value(samples, "bridge_hop_latency_seconds_bucket", direction="uplink", le="+Inf")
    assert inf_bucket == len(session.frames)
    assert types["bridge_agent_ready_seconds"] == "histogram"
    assert value(samples, "bridge_agent_ready_seconds_count") == 1
    # Barge-in and marks.
    assert value(samples, "bridge_barge_in_events_total", event="pause") == 1
    assert value(samples, "bridge_barge_in_events_total", event="clear") == 1
    assert value(samples, "bridge_marks_total", outcome="played") > 0
    assert value(samples, "bridge_marks_total", outcome="cleared") > 0
    assert value(samples, "bridge_status_sent_total") == len(session.statuses)
    assert types["bridge_calls_active"] == "gauge"


async def test_status_callbacks_are_answered_204_and_counted_by_status(nursery):
    agent = await start_agent(nursery)
    bridge = await start_bridge(nursery, speakr_ws_url=agent.url, twilio_auth_token=Secret(TWILIO_AUTH_TOKEN))
    url = bridge.base_url + "/twilio/status"
    base = {"CallSid": "CA" + "9" * 32, "AccountSid": "AC" + "9" * 32}
    forms = [
        {**base, "CallStatus": "ringing"},
        {**base, "CallStatus": "in-progress"},
        {**base, "CallStatus": "completed"},
        {**base, "StreamSid": "MZ" + "9" * 32, "StreamEvent": "stream-started"},
        {**base, "StreamSid": "MZ" + "9" * 32, "StreamEvent": "stream-stopped"},
        {**base, "StreamSid": "MZ" + "9" * 32, "StreamEvent": "stream-error", "StreamError": "boom"},
        {**base, "CallStatus": "completed"},
    ]
    hostile = {**base, "CallStatus": 'x"} evil_label{a="b' + "z" * 300}
    with trio.fail_after(LIMIT_S):
        async with httpx.AsyncClient(timeout=5.0) as client:
            answers = [
                (await client.post(url, data=f, headers={"X-Twilio-Signature": sign(url, f)})).status_code
                for f in forms
            ]
            odd = await client.post(url, data=hostile, headers={"X-Twilio-Signature": sign(url, hostile)})
            unsigned = await client.post(url, data=forms[0])
            wrong = await client.post(
                url, data=forms[0], headers={"X-Twilio-Signature": sign(url, forms[0], "nope")}
            )
        text, samples, _ = await scrape(bridge)
    assert answers == [204] * len(forms)
    assert odd.status_code == 204
    assert (unsigned.status_code, wrong.status_code) == (403, 403)
    counted = samples.get("bridge_status_callbacks_total", {})
    assert value(samples, "bridge_status_callbacks_total", status="ringing") == 1
    assert value(samples, "bridge_status_callbacks_total", status="in-progress") == 1
    assert value(samples, "bridge_status_callbacks_total", status="completed") == 2
    assert value(samples, "bridge_status_callbacks_total", status="stream-started") == 1
    assert value(samples, "bridge_status_callbacks_total", status="stream-stopped") == 1
    assert value(samples, "bridge_status_callbacks_total", status="stream-error") == 1
    # The hostile one is counted under a fixed label; the refused ones are not counted at all.
    assert sum(counted.values()) == len(forms) + 1
    assert "evil_label" not in text and "zzzzzzzz" not in text


# --- logs -------------------------------------------------------------------------------------------


async def test_json_log_format_gives_one_object_per_line_with_call_ids_and_no_secret(nursery, tmp_path):
    agent = await start_agent(nursery)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    env = clean_env({**SECRET_ENV, "SPEAKR_WS_URL": agent.url, "LOG_FORMAT": "json"})
    log_fd = open_log(log_path)
    try:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "bridge", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env, cwd=tmp_path, stdout=log_fd, stderr=log_fd,
        )
    finally:
        os.close(log_fd)
    try:
        with trio.fail_after(LIMIT_S):
            async with httpx.AsyncClient(timeout=2.0) as client:
                while True:
                    assert process.returncode is None, log_path.read_text()
                    try:
                        if (await client.get(base + "/healthz")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    await trio.sleep(0.05)
                # A failure path that logs: a forged webhook.
                forged = await client.post(base + "/twilio/voice", data={"CallSid": "CA" + "0" * 32},
                                           headers={"X-Twilio-Signature": "forged"})
            assert forged.status_code == 403
            audio = speechlike(1.0, 8000, seed=93)
            record = await TwilioCaller(
                webhook_url=base + "/twilio/voice", auth_token=TWILIO_AUTH_TOKEN, audio=audio, speed=SPEED,
                hangup_after_s=1.2,
            ).run()
            session = await agent.wait_for_session(1)
            await session.closed.wait()
            assert session.api_key == SPEAKR_API_KEY  # the agent, and only the agent, gets the key
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await process.wait()
    assert record.outcome == "hung_up", record.error
    text = log_path.read_text()
    assert_no_secret(text, "the JSON log")
    lines = [line for line in text.splitlines() if line.strip()]
    entries = []
    for line in lines:
        entry = json.loads(line)  # every line is one JSON object, nothing else
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= set(entry), line
        entries.append(entry)
    call_lines = [e for e in entries if e["logger"] == "bridge.call"]
    assert call_lines
    ours = [e for e in call_lines if e.get("call_sid") == record.call_sid]
    assert len(ours) >= 3
    for entry in ours:
        assert entry["stream_sid"] == record.stream_sid
        assert entry["session_id"] == session.start_params["sessionId"]
    assert any(e["level"] == "warning" and "ignature" in e["message"] for e in entries)


async def test_no_secret_in_logs_metrics_or_reprs_even_on_failure_paths(nursery, caplog):
    good_agent = await start_agent(nursery)
    refusing_agent = await start_agent(nursery, reject_status=401)

    async def bad_key(session):
        await session.info({"code": "invalid_api_key", "message": "Invalid API key"})
        await session.close(4001, "invalid api key")

    info_agent = await start_agent(nursery, bad_key, send_initial=False, send_ready=False)
    bridges = [
        await start_bridge(nursery, speakr_ws_url=agent.url, **SECRET_CONFIG)
        for agent in (good_agent, refusing_agent, info_agent)
    ]
    caplog.set_level(logging.DEBUG, logger="bridge")
    audio = speechlike(1.0, 8000, seed=94)
    with trio.fail_after(LIMIT_S):
        async with httpx.AsyncClient(timeout=5.0) as client:
            for bridge in bridges:
                form = {"CallSid": "CA" + "5" * 32, "From": "+15005550006"}
                bad = await client.post(bridge.voice_url, data=form, headers={"X-Twilio-Signature": "forged"})
                assert bad.status_code == 403
                bad_status = await client.post(bridge.base_url + "/twilio/status", data=form)
                assert bad_status.status_code == 403
                refused = await client.post(bridge.base_url + "/calls", json={"to": "+15005550006"})
                assert refused.status_code in (401, 403, 404)
        records = []
        for bridge in bridges:
            records.append(
                await TwilioCaller(
                    webhook_url=bridge.voice_url, auth_token=TWILIO_AUTH_TOKEN, audio=audio, speed=SPEED,
                    hangup_after_s=1.2,
                ).run()
            )
            # An upgrade signed with the wrong token.
            await TwilioCaller(
                stream_url=bridge.stream_url, auth_token="wrong", speed=SPEED, hangup_after_s=0.5
            ).run()
            await bridge.wait_idle()
    assert [r.outcome for r in records] == ["hung_up", "bridge_closed", "bridge_closed"]
    assert good_agent.sessions[0].api_key == SPEAKR_API_KEY
    assert caplog.records, "nothing was logged: the check below would prove nothing"
    assert_no_secret(caplog.text, "the log")
    for record in caplog.records:
        assert_no_secret(record.getMessage(), f"log line {record.name}")
        assert_no_secret(repr(record.args), f"log args {record.name}")
    for bridge in bridges:
        text, _, _ = await scrape(bridge)
        assert_no_secret(text, "/metrics")
        state = bridge.state
        assert_no_secret(repr(state), "repr(state)")
        assert_no_secret(str(state.config) + repr(state.config), "repr(config)")
        assert_no_secret(repr(state.config.redacted()), "config.redacted()")
        for name in ("tokens", "validator", "metrics"):
            assert_no_secret(repr(getattr(state, name, None)), f"repr(state.{name})")
    assert_no_secret(repr(Config(**SECRET_CONFIG)), "repr(Config)")


async def test_doctor_output_never_shows_a_secret(nursery, tmp_path):
    refusing_agent = await start_agent(nursery, reject_status=401)
    unreachable = f"ws://127.0.0.1:{free_port()}/speakr"
    outputs = []
    with trio.fail_after(LIMIT_S):
        for url in (unreachable, refusing_agent.url + "?api_key=" + SPEAKR_API_KEY):
            result = await trio.run_process(
                [sys.executable, "-m", "bridge", "doctor"],
                env=clean_env({**SECRET_ENV, "SPEAKR_WS_URL": url}), cwd=tmp_path,
                capture_stdout=True, capture_stderr=True, check=False,
            )
            outputs.append((result.returncode, (result.stdout + result.stderr).decode(errors="replace")))
    for returncode, output in outputs:
        assert returncode == 1, output  # the agent check failed, and said so
        assert "agent" in output
        assert_no_secret(output, "doctor's output")
