"""Call recordings: one stereo 8 kHz μ-law WAV per call, left the caller, right what the caller heard.

Theory of operation
-------------------
Format. Both sides of a phone call are G.711 μ-law at 8 kHz already: the caller's frames as Twilio sends them,
and the pieces of agent audio exactly as the bridge sent them to Twilio. The file keeps those bytes unchanged
(WAVE_FORMAT_MULAW, two channels, one byte per sample): lossless with respect to what was on the wire, no
transcoding work, and half the size of 16-bit PCM. Disk: 8000 frames/s x 2 bytes = 16 kB/s, **0.96 MB per
minute** of call (16-bit PCM would be 1.92 MB/min for the same information). Every common player and tool
(ffmpeg, sox, libsndfile, browsers on most platforms) reads μ-law WAV.

Timeline. The left channel is the caller's audio in arrival order: sample ``n`` is the ``n``-th caller sample
(Twilio sends a frame every 20 ms whether or not anyone speaks, so the count is the phone's clock). The right
channel is fed from the playback ledger: a piece of agent audio is written when its mark comes back *in the
epoch it was sent in*, that is when Twilio confirms it played. So a piece cleared before it played never
reaches the file, and a piece resent after ``continue`` is written once, when its resend plays. A mark comes
back when its piece has just finished playing, so a piece started ``len(piece)`` samples before the caller
clock at that moment; pieces that played back to back (the usual case) are written back to back
(:data:`SNAP_SAMPLES` absorbs the jitter of the marks' return trip), and a real gap (the buffer ran dry, or a
pause) is silence of its measured length, placed to within one 20 ms frame (marks are echoed on Twilio's frame
clock). Two limits, both from what marks can tell: a gap shorter than :data:`SNAP_SAMPLES` is closed up, and
the part of a piece the caller heard before a pause cut it is not in the file (Twilio never confirms it;
after ``continue`` the whole piece is, where it played).

Incremental. :class:`StereoMulawWriter` holds only a short window (:data:`WINDOW_SAMPLES`): once the caller
clock is that far past a sample, nothing can be placed before it any more, and it is interleaved and written.
The header's sizes are rewritten at every flush (every :data:`FLUSH_EVERY_SAMPLES`) and on close, so the file
on disk is a valid WAV at any moment: a crash loses at most the last window, never the file. A piece confirmed
so late that its place was already written (a stalled event loop) goes at the first free position (counted).

The writer is pure apart from the file object it is given: no clock, no Trio.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from pathlib import Path
from typing import BinaryIO, Final

from bridge._twilio import SAMPLE_RATE

__all__ = [
    "BYTES_PER_MINUTE",
    "CallRecording",
    "StereoMulawWriter",
    "delete_old_recordings",
    "read_mulaw_wav",
    "recording_path",
]

logger = logging.getLogger("bridge.recording")

CHANNELS: Final = 2
#: WAVE_FORMAT_MULAW (RFC 2361).
WAVE_FORMAT_MULAW: Final = 7
#: μ-law's code for 0 (what the phone plays when nothing is queued).
SILENCE: Final = 0xFF
BYTES_PER_MINUTE: Final = SAMPLE_RATE * CHANNELS * 60
#: How far behind the caller clock a played piece may still be placed: a mark comes back when its piece has
#: finished (100 ms pieces) plus the return trip; 1 s leaves room for a slow loop without holding much.
WINDOW_SAMPLES: Final = SAMPLE_RATE
#: A piece whose computed start is within this of where the previous one ended played right after it
#: (jitter of the marks' return trip, Twilio's 20 ms frame clock): 60 ms.
SNAP_SAMPLES: Final = 480
#: Write and rewrite the header at least this often: at most ~1 s (+ the window) is lost in a crash.
FLUSH_EVERY_SAMPLES: Final = SAMPLE_RATE
#: Recordings are readable by their owner and group only.
RECORDING_FILE_MODE: Final = 0o640
#: RIFF header + fmt (18) + fact (4) + data chunk header.
HEADER_BYTES: Final = 12 + (8 + 18) + (8 + 4) + 8


def wav_header(frames: int) -> bytes:
    """The 58-byte header of a stereo 8 kHz μ-law WAV holding ``frames`` sample frames."""
    data = frames * CHANNELS
    pad = data & 1
    riff_size = HEADER_BYTES - 8 + data + pad
    return (
        b"RIFF"
        + struct.pack("<I", riff_size)
        + b"WAVE"
        + b"fmt "
        + struct.pack(
            "<IHHIIHHH", 18, WAVE_FORMAT_MULAW, CHANNELS, SAMPLE_RATE, SAMPLE_RATE * CHANNELS, CHANNELS, 8, 0
        )
        + b"fact"
        + struct.pack("<II", 4, frames)
        + b"data"
        + struct.pack("<I", data)
    )


class StereoMulawWriter:
    """Writes a stereo μ-law WAV to ``out`` as the call goes (see the module docstring)."""

    def __init__(self, out: BinaryIO, *, window: int = WINDOW_SAMPLES, snap: int = SNAP_SAMPLES) -> None:
        self._out = out
        self._window = window
        self._snap = snap
        self._base = 0  # sample index of _left[0] / _right[0]; everything before it is on disk
        self._left = bytearray()
        self._right = bytearray()
        self._right_end = 0  # where the last right piece ended (absolute samples)
        self._unflushed = 0
        self.frames_written = 0
        self.late_samples = 0  # right audio placed later than computed (its place was already written)
        self.closed = False
        out.write(wav_header(0))

    @property
    def caller_samples(self) -> int:
        """The caller clock: samples of caller audio given so far."""
        return self._base + len(self._left)

    def add_caller(self, ulaw: bytes) -> None:
        """The caller's next audio (μ-law, in order)."""
        self._left += ulaw
        self._unflushed += len(ulaw)
        if self._unflushed >= FLUSH_EVERY_SAMPLES:
            self.flush()

    def add_heard(self, ulaw: bytes) -> None:
        """A piece the caller has just finished hearing (μ-law), placed on the caller clock."""
        if not ulaw:
            return
        start = self.caller_samples - len(ulaw)
        if start < self._base:
            self.late_samples += self._base - start
            start = self._base
        if start - self._right_end < self._snap:
            start = self._right_end  # never before the previous piece's end (>= _base)
        end = start + len(ulaw)
        offset = start - self._base
        right = self._right
        if len(right) < offset:
            right += bytes([SILENCE]) * (offset - len(right))
        right[offset : offset + len(ulaw)] = ulaw
        self._right_end = end

    def flush(self, *, everything: bool = False) -> None:
        """Write what can no longer change (all of it when ``everything``) and refresh the header."""
        if self.closed:
            return
        self._unflushed = 0
        upto = len(self._left) if everything else len(self._left) - self._window
        if everything:
            upto = max(upto, len(self._right))
        if upto > 0:
            left = self._left[:upto]
            right = self._right[:upto]
            if len(left) < upto:
                left += bytes([SILENCE]) * (upto - len(left))
            if len(right) < upto:
                right += bytes([SILENCE]) * (upto - len(right))
            frames = bytearray(2 * upto)
            frames[0::2] = left
            frames[1::2] = right
            self._out.write(frames)
            del self._left[:upto]
            del self._right[:upto]
            self._base += upto
            self.frames_written += upto
            self._right_end = max(self._right_end, self._base)
        self._write_header()

    def _write_header(self) -> None:
        out = self._out
        end = out.tell()
        out.seek(0)
        out.write(wav_header(self.frames_written))
        out.seek(end)
        out.flush()

    def close(self) -> None:
        """Write everything, pad the data chunk to an even size, and finalise the header."""
        if self.closed:
            return
        self.flush(everything=True)
        if (self.frames_written * CHANNELS) & 1:  # never with two channels; kept for the RIFF rule
            self._out.write(b"\0")
        self._write_header()
        self.closed = True


