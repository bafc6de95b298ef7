"""The cascade's three endpoints for load, in a process of their own (``python _cascade_service.py``).

Theory of operation
-------------------
The backends benchmark counts the bridge's CPU only (its process tree), so the emulated speech-to-text, chat
and speech endpoints (:class:`bridge.agents.cascade.CascadeServer`) run here, outside that tree. The process
prints one line, the server's base URL, once it listens; it serves until its standard input closes (the
benchmark closes it, or dies) or it is terminated.

The script, the same for every call and every turn (so each call's cost does not depend on which request
of the shared emulator it got): every utterance is transcribed as :data:`TRANSCRIPT`; the model answers
:data:`SHORT_REPLY` (1.6 s of speech), and every :data:`LONG_EVERY`-th chat request
:data:`LONG_REPLY` (5.9 s), which runs into the caller's next burst (a barge-in). Pacing
(:data:`PACING`): transcription 100 ms, the model's first token after 100 ms then 100 tokens/s, speech's
first byte after 100 ms then 4x real time in 100 ms chunks, so an answer started on the likely end of
turn (400 ms of quiet) is ready when the turn ends (1 s of quiet).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Final

import trio

from bridge.agents.cascade import CascadeServer, WavAudio, speech_ms

__all__ = ["LONG_EVERY", "LONG_REPLY", "PACING", "SHORT_REPLY", "TRANSCRIPT", "main"]

TRANSCRIPT: Final = "I'd like to know more about that, please."
SHORT_REPLY: Final = "Sure, I can help with that."
LONG_REPLY: Final = (
    "Of course. We are open every day from nine to six, and on weekends from ten until four in the afternoon."
)
LONG_EVERY: Final = 4
PACING: Final[Mapping[str, Any]] = {
    "stt_latency_s": 0.1,
    "first_token_s": 0.1,
    "tokens_per_s": 100.0,
    "tts_first_byte_s": 0.1,
    "tts_realtime_factor": 4.0,
}


def _transcribe(_: WavAudio) -> str:
    return TRANSCRIPT


def server() -> CascadeServer:
    """The scripted emulator (not started)."""
    count = itertools.count()

    def reply(_: Sequence[Mapping[str, Any]]) -> str:
        return LONG_REPLY if next(count) % LONG_EVERY == LONG_EVERY - 1 else SHORT_REPLY

    return CascadeServer(transcripts=_transcribe, replies=reply, **PACING)


async def main() -> None:
    async with server() as emulator:
        print(emulator.base_url, flush=True)
        # Until stdin closes: read in a thread (trio has no portable async stdin).
        await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)


if __name__ == "__main__":
    assert speech_ms(SHORT_REPLY) < speech_ms(LONG_REPLY)
    trio.run(main)
