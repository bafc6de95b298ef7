"""``speakr-bridge simulate``: emulated Twilio callers against any running bridge (and ``demo``'s caller).

Theory of operation
-------------------
What a caller says comes from a WAV file (the bundled ``demo_caller.wav`` by default), read here without
trusting its header (RIFF chunks walked by hand: 16-bit PCM only, plain or ``WAVE_FORMAT_EXTENSIBLE``),
mixed down to mono and resampled to the phone's 8 kHz with :class:`codec.Resampler`.

The caller hangs up (Twilio ``stop``) at a phone time fixed before the call starts, because the emulator's
clock has no later say: :func:`default_hangup_s` is 2 s after the input ends, or later if the built-in echo
agent's answer to the last thing said would still be playing then (found by running the agent's own turn
detector over the input, so the last echo is heard in full).

:func:`run_simulation` runs ``calls`` :class:`~bridge.emulators.TwilioCaller`\\ s at once in one nursery; each
returns its :class:`~bridge.emulators.CallRecord` (a caller never raises for a failed call), and the report
is built from the records alone: it needs nothing from the bridge but its two public endpoints.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final, TextIO
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import trio
from dotenv import dotenv_values

import codec
from bridge._twilio import SAMPLE_RATE
from bridge._vad import TurnDetector, Utterance, VadSettings
from bridge.emulators import CallRecord, TwilioCaller

__all__ = [
    "SAMPLE_RATE",
    "CallReport",
    "InputAudio",
    "InputAudioError",
    "SimulateResult",
    "UsageError",
    "default_hangup_s",
    "load_input",
    "percentile",
    "played_s",
    "resolve_target",
    "run_simulation",
    "simulate_command",
]

#: Longest input accepted, in seconds: the caller emulator's safety net is 10 minutes of phone time.
MAX_INPUT_S: Final = 540.0
#: The caller hangs up this long after its input ends (unless an echo is still due, see default_hangup_s).
HANGUP_AFTER_INPUT_S: Final = 2.0
#: Margin after the expected end of the last echo before hanging up.
ECHO_MARGIN_S: Final = 1.0
#: Most concurrent calls one ``simulate`` run places (each is two sockets and a 20 ms ticker).
MAX_CALLS: Final = 1000
#: Extra phone time allowed past the hang-up before the caller's safety net ends the call.
SAFETY_MARGIN_S: Final = 30.0
BUNDLED_INPUT: Final = "data/demo_caller.wav"
VOICE_PATH: Final = "/twilio/voice"
STREAM_PATH: Final = "/twilio/stream"

_WAVE_FORMAT_PCM: Final = 0x0001
_WAVE_FORMAT_EXTENSIBLE: Final = 0xFFFE
_FORMAT_NAMES: Final = {0x0003: "32-bit float (IEEE)", 0x0006: "A-law", 0x0007: "μ-law", 0x0002: "ADPCM"}
_CONVERT_HINT: Final = "convert it first, e.g. `sox in.wav -b 16 -e signed-integer out.wav`"


class UsageError(ValueError):
    """A bad argument found after parsing (a file, a URL, a directory): the command line exits with 2."""


class InputAudioError(UsageError):
    """The input WAV cannot be used (not a WAV, not 16-bit PCM, an unsupported rate, empty, too long).

    The message says what is wrong and how to fix it; the command line exits with 2.
    """


@dataclass(frozen=True, slots=True, repr=False)
class InputAudio:
    """What the caller says, ready for the phone line.

    Attributes:
        pcm: PCM16LE mono at :data:`SAMPLE_RATE`.
        source: the file's path, or ``"bundled sample"``.
        source_rate, source_channels: the file's own format, for the summary.
        bundled: it is the bundled ``demo_caller.wav`` (whose barge-in events are known in advance).
    """

    pcm: bytes
    source: str
    source_rate: int
    source_channels: int
    bundled: bool

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / 2 / SAMPLE_RATE

    def __repr__(self) -> str:
        return (
            f"InputAudio(source={self.source!r}, {self.source_rate} Hz x{self.source_channels} -> "
            f"{self.duration_s:.2f} s at {SAMPLE_RATE} Hz)"
        )


def _read_wav(data: bytes, name: str) -> tuple[int, int, np.ndarray]:
    """Parses a 16-bit PCM WAV: (rate, channels, int16 samples shaped (frames, channels))."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise InputAudioError(f"{name} is not a WAV file (no RIFF/WAVE header)")
    fmt: tuple[int, int, int, int] | None = None
    pcm: bytes | None = None
    offset = 12
    while offset + 8 <= len(data) and pcm is None:
        chunk_id, size = data[offset : offset + 4], struct.unpack_from("<I", data, offset + 4)[0]
        body = data[offset + 8 : offset + 8 + size]
        if chunk_id == b"fmt ":
            if len(body) < 16:
                raise InputAudioError(f"{name}: malformed WAV fmt chunk")
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", body)
            if tag == _WAVE_FORMAT_EXTENSIBLE and len(body) >= 26:
                tag = struct.unpack_from("<H", body, 24)[0]  # first two bytes of the sub-format GUID
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            pcm = body
        offset += 8 + size + (size & 1)  # chunks are word-aligned
    if fmt is None or pcm is None:
        raise InputAudioError(f"{name}: WAV file without a {'fmt' if fmt is None else 'data'} chunk")
    tag, channels, rate, bits = fmt
    if tag != _WAVE_FORMAT_PCM or bits != 16:
        kind = _FORMAT_NAMES.get(tag, f"{bits}-bit PCM" if tag == _WAVE_FORMAT_PCM else f"format 0x{tag:04x}")
        raise InputAudioError(f"{name} is {kind}; only 16-bit PCM WAV is supported: {_CONVERT_HINT}")
    if channels < 1 or rate < 1:
        raise InputAudioError(f"{name}: WAV header says {channels} channels at {rate} Hz")
    frames = len(pcm) // (2 * channels)
    samples = np.frombuffer(pcm, dtype="<i2", count=frames * channels).reshape(frames, channels)
    return rate, channels, samples