def read_mulaw_wav(data: bytes) -> tuple[bytes, bytes]:
    """The (left, right) μ-law channels of a WAV this module wrote (for tests and tools).

    Raises:
        ValueError: not a stereo 8 kHz μ-law WAV.
    """
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    pos = 12
    fmt: tuple[int, ...] | None = None
    while pos + 8 <= len(data):
        kind, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = data[pos + 8 : pos + 8 + size]
        if kind == b"fmt ":
            fmt = struct.unpack("<HHIIHH", body[:16])
        elif kind == b"data":
            if fmt is None or fmt[0] != WAVE_FORMAT_MULAW or fmt[1] != CHANNELS or fmt[2] != SAMPLE_RATE:
                raise ValueError(f"not stereo 8 kHz μ-law: fmt {fmt}")
            return bytes(body[0::2]), bytes(body[1::2])
        pos += 8 + size + (size & 1)
    raise ValueError("no data chunk")


def recording_path(directory: str | os.PathLike[str], call_sid: str) -> Path:
    """Where ``call_sid``'s recording lives (the SID is checked by the caller: letters and digits only)."""
    return Path(directory) / f"{call_sid}.wav"


class CallRecording:
    """One call's recording file: opened at the call's start, closed on every way the call ends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Owner read/write, group read: a recording is personal data.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, RECORDING_FILE_MODE)
        self._file = os.fdopen(fd, "w+b")  # closed by close(), on every end path
        self.writer = StereoMulawWriter(self._file)

    def close(self) -> None:
        if self.writer.closed:
            return
        try:
            self.writer.close()
        finally:
            self._file.close()
        if self.writer.late_samples:
            logger.info("%s: %d samples of heard audio placed late", self.path.name, self.writer.late_samples)

    @property
    def bytes_written(self) -> int:
        return HEADER_BYTES + self.writer.frames_written * CHANNELS


def delete_old_recordings(
    directory: str | os.PathLike[str], max_age_days: float, *, now: float | None = None
) -> int:
    """Delete recordings older than ``max_age_days`` (by modification time); returns how many."""
    cutoff = (time.time() if now is None else now) - max_age_days * 86400
    removed = 0
    root = Path(directory)
    if not root.is_dir():
        return 0
    for path in root.glob("CA*.wav"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed
