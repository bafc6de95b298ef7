"""The ``speakr-bridge`` command line: help, exit codes, and ``simulate``/``agent`` against real sockets.

Exit codes (bridge/cli.py): 0 ok, 1 the command ran and failed, 2 bad arguments or configuration. Commands
that start a Trio run of their own (``simulate``) are driven through :func:`bridge.cli.main` in a worker
thread while the test's own Trio run serves the bridge; ``--help`` and the ``agent`` process go through a
real ``python -m bridge`` subprocess.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import wave
from functools import partial
from pathlib import Path

import orjson
import pytest
import trio
import trio_websocket

from bridge._config import Config, Secret
from bridge._server import serve_in_process
from bridge._simulate import load_input, resolve_target, run_simulation
from bridge.app import create_app
from bridge.cli import main

ROOT = Path(__file__).resolve().parents[2]


def python_m_bridge(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=full_env,
        cwd=cwd,
    )


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No bridge variables from the developer's shell and no .env: each test sets what it means."""
    for name in list(os.environ):
        if name.startswith(("SPEAKR_", "TWILIO_", "BRIDGE_", "PUBLIC_URL", "LOG_FORMAT", "MAX_CONCURRENT")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --------------------------------------------------------------------------------------------------- help


@pytest.mark.parametrize(
    ("command", "needles"),
    [
        ((), ("serve", "doctor", "demo", "agent", "simulate")),
        (
            ("demo",),
            (
                "--input WAV",
                "--output WAV",
                "--agent-url URL",
                "--speed X",
                "--quiet",
                "loopback",
                "stereo WAV",
            ),
        ),
        (("agent",), ("--host", "--port", "Speakr-protocol", "SPEAKR_WS_URL")),
        (
            ("simulate",),
            (
                "URL",
                "--input WAV",
                "--calls N",
                "--output DIR",
                "--speed X",
                "--hangup-after S",
                "--auth-token",
                "/twilio/stream",
                "webhook",
            ),
        ),
        (("serve",), ("--host", "--port", "--workers")),
        (("doctor",), ("configuration",)),
    ],
)
def test_every_command_explains_itself_with_help(command: tuple[str, ...], needles: tuple[str, ...]) -> None:
    done = python_m_bridge(*command, "--help")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # argparse wraps lines
    for needle in needles:
        assert needle in text, (needle, done.stdout)


# ------------------------------------------------------------------------------------- bad arguments -> 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--speed", "0"], "--speed"),
        (["demo", "--speed", "fast"], "not a number"),
        (["demo", "--bogus"], "unrecognized arguments"),
        (["simulate"], "URL"),
        (["simulate", "ws://127.0.0.1:1/twilio/stream", "--calls", "0"], "--calls"),
        (["simulate", "ws://127.0.0.1:1/twilio/stream", "--hangup-after", "-1"], "--hangup-after"),
        (["agent", "--port", "70000"], "port must be 0-65535"),
        (["dance"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_naming_the_argument(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def write_wav(path: Path, *, rate: int = 8000, width: int = 2, channels: int = 1, frames: int = 800) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(bytes(frames * width * channels))
    return path


def test_bad_input_output_and_urls_exit_2_with_a_clear_message(
    clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tmp = clean_env
    cases = [
        (["demo", "--input", "missing.wav"], "cannot read missing.wav"),
        (["demo", "--input", str(write_wav(tmp / "a.wav", width=3))], "24-bit PCM; only 16-bit PCM"),
        (["demo", "--input", str(write_wav(tmp / "b.wav", rate=12345))], "12345 Hz"),
        (["demo", "--input", str(write_wav(tmp / "c.wav", frames=0))], "holds no audio"),
        (["demo", "--output", "no/such/dir/call.wav"], "does not exist"),
        (["demo", "--agent-url", "http://127.0.0.1:1/"], "--agent-url must be a ws://"),
        (["simulate", "ftp://127.0.0.1/"], "URL must be"),
        (["simulate", "ws://127.0.0.1:1/twilio/stream?x=1"], "query"),
        (["simulate", "ws://127.0.0.1:1/twilio/stream", "--input", "missing.wav"], "cannot read"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"speakr-bridge {argv[0]}: ") and message in err, (argv, err)
    assert not (tmp / "speakr-bridge-demo.wav").exists()


def test_bad_configuration_exits_2_naming_the_variable(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SPEAKR_THRESHOLD", "5")
    assert main(["demo", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "configuration error" in err and "SPEAKR_THRESHOLD" in err
    monkeypatch.delenv("SPEAKR_THRESHOLD")
    (clean_env / ".env").write_text("SPEAKR_SILENCE_DURATION_MS=soon\n")
    done = python_m_bridge("demo", "--quiet", cwd=clean_env, env={"PYTHONPATH": str(ROOT)})
    assert done.returncode == 2 and "SPEAKR_SILENCE_DURATION_MS" in done.stderr, done.stderr


def test_agent_that_cannot_listen_exits_1(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["agent", "--port", str(port)]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- agent


async def test_agent_command_serves_the_speakr_protocol_until_ctrl_c(clean_env: Path) -> None:
    with trio.fail_after(20):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "bridge", "agent", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            assert process.stdout is not None
            line = b""
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(1)
                assert chunk, "the agent exited before printing its URL"
                line += chunk
            url = line.decode().rsplit(" ", 1)[-1].strip()
            assert url.startswith("ws://127.0.0.1:")
            async with trio_websocket.open_websocket_url(url) as ws:
                assert orjson.loads(await ws.get_message()) == {"type": "initial"}
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 130
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


# ---------------------------------------------------------------------------------------------- simulate


def test_simulate_urls_map_to_the_webhook_or_the_stream() -> None:
    assert resolve_target("ws://h:1") == (None, "ws://h:1/twilio/stream")
    assert resolve_target("wss://h/twilio/stream") == (None, "wss://h/twilio/stream")
    assert resolve_target("http://h:8080") == ("http://h:8080/twilio/voice", None)
    assert resolve_target("https://h/twilio/voice") == ("https://h/twilio/voice", None)


async def test_simulate_three_concurrent_calls_against_a_running_bridge(
    clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = clean_env / "calls"
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            app = create_app(Config())  # the built-in local agent, no signatures
            base: str = await nursery.start(partial(serve_in_process, app))
            stream = base.replace("http://", "ws://") + "/twilio/stream"
            argv = [
                "simulate",
                stream,
                "--calls",
                "3",
                "--speed",
                "5",
                "--hangup-after",
                "3",
                "--output",
                str(out_dir),
            ]
            code = await trio.to_thread.run_sync(main, argv)
            nursery.cancel_scope.cancel()
    out = capsys.readouterr().out
    assert code == 0, out
    lines = [line for line in out.splitlines() if line.strip().split(" ", 1)[0] in ("1", "2", "3")]
    assert len(lines) == 3 and all(" hung_up " in line for line in lines), out
    assert "calls ok:                 3/3" in out and "first audio heard:        p50" in out
    assert "mark hold (arrival→echo): p50" in out
    wavs = sorted(out_dir.glob("call-*.wav"))
    assert len(wavs) == 3
    for path in wavs:
        with wave.open(str(path)) as wav:
            assert (wav.getnchannels(), wav.getframerate()) == (2, 8000)
            assert wav.getnframes() == pytest.approx(3 * 8000, abs=160)
    assert app.extensions["bridge"].metrics.registry.get_sample_value("bridge_calls_total") == 3


async def test_simulate_signs_the_webhook_and_a_refused_stream_exits_1(
    clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = "test-auth-token-0123456789"
    audio = load_input(None)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            app = create_app(Config(twilio_auth_token=Secret(token)))
            base: str = await nursery.start(partial(serve_in_process, app))
            # Through the signed webhook, as Twilio starts a call: the TwiML's token admits the stream.
            result = await run_simulation(
                base, audio=audio, calls=3, speed=5, hangup_after_s=2.0, auth_token=token
            )
            # Straight to the stream, unsigned and without the token: the bridge refuses it.
            stream = base.replace("http://", "ws://") + "/twilio/stream"
            argv = ["simulate", stream, "--speed", "5", "--hangup-after", "2"]
            code = await trio.to_thread.run_sync(main, argv)
            nursery.cancel_scope.cancel()
    assert result.ok, result.report()
    assert all(r.webhook_status == 200 and "bridge_token" in r.custom_parameters for r in result.records)
    assert len({c.call_sid for c in result.calls}) == 3
    out = capsys.readouterr().out
    assert code == 1, out
    assert "calls ok:                 0/1" in out and "simulate: 1 of 1 call(s) failed" in out
