"""The ``speakr-bridge`` command line (also ``python -m bridge``).

Exit codes: 0 success, 1 the command ran and failed (an unhealthy demo call, a
failed check), 2 bad arguments or bad configuration (the message names the
argument or the variable).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from functools import partial

from bridge import __version__
from bridge._errors import ConfigError

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C

Command = Callable[[argparse.Namespace], int]


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {value}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _speed(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 50:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 50, got {text}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= 540:
        raise argparse.ArgumentTypeError(f"must be between 0 and 540 seconds, got {text}")
    return value


def _usage_error(command: str, exc: Exception) -> int:
    print(f"speakr-bridge {command}: {exc}", file=sys.stderr)
    return EXIT_USAGE


def _cmd_serve(args: argparse.Namespace) -> int:
    from bridge._serve import serve_command
    from bridge._server import raise_fd_limit

    raise_fd_limit()
    return serve_command(host=args.host, port=args.port, workers=args.workers)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from bridge._doctor import doctor_command

    return doctor_command()


def _cmd_demo(args: argparse.Namespace) -> int:
    from bridge._config import load_config
    from bridge._demo import demo_command
    from bridge._simulate import UsageError

    config = load_config()  # a bad .env is reported here, as serve would (exit 2)
    try:
        return demo_command(
            input_path=args.input,
            output_path=args.output,
            agent_url=args.agent_url,
            agent=args.agent,
            speed=args.speed,
            quiet=args.quiet,
            env_config=config,
        )
    except UsageError as exc:
        return _usage_error("demo", exc)


def _cmd_agent(args: argparse.Namespace) -> int:
    import signal

    import trio

    from bridge._config import load_config
    from bridge._logging import configure_logging
    from bridge.agents.speakr._local_agent import run_agent

    configure_logging(load_config().log_format)  # the agent's INFO lines show each session's turns

    async def until_interrupted() -> None:
        # Ctrl-C through a signal receiver, not Trio's KeyboardInterrupt: delivered as KI, it could wait for
        # ever while the main task sat in the agent's nursery (seen: about one SIGINT in fifteen hung).
        with trio.open_signal_receiver(signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(run_agent, args.host, args.port))
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break
        raise KeyboardInterrupt  # the command's exit status says Ctrl-C (130)

    failure: BaseException | None = None
    try:
        trio.run(until_interrupted)
    except* OSError as group:  # binding the port fails inside the agent's nursery
        failure = group
        while isinstance(failure, BaseExceptionGroup):
            failure = failure.exceptions[0]
    if failure is not None:
        reason = failure.strerror if isinstance(failure, OSError) and failure.strerror else failure
        print(f"speakr-bridge agent: cannot listen on {args.host}:{args.port}: {reason}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _cmd_simulate(args: argparse.Namespace) -> int:
    from bridge._simulate import MAX_CALLS, UsageError, simulate_command

    if args.calls > MAX_CALLS:
        return _usage_error("simulate", ValueError(f"--calls must be at most {MAX_CALLS}, got {args.calls}"))
    try:
        return simulate_command(
            args.url,
            input_path=args.input,
            calls=args.calls,
            output_dir=args.output,
            speed=args.speed,
            hangup_after_s=args.hangup_after,
            auth_token=args.auth_token,
            out=sys.stdout,
            err=sys.stderr,
        )
    except UsageError as exc:
        return _usage_error("simulate", exc)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speakr-bridge",
        description="Bridge Twilio phone calls to a Speakr voice agent.",
    )
    parser.add_argument("--version", action="version", version=f"speakr-bridge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the bridge server (Hypercorn, trio worker)",
        description="Run the ASGI app under Hypercorn's trio worker; same as "
        "hypercorn --worker-class trio 'bridge.app:create_app()'. Configuration comes from the "
        "environment and .env (see .env.example).",
    )
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    serve.add_argument("--port", type=_port, default=8080, help="port to listen on (default 8080)")
    serve.add_argument("--workers", type=_positive, default=1, help="worker processes (default 1)")
    serve.set_defaults(func=_cmd_serve)

    doctor = sub.add_parser(
        "doctor",
        help="check configuration, codec and agent reachability",
        description="Print the configuration (secrets redacted), the codec implementation, and check "
        "that the agent answers; ends with a verdict line.",
    )
    doctor.set_defaults(func=_cmd_doctor)

    demo = sub.add_parser(
        "demo",
        help="one whole call on loopback: no keys, no network",
        description="Run one whole call on loopback (127.0.0.1), no keys, no network: the bridge server, "
        "the built-in local echo agent and a simulated Twilio caller who goes through the voice webhook, "
        "then speaks the input WAV in real time and hangs up 2 s after it ends (later if the agent's last "
        "answer is still playing). Shows the call on stderr while it runs, writes it as a stereo WAV (left "
        "the caller, right what the caller heard) and prints a summary. Exit status 0 when the call was "
        "healthy, 1 otherwise (with the reason). Only LOG_FORMAT is read from the environment, plus the "
        "SPEAKR_* settings and SPEAKR_API_KEY when --agent-url is given; SPEAKR_WS_URL, PUBLIC_URL and "
        "TWILIO_AUTH_TOKEN are ignored (the demo signs its webhook with a random per-run token).",
    )
    demo.add_argument(
        "--input",
        metavar="WAV",
        help="what the caller says: a 16-bit PCM WAV, mono or "
        "stereo, 8-48 kHz (default: the bundled sample, which includes a back-channel and an "
        "interruption)",
    )
    demo.add_argument(
        "--output",
        metavar="WAV",
        default="speakr-bridge-demo.wav",
        help="where to write the call (default: speakr-bridge-demo.wav)",
    )
    demo.add_argument(
        "--agent-url",
        metavar="URL",
        help="a Speakr-protocol agent (ws:// or wss://) to use "
        "instead of the built-in echo agent; SPEAKR_API_KEY is added to it",
    )
    demo.add_argument(
        "--agent",
        choices=("speakr", "openai", "deepgram", "cascade"),
        default="speakr",
        help="which agent answers (default speakr: the built-in echo agent). openai, deepgram and cascade "
        "run against the bundled offline emulators of OpenAI Realtime, Deepgram's Voice Agent and the "
        "three OpenAI-compatible HTTP endpoints: no key, no network",
    )
    demo.add_argument(
        "--speed",
        type=_speed,
        default=1.0,
        metavar="X",
        help="run the phone clock X times faster than real time (default 1.0)",
    )
    demo.add_argument("--quiet", action="store_true", help="no progress on stderr, only the summary")
    demo.set_defaults(func=_cmd_demo)

    agent = sub.add_parser(
        "agent",
        help="run the built-in local echo agent alone",
        description="Run the built-in local agent: a Speakr-protocol WebSocket server that greets, waits "
        "for the end of each caller turn and says it back, pausing, continuing or clearing when the caller "
        "speaks over it. Point a bridge at it with SPEAKR_WS_URL=ws://HOST:PORT/. Runs until Ctrl-C.",
    )
    agent.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    agent.add_argument("--port", type=_port, default=8765, help="port to listen on (default 8765)")
    agent.set_defaults(func=_cmd_agent)

    simulate = sub.add_parser(
        "simulate",
        help="emulated Twilio callers against a running bridge",
        description="Call a running bridge the way Twilio does: paced 20 ms μ-law frames, marks echoed when "
        "their audio would have finished playing, clear honoured. URL is the stream, ws(s)://HOST/twilio/"
        "stream, or the bridge's http(s)://HOST base URL: then each call starts with the signed voice "
        "webhook, as a real call does (needed when the bridge has TWILIO_AUTH_TOKEN set). Prints one line "
        "per call and a latency summary; exit status 0 when every call connected and heard audio.",
    )
    simulate.add_argument("url", metavar="URL", help="ws(s)://HOST/twilio/stream or http(s)://HOST")
    simulate.add_argument(
        "--input", metavar="WAV", help="what each caller says (default: the bundled sample)"
    )
    simulate.add_argument(
        "--calls", type=_positive, default=1, metavar="N", help="concurrent calls (default 1)"
    )
    simulate.add_argument("--output", metavar="DIR", help="write one stereo WAV per call into DIR")
    simulate.add_argument(
        "--speed", type=_speed, default=1.0, metavar="X", help="phone clock rate, 1.0 = real time (default)"
    )
    simulate.add_argument(
        "--hangup-after",
        type=_seconds,
        metavar="S",
        help="hang up at S seconds of phone time (default: 2 s after the input ends, "
        "later if an echo of the last words is still due)",
    )
    simulate.add_argument(
        "--auth-token",
        metavar="TOKEN",
        help="Twilio auth token to sign with (default: TWILIO_AUTH_TOKEN from the "
        "environment or .env; unset: unsigned)",
    )
    simulate.set_defaults(func=_cmd_simulate)

    from bridge._call_command import add_call_parser

    add_call_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code = EXIT_FAILED
    interrupted = False
    try:
        code = _run(args)
    except* KeyboardInterrupt:  # Ctrl-C; from inside a Trio run it arrives wrapped in an exception group
        interrupted = True
    return EXIT_INTERRUPTED if interrupted else code


def _run(args: argparse.Namespace) -> int:
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"speakr-bridge: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return code
