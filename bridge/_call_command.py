"""``speakr-bridge call NUMBER [--param k=v ...]``: place one outbound call from the shell.

The call is placed exactly as ``POST /calls`` places it (same validation, same inline TwiML, same stream
token, same status callbacks), so the running bridge serves its stream and records its status; this
process only asks Twilio and prints the Call SID. Exit status: 0 placed (the SID on stdout), 1 Twilio
refused or could not be reached, 2 bad arguments or configuration (the message names the culprit).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from bridge._config import Config
from bridge._errors import ConfigError
from bridge._outbound import CALL_FIELDS, CallRequestError, call_request_from_params, prepare_call
from bridge._twilio_rest import STATUS_CALLBACK_EVENTS, CallInfo, TwilioRest, TwilioRestError

__all__ = ["add_call_parser", "call_command", "place_call"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


async def place_call(config: Config, number: str, params: Sequence[str]) -> CallInfo:
    """Validate, then place the call through Twilio's REST API.

    Raises:
        CallRequestError: a bad number or parameter.
        ConfigError: outbound calls are not configured (credentials, ``PUBLIC_URL``, caller ID).
        TwilioRestError: Twilio refused the call or could not be reached.
    """
    prepared = prepare_call(config, call_request_from_params(number, params))
    rest = TwilioRest.from_config(config)
    return await rest.create_call(
        to=prepared.to,
        from_=prepared.from_,
        twiml=prepared.twiml,
        status_callback=prepared.status_callback,
        status_callback_events=STATUS_CALLBACK_EVENTS,
    )


def call_command(
    number: str,
    params: list[str],
    *,
    config: Config | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run the ``call`` command; returns the exit status (see the module docstring).

    Args:
        number: the E.164 number to call.
        params: ``NAME=VALUE`` items: ``from`` or a start-message field.
        config: the configuration; default: the environment and ``.env``.
        out, err: where the SID and the messages go (default stdout, stderr).
    """
    import trio

    from bridge._config import load_config

    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        config = load_config() if config is None else config
        # Everything that can be checked without the network is checked before it is used.
        prepare_call(config, call_request_from_params(number, params))
        info = trio.run(place_call, config, number, params)
    except CallRequestError as exc:
        where = f" ({exc.field})" if exc.field else ""
        print(f"speakr-bridge call: invalid input{where}: {exc.message}", file=err)
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"speakr-bridge call: configuration error: {exc}", file=err)
        return EXIT_USAGE
    except TwilioRestError as exc:
        print(f"speakr-bridge call: the call was not placed: {exc}", file=err)
        if exc.more_info:
            print(f"  see {exc.more_info}", file=err)
        return EXIT_FAILED
    print(info.sid, file=out)
    print(f"speakr-bridge call: {info.sid} {info.status}, calling {number}", file=err)
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    return call_command(args.number, list(args.param or []))


def add_call_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add the ``call`` sub-command (its ``func`` default runs :func:`call_command`)."""
    fields = ", ".join(CALL_FIELDS)
    parser = subparsers.add_parser(
        "call",
        help="place an outbound call through Twilio's REST API",
        description="Place an outbound call through Twilio's REST API; the running bridge (at PUBLIC_URL) "
        "serves its stream like an inbound call's. Needs TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, PUBLIC_URL "
        "and a caller ID (TWILIO_FROM_NUMBER or --param from=...). Prints the Call SID. "
        "Exit status 0 placed, "
        "1 Twilio refused or could not be reached, 2 bad input or configuration.",
    )
    parser.add_argument("number", metavar="NUMBER", help="the number to call, E.164 (e.g. +14155550100)")
    parser.add_argument(
        "--param",
        action="append",
        metavar="NAME=VALUE",
        help=f"a per-call setting: from, or one of the agent's start fields ({fields}); repeatable",
    )
    parser.set_defaults(func=_run)
    return parser
