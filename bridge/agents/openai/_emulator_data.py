"""The OpenAI emulator's scripted material and records: turns, what it recorded, the default session.

Plain data and pure functions, shared by :mod:`bridge.agents.openai._emulator` and the tests that read what it
recorded: a scripted :class:`Turn`, a :class:`Truncation` received, a :class:`SentResponse`, the timeline's
:class:`RealtimeEvent`, the GA session object at the service's defaults and how a ``session.update`` merges
into it, and the agent's audio (a tone, or the bundled greeting in either output format).
"""

from __future__ import annotations

import copy
import math
import wave
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Final

import numpy as np
import trio

import codec
from bridge.agents.openai._wire import FORMAT_PCM, FORMAT_PCMU, PCM_RATE

__all__ = [
    "DEFAULT_PREFIX_PADDING_MS",
    "DEFAULT_SILENCE_DURATION_MS",
    "PCM_BYTES_PER_MS",
    "ULAW_BYTES_PER_MS",
    "RealtimeEvent",
    "SentResponse",
    "Truncation",
    "Turn",
    "default_session",
    "greeting_pcm24k",
    "greeting_ulaw",
    "merge_session",
    "reply_audio",
    "tone_ulaw",
]

# The GA session's server VAD defaults, as session.created reports them.
DEFAULT_PREFIX_PADDING_MS: Final = 300
DEFAULT_SILENCE_DURATION_MS: Final = 500
ULAW_BYTES_PER_MS: Final = 8  # 8 kHz, one byte a sample
PCM_BYTES_PER_MS: Final = PCM_RATE * 2 // 1000  # 24 kHz PCM16


@dataclass(frozen=True, slots=True)
class Turn:
    """One scripted answer of the agent.

    Attributes:
        transcript: what the transcription reports the caller said (for turns the VAD ends).
        reply: the text of the agent's speech, sent as transcript deltas and ``.done``.
        audio: the agent's speech as μ-law 8 kHz; None: the bundled greeting (4.4 s of speech).
        end_call: after the audio, the model calls ``end_call`` with ``end_call_arguments``.
    """

    transcript: str = "Hello, is anyone there?"
    reply: str = "Hello! Thanks for calling. How can I help you today?"
    audio: bytes | None = None
    end_call: bool = False
    end_call_arguments: str = '{"reason":"the caller said goodbye"}'


@dataclass(frozen=True, slots=True)
class Truncation:
    """A ``conversation.item.truncate`` received: what the client says the caller heard of an item.

    ``item_audio_ms``: how much audio of that item had been sent by then (None: not an item we sent).
    ``accepted``: the service took it (a known item, ``audio_end_ms`` within the audio sent).
    """

    item_id: str
    content_index: int
    audio_end_ms: int
    wall_s: float
    item_audio_ms: float | None
    accepted: bool


@dataclass(slots=True)
class SentResponse:
    """One response the emulator sent (mutable while it runs).

    ``trigger``: ``"vad"`` (the caller's turn ended) or ``"client"`` (``response.create``).
    ``status``: ``in_progress``, ``completed``, ``cancelled``. ``audio``: the audio bytes sent, in order.
    """

    response_id: str
    item_id: str
    trigger: str
    output_format: str
    started_wall_s: float
    status: str = "in_progress"
    audio: bytearray = field(default_factory=bytearray, repr=False)
    deltas: int = 0
    call_id: str | None = None
    done_wall_s: float | None = None
    cancel_requested: bool = False
    wake: trio.Event = field(default_factory=trio.Event, repr=False)

    @property
    def audio_ms(self) -> float:
        """Milliseconds of audio sent for this response's item."""
        per_ms = ULAW_BYTES_PER_MS if self.output_format == FORMAT_PCMU else PCM_BYTES_PER_MS
        return len(self.audio) / per_ms


@dataclass(frozen=True, slots=True)
class RealtimeEvent:
    """A lifecycle step, an event sent or a client event received, for assertions on order.

    ``kind``: sent ``session.created``, ``session.updated``, ``speech_started``, ``speech_stopped``,
    ``error``, ``raw``; received ``session.update``, ``truncate``, ``user_text``, ``function_call_output``,
    ``item``, ``response.create``, ``response.cancel``, ``unknown`` (``detail``: its type), ``bad_message``
    (``detail``: error kind); ``closed``, ``dropped``, ``expired``, ``script_error``.
    """

    kind: str
    wall_s: float
    detail: str = ""


def tone_ulaw(ms: int, freq_hz: float = 440.0, level_dbfs: float = -12.0) -> bytes:
    """A deterministic sine tone as μ-law 8 kHz (scripted agent audio, or a caller who speaks)."""
    n = ms * 8
    t = np.arange(n) / 8000.0
    amplitude = 32767 * 10 ** (level_dbfs / 20)
    pcm = np.round(amplitude * np.sin(2 * math.pi * freq_hz * t)).astype("<i2").tobytes()
    return codec.ulaw_encode(pcm)


@cache
def greeting_pcm24k() -> bytes:
    """The bundled agent greeting (4.4 s of speech), PCM16LE 24 kHz mono."""
    with resources.files("bridge.data").joinpath("agent_greeting.wav").open("rb") as raw:
        with wave.open(raw) as wav:
            if (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) != (1, 2, PCM_RATE):
                raise RuntimeError("agent_greeting.wav must be mono PCM16 at 24 kHz")
            frames: bytes = wav.readframes(wav.getnframes())
            return frames


@cache
def greeting_ulaw() -> bytes:
    """The bundled agent greeting as μ-law 8 kHz (what an ``audio/pcmu`` session sends)."""
    encoder = codec.DownlinkEncoder()
    return encoder.process(greeting_pcm24k()) + encoder.flush()


def default_session(index: int, model: str) -> dict[str, Any]:
    """A GA session object at the service's defaults (``audio/pcm`` both ways, server VAD on)."""
    pcm = {"type": FORMAT_PCM, "rate": PCM_RATE}
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": f"sess_emulator{index:04d}",
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "Your knowledge cutoff is 2023-10. You are a helpful, witty, and friendly AI.",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": 0,
        "audio": {
            "input": {
                "format": dict(pcm),
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": DEFAULT_PREFIX_PADDING_MS,
                    "silence_duration_ms": DEFAULT_SILENCE_DURATION_MS,
                    "idle_timeout_ms": None,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {"format": dict(pcm), "voice": "alloy", "speed": 1.0},
        },
        "include": None,
    }


def merge_session(current: dict[str, Any], update: dict[str, Any]) -> None:
    """Applies a ``session.update`` the way the service does: objects merge, anything else replaces."""
    for key, value in update.items():
        if type(value) is dict and type(current.get(key)) is dict and key not in ("format", "turn_detection"):
            merge_session(current[key], value)
        else:
            current[key] = copy.deepcopy(value)


def reply_audio(turn: Turn, output_format: str) -> bytes:
    """A turn's audio in a session's output format: μ-law as scripted, or 24 kHz PCM16 for ``audio/pcm``."""
    if output_format == FORMAT_PCMU:
        return turn.audio if turn.audio is not None else greeting_ulaw()
    if turn.audio is None:
        return greeting_pcm24k()
    upsampler = codec.Resampler(8000, PCM_RATE)
    return upsampler.process(codec.ulaw_decode(turn.audio)) + upsampler.flush()