def load_input(path: str | os.PathLike[str] | None = None) -> InputAudio:
    """Reads what the caller will say: ``path``, or the bundled sample when ``None``.

    Any rate the resampler supports (8, 11.025, 16, 22.05, 24, 32, 44.1, 48 kHz and more), any number of
    channels (mixed down to mono), 16-bit PCM only.

    Raises:
        InputAudioError: the file is unreadable, not a 16-bit PCM WAV, empty, longer than
            :data:`MAX_INPUT_S`, or at a rate the resampler cannot convert to 8 kHz.
    """
    if path is None:
        name = "bundled sample"
        data = resources.files("bridge").joinpath(BUNDLED_INPUT).read_bytes()
    else:
        name = str(path)
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise InputAudioError(f"cannot read {name}: {exc.strerror or exc}") from None
    rate, channels, samples = _read_wav(data, name)
    if len(samples) == 0:
        raise InputAudioError(f"{name} holds no audio")
    if len(samples) / rate > MAX_INPUT_S:
        raise InputAudioError(
            f"{name} lasts {len(samples) / rate:.0f} s; at most {MAX_INPUT_S:.0f} s is supported"
        )
    if channels == 1:
        mono = samples[:, 0]
    else:  # the mean of the channels, rounded: a mix-down that cannot clip
        mono = np.round(samples.astype(np.float64).mean(axis=1)).astype("<i2")
    try:
        resampler = codec.Resampler(rate, SAMPLE_RATE)
    except ValueError as exc:
        raise InputAudioError(
            f"{name} is sampled at {rate} Hz, which the resampler cannot convert to {SAMPLE_RATE} Hz "
            f"({exc}); "
            f"use a common rate (8000, 16000, 22050, 24000, 44100 or 48000 Hz)"
        ) from None
    pcm = resampler.process(mono.astype("<i2").tobytes()) + resampler.flush()
    return InputAudio(pcm=pcm, source=name, source_rate=rate, source_channels=channels, bundled=path is None)


