"""A scripted cascade conversation for ``speakr-bridge demo --agent cascade``, offline.

Theory of operation
-------------------
:func:`demo_server` starts a :class:`CascadeServer` on 127.0.0.1 scripted for a short pizza order with
realistic stage latencies (:data:`DEMO_PACING`: STT 300 ms, the model's first token after 400 ms then 30
tokens/s, speech's first byte after 200 ms at 4× real time). :func:`demo_caller_audio` is the caller's side
as PCM16 8 kHz from the call's start: bursts of speech-like noise timed to that script (the emulator's
transcription answers each with the next of :data:`DEMO_TRANSCRIPTS`, whatever the audio). The call:

1. the agent's first words come from the model (:data:`DEMO_REPLIES` [0]);
2. the caller orders; the agent starts a long answer about the menu;
3. the caller cuts in over it (1.3 s of speech: a real interruption, Twilio ``clear``); the model's next
   request holds only the part of the menu the caller heard;
4. the agent confirms; the caller says that is all; the agent says goodbye and calls ``end_call``
   (achieved, with a one-line summary), so the call ends from the agent's side after its goodbye.

How to run it with the bridge (what ``demo --agent cascade`` does)::

    async with demo_server() as server:
        config = Config(agent="cascade", cascade=demo_settings(server))
        ... serve create_app(config); TwilioCaller(stream_url=..., audio=demo_caller_audio()).run()
        stats = RECENT_CALLS[-1]   # bridge.agents.cascade._leg: per-turn timings
        print("\\n".join(turn_report(stats)))

:func:`turn_report` renders the transcript with each turn's latencies split by stage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final

import numpy as np

from bridge._secret import Secret
from bridge.agents.cascade._emulator import DEFAULT_API_KEY, CascadeServer
from bridge.agents.cascade._emulator_data import ChatReply
from bridge.agents.cascade._settings import CascadeSettings

__all__ = [
    "DEMO_CALLER_SPEECH",
    "DEMO_PACING",
    "DEMO_REPLIES",
    "DEMO_TRANSCRIPTS",
    "demo_caller_audio",
    "demo_server",
    "demo_settings",
    "turn_report",
]

#: The emulated endpoints' pacing: the issue's stage latencies, speech at 4× real time.
DEMO_PACING: Final[Mapping[str, float]] = {
    "stt_latency_s": 0.3,
    "first_token_s": 0.4,
    "tokens_per_s": 30.0,
    "tts_first_byte_s": 0.2,
    "tts_realtime_factor": 4.0,
}
#: What the caller says, in order (what the emulated transcription answers).
DEMO_TRANSCRIPTS: Final = (
    "Hi, I'd like to order a pizza for delivery.",
    "Just a large pepperoni, please.",
    "No, that's all. Thanks!",
)
#: The model's answers, in order: the first words, the menu (interrupted), the confirmation, the goodbye.
DEMO_REPLIES: Final = (
    "Hello, this is Tony's Pizza. What can I get you today?",
    "Sure! We have margherita, pepperoni, vegetarian and four cheese. Every pizza comes in small, medium or "
    "large, and today the large ones are half price. We also have garlic bread, salads and three desserts.",
    "One large pepperoni for delivery, got it. Anything else?",
    ChatReply.end_call(
        "Great, it'll be with you in thirty minutes. Thanks for calling, goodbye!",
        achieved=True,
        summary="Took a delivery order for one large pepperoni pizza.",
    ),
)
#: ``(start_s, length_s)`` of each burst of the caller's speech, phone time from the call's start: the
#: order after the greeting, the interruption into the menu, the closing words after the confirmation.
DEMO_CALLER_SPEECH: Final = ((5.0, 1.6), (11.0, 1.3), (18.0, 1.2))
_RATE: Final = 8000


def demo_caller_audio(seed: int = 12) -> bytes:
    """The caller's side of the demo call: PCM16 LE 8 kHz mono from phone time 0, then silence."""
    rng = np.random.default_rng(seed)
    end = max(start + length for start, length in DEMO_CALLER_SPEECH)
    out = np.zeros(int(end * _RATE) + _RATE // 2, dtype=np.float64)
    for start, length in DEMO_CALLER_SPEECH:
        n = int(length * _RATE)
        spectrum = np.fft.rfft(rng.standard_normal(n))
        freqs = np.fft.rfftfreq(n, 1 / _RATE)
        spectrum[(freqs < 300) | (freqs > 3000)] = 0
        noise = np.fft.irfft(spectrum, n)
        noise /= np.max(np.abs(noise))
        envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * np.arange(n) / _RATE)  # syllables
        offset = int(start * _RATE)
        out[offset : offset + n] = 5000 * noise * envelope
    return out.astype("<i2").tobytes()


@asynccontextmanager
async def demo_server(**overrides: Any) -> AsyncIterator[CascadeServer]:
    """A :class:`CascadeServer` on 127.0.0.1 scripted for the demo call (``overrides``: its arguments)."""
    arguments: dict[str, Any] = {
        "transcripts": DEMO_TRANSCRIPTS,
        "replies": DEMO_REPLIES,
        **DEMO_PACING,
        **overrides,
    }
    async with CascadeServer(**arguments) as server:
        yield server


def demo_settings(server: CascadeServer, **overrides: Any) -> CascadeSettings:
    """``CASCADE_*`` pointing at a running demo server (with its key)."""
    values: dict[str, Any] = {
        "stt_url": server.stt_url,
        "llm_url": server.llm_url,
        "tts_url": server.tts_url,
        "api_key": Secret(DEFAULT_API_KEY),
        **overrides,
    }
    return CascadeSettings(**values)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def turn_report(stats: Any) -> list[str]:
    """The call's transcript, one turn per block, with its latencies by stage (a ``CascadeCallStats``)."""
    lines: list[str] = []
    for turn in stats.turns:
        head = f"turn {turn.index} ({turn.kind})"
        if turn.discarded:
            lines.append(f"{head}  [started early on a pause; the caller went on: thrown away]")
            continue
        if turn.user_text:
            lines.append(f"{head}  caller: {turn.user_text}")
            head = " " * len(head)
        said = turn.heard_text if turn.interrupted else turn.agent_text
        cut = "  [interrupted: the history keeps only this]" if turn.interrupted else ""
        lines.append(f"{head}  agent:  {said}{cut}")
        stages = (
            f"STT {_ms(turn.stt_ms)} ms | LLM first token {_ms(turn.llm_first_token_ms)} ms, first sentence "
            f"{_ms(turn.llm_first_sentence_ms)} ms | TTS first byte {_ms(turn.tts_first_byte_ms)} ms"
        )
        if turn.kind == "reply":
            early = f", started {_ms(turn.early_ms)} ms early" if turn.early_ms is not None else ""
            stages += f" | end of turn -> first audio {_ms(turn.first_audio_ms)} ms{early}"
        else:
            stages += f" | first audio after {_ms(turn.first_audio_ms)} ms"
        if turn.errors:
            stages += f" | errors {', '.join(turn.errors)}"
        lines.append(" " * len(head) + "  " + stages)
    return lines