def default_hangup_s(audio: InputAudio, settings: VadSettings | None = None) -> float:
    """The phone time at which the caller hangs up: 2 s after its input, later if an echo is still due.

    The built-in echo agent answers an utterance ``silence_ms`` after it ends, with the utterance itself: its
    answer to the last utterance ends at ``decided + (end - start)``. The agent's own detector finds them.
    """
    settings = settings or VadSettings()
    detector = TurnDetector(settings)
    tail = bytes(2 * SAMPLE_RATE * (int(settings.silence_ms) // 1000 + 1))
    events = detector.feed(audio.pcm + tail)
    utterances = [e for e in events if isinstance(e, Utterance)]
    hangup = audio.duration_s + HANGUP_AFTER_INPUT_S
    if utterances:
        last = utterances[-1]
        hangup = max(hangup, last.time_s + (last.end_s - last.start_s) + ECHO_MARGIN_S)
    return round(hangup, 2)


def percentile(samples: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100, linear interpolation) of ``samples``; ``None`` when empty."""
    if not samples:
        return None
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q))


def ms(value: float | None) -> str:
    """Seconds as a short millisecond figure for reports; ``-`` for nothing measured."""
    if value is None:
        return "-"
    return f"{value * 1000:.2f} ms" if value < 0.01 else f"{value * 1000:.1f} ms"


# ------------------------------------------------------------------------------------------------- simulate


@dataclass(frozen=True, slots=True)
class CallReport:
    """One simulated call as the report shows it (all times in phone seconds unless named ``_wall``).

    Attributes:
        ok: connected and heard the agent.
        heard_s: seconds of agent audio that played on the phone (:func:`played_s`).
        first_audio_s: phone time of the first agent audio, from Twilio ``start``.
        mark_hold_s: for each mark, how long it waited at the phone from arrival to echo (the audio the
            bridge had buffered ahead of playback), in wall seconds.
    """

    index: int
    call_sid: str
    outcome: str
    ok: bool
    connected: bool
    duration_s: float
    frames_sent: int
    media_received: int
    heard_s: float
    first_audio_s: float | None
    marks_received: int
    marks_echoed: int
    clears: int
    protocol_errors: int
    close_code: int | None
    error: str | None
    mark_hold_s: tuple[float, ...]
    wav_path: str | None = None


@dataclass(frozen=True, slots=True)
class SimulateResult:
    """All the calls of one ``simulate`` run."""

    calls: tuple[CallReport, ...]
    records: tuple[CallRecord, ...]

    @property
    def ok(self) -> bool:
        """Every call connected and heard audio."""
        return bool(self.calls) and all(c.ok for c in self.calls)

    def report(self) -> str:
        """The text report: one line per call, then the latency summary."""
        lines = [
            f"{'call':>4}  {'outcome':<13} {'heard':>7} {'first audio':>11} {'up frames':>9} "
            f"{'down media':>10} {'marks':>9} {'clears':>6}  call sid"
        ]
        for c in self.calls:
            first = "-" if c.first_audio_s is None else f"{c.first_audio_s:.2f} s"
            lines.append(
                f"{c.index:>4}  {c.outcome:<13} {c.heard_s:>5.2f} s {first:>11} {c.frames_sent:>9} "
                f"{c.media_received:>10} {c.marks_echoed:>4}/{c.marks_received:<4} {c.clears:>6}  "
                f"{c.call_sid}"
                + ("" if c.ok else "  FAILED" + (f": {c.error}" if c.error else ""))
                + (f"  protocol errors: {c.protocol_errors}" if c.protocol_errors else "")
            )
        firsts = [c.first_audio_s for c in self.calls if c.first_audio_s is not None]
        holds = [h for c in self.calls for h in c.mark_hold_s]
        ok = sum(c.ok for c in self.calls)
        lines.append("")
        lines.append(f"calls ok:                 {ok}/{len(self.calls)}")
        lines.append(
            "first audio heard:        "
            + (
                "-"
                if not firsts
                else f"p50 {percentile(firsts, 50):.3f} s, max {max(firsts):.3f} s (phone time)"
            )
        )
        lines.append(
            "mark hold (arrival→echo): "
            + (
                "-"
                if not holds
                else f"p50 {ms(percentile(holds, 50))}, p99 {ms(percentile(holds, 99))}, "
                f"n={len(holds)} (audio buffered ahead at the phone)"
            )
        )
        return "\n".join(lines)


def call_report(index: int, rec: CallRecord, wav_path: str | None = None) -> CallReport:
    """Summarises one record."""
    heard_s = played_s(rec)
    arrivals: dict[str, float] = {}
    holds: list[float] = []
    for event in rec.events:
        if event.kind == "mark_received":
            arrivals[event.detail] = event.wall_s
        elif event.kind == "mark_echoed" and event.detail in arrivals:
            holds.append(event.wall_s - arrivals.pop(event.detail))
    connected = rec.connected
    ok = connected and rec.first_audio_heard_s is not None
    error = rec.error
    if not ok and error is None:
        error = "never connected" if not connected else "no audio heard"
    return CallReport(
        index=index,
        call_sid=rec.call_sid,
        outcome=rec.outcome,
        ok=ok,
        connected=connected,
        duration_s=rec.duration_s,
        frames_sent=rec.counters.frames_sent,
        media_received=rec.counters.media_received,
        heard_s=heard_s,
        first_audio_s=rec.first_audio_heard_s,
        marks_received=rec.counters.marks_received,
        marks_echoed=rec.counters.marks_echoed,
        clears=rec.counters.clears_received,
        protocol_errors=rec.counters.protocol_errors,
        close_code=rec.close_code,
        error=error,
        mark_hold_s=tuple(holds),
        wav_path=wav_path,
    )


def played_s(rec: CallRecord) -> float:
    """Seconds of agent audio the phone played: what the bridge sent, less what ``clear`` dropped unplayed.

    (Audio still queued when the caller hung up counts as played: at most the bridge's lead, see mark hold.)
    """
    cleared = sum(event.size for event in rec.events_of("clear_received"))
    return max(0, rec.counters.bytes_received - cleared) / SAMPLE_RATE


def resolve_target(url: str) -> tuple[str | None, str | None]:
    """``(webhook_url, stream_url)`` for a ``simulate`` URL.

    ``ws(s)://…`` is the stream itself (``/twilio/stream`` is added when the path is empty). ``http(s)://…``
    is the bridge's base URL (or its voice webhook): the call starts with the webhook, as a real one does.

    Raises:
        UsageError: not a ws, wss, http or https URL with a host, or one with a query string.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss", "http", "https") or not parts.netloc:
        raise UsageError(f"URL must be ws(s)://HOST/twilio/stream or http(s)://HOST, got {url!r}")
    if parts.query or parts.fragment:
        raise UsageError(f"URL must not carry a query or fragment (Twilio strips them), got {url!r}")
    path = parts.path.rstrip("/")
    if parts.scheme in ("ws", "wss"):
        return None, urlunsplit((parts.scheme, parts.netloc, path or STREAM_PATH, "", ""))
    if not path.endswith(VOICE_PATH):
        path += VOICE_PATH
    return urlunsplit((parts.scheme, parts.netloc, path, "", "")), None


def auth_token_from_env(dotenv_path: str | None = ".env") -> str | None:
    """``TWILIO_AUTH_TOKEN`` from the environment, else from ``.env`` (the bridge's own precedence)."""
    token = os.environ.get("TWILIO_AUTH_TOKEN")
    if not token and dotenv_path is not None and Path(dotenv_path).is_file():
        token = dotenv_values(dotenv_path).get("TWILIO_AUTH_TOKEN")
    return (token.strip() or None) if token else None


async def run_simulation(
    url: str,
    *,
    audio: InputAudio,
    calls: int = 1,
    speed: float = 1.0,
    hangup_after_s: float | None = None,
    auth_token: str | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    connect_timeout_s: float = 5.0,
) -> SimulateResult:
    """Places ``calls`` emulated Twilio calls at once against the bridge at ``url`` and reports them.

    Args:
        url: see :func:`resolve_target`.
        audio: what every caller says.
        speed: phone clock rate (1.0 = real time). An agent that paces its speech in wall time will sound
            slower than the phone at other speeds.
        hangup_after_s: phone time at which each caller hangs up; ``None``: :func:`default_hangup_s`.
        auth_token: signs the webhook and the stream upgrade as Twilio does with the account's auth token.
        output_dir: when given, one stereo WAV per call (left caller, right what it heard) is written there.

    Raises:
        UsageError: a bad ``url``, ``calls`` or ``speed``.
    """
    webhook_url, stream_url = resolve_target(url)
    if not 1 <= calls <= MAX_CALLS:
        raise UsageError(f"calls must be between 1 and {MAX_CALLS}, got {calls!r}")
    if not speed > 0:
        raise UsageError(f"speed must be > 0, got {speed!r}")
    hangup = default_hangup_s(audio) if hangup_after_s is None else hangup_after_s
    records: list[CallRecord | None] = [None] * calls

    async def place(i: int) -> None:
        caller = TwilioCaller(
            webhook_url=webhook_url,
            stream_url=stream_url,
            auth_token=auth_token,
            audio=audio.pcm,
            speed=speed,
            hangup_after_s=hangup,
            max_call_s=hangup + SAFETY_MARGIN_S,
            connect_timeout_s=connect_timeout_s,
        )
        records[i] = await caller.run()

    async with trio.open_nursery() as nursery:
        for i in range(calls):
            nursery.start_soon(place, i)
    done = [r for r in records if r is not None]
    reports = []
    for i, rec in enumerate(done, start=1):
        wav_path = None
        if output_dir is not None:
            wav_path = str(Path(output_dir) / f"call-{i:03d}-{rec.call_sid}.wav")
            rec.stereo_wav(wav_path)
        reports.append(call_report(i, rec, wav_path))
    return SimulateResult(calls=tuple(reports), records=tuple(done))


def simulate_command(
    url: str,
    *,
    input_path: str | None,
    calls: int,
    output_dir: str | None,
    speed: float,
    hangup_after_s: float | None,
    auth_token: str | None,
    out: TextIO,
    err: TextIO,
) -> int:
    """``speakr-bridge simulate``: 0 when every call connected and heard audio, 1 otherwise.

    Raises:
        UsageError: bad input or arguments (the command line exits with 2).
    """
    resolve_target(url)
    audio = load_input(input_path)
    if output_dir is not None:
        try:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create the output directory {output_dir!r}: {exc.strerror}") from None
    token = auth_token if auth_token is not None else auth_token_from_env()
    hangup = default_hangup_s(audio) if hangup_after_s is None else hangup_after_s
    print(
        f"placing {calls} call(s) to {url}: {audio.source}, {audio.duration_s:.1f} s of speech, hang-up at "
        f"{hangup:.1f} s, speed {speed:g}x{', signed' if token else ''}",
        file=err,
        flush=True,
    )
    result = trio.run(
        lambda: run_simulation(
            url,
            audio=audio,
            calls=calls,
            speed=speed,
            hangup_after_s=hangup,
            auth_token=token,
            output_dir=output_dir,
        )
    )
    print(result.report(), file=out)
    if output_dir is not None:
        print(
            f"recordings:               {output_dir}/ ({len(result.calls)} stereo WAV, left caller, "
            "right heard)",
            file=out,
        )
    if not result.ok:
        failed = [c for c in result.calls if not c.ok]
        print(
            f"simulate: {len(failed)} of {len(result.calls)} call(s) failed: "
            f"{failed[0].error or failed[0].outcome} (call {failed[0].index})",
            file=out,
        )
        return 1
    return 0
