"""The uplink framer: Twilio's 20 ms caller audio re-cut into the exact 512-byte frames Speakr wants.

Theory of operation
-------------------
Twilio delivers 20 ms frames (160 μ-law bytes, 320 bytes once decoded to PCM16LE); Speakr wants binary frames
of exactly 512 bytes (256 samples, 32 ms). The framer keeps one ``bytearray``: bytes are appended as they come
and whole 512-byte frames are cut from its head, so every sample goes out once, in order, with no padding and
no gap. Only ``finish()`` (the end of the call) pads the last partial frame with zero samples.

Before Speakr says ``ready`` the framer holds at most ``preroll_bytes`` (1 s) of the most recent audio; older
audio is dropped from the head and counted in ``dropped_bytes``. ``start()`` turns it into frames.

Cost: appending and deleting at the head of a ``bytearray`` are amortised O(1) per byte in CPython (a head
delete moves the start pointer, it does not shift the rest), frames are copied out once through a memoryview.
"""

from __future__ import annotations

from typing import Final

from bridge._twilio import SAMPLE_RATE

__all__ = ["FRAME_BYTES", "UplinkFramer"]

#: One Speakr frame: 256 samples of PCM16LE at 8 kHz = 32 ms.
FRAME_BYTES: Final = 512


class UplinkFramer:
    """Re-frames caller audio (8 kHz) into exact frames, holding a preroll until ready.

    Args:
        frame_bytes: bytes per frame (a whole number of samples).
        preroll_bytes: the most recent audio kept before :meth:`start` (whole samples; None: one second).
        pcm: PCM16LE, two bytes a sample, the last frame padded with zero samples (Speakr's fixed frames);
            else μ-law, one byte a sample, the last frame sent short (agents that take any size).
    """

    __slots__ = (
        "_buffer", "_dropped_bytes", "_frame_bytes", "_pad", "_preroll_bytes", "_ready", "_sample_bytes"
    )

    def __init__(
        self, *, frame_bytes: int = FRAME_BYTES, preroll_bytes: int | None = None, pcm: bool = True
    ) -> None:
        self._sample_bytes = 2 if pcm else 1
        self._pad = pcm
        if preroll_bytes is None:
            preroll_bytes = SAMPLE_RATE * self._sample_bytes
        if frame_bytes < 1 or frame_bytes % self._sample_bytes:
            raise ValueError(f"frame_bytes must be a whole number of samples, not {frame_bytes!r}")
        if preroll_bytes < 0 or preroll_bytes % self._sample_bytes:
            raise ValueError(f"preroll_bytes must be even and not negative, not {preroll_bytes!r}")
        self._frame_bytes = frame_bytes
        self._preroll_bytes = preroll_bytes
        self._buffer = bytearray()
        self._dropped_bytes = 0
        self._ready = False

    @property
    def ready(self) -> bool:
        """True once :meth:`start` was called: audio then goes out as it comes."""
        return self._ready

    @property
    def dropped_bytes(self) -> int:
        """Caller audio dropped before ``ready`` because it was older than the preroll."""
        return self._dropped_bytes

    @property
    def buffered_bytes(self) -> int:
        """Bytes waiting: the preroll before ``ready``, the start of the next frame after it."""
        return len(self._buffer)

    def feed(self, pcm: bytes) -> list[bytes]:
        """Add caller audio; returns the frames it completes (none before ``ready``).

        Raises:
            ValueError: ``pcm`` has an odd number of bytes (it would split a sample).
        """
        if len(pcm) % self._sample_bytes:
            raise ValueError(f"PCM16 audio must have an even number of bytes, not {len(pcm)!r}")
        buffer = self._buffer
        buffer += pcm
        if self._ready:
            return self._frames()
        excess = len(buffer) - self._preroll_bytes
        if excess > 0:
            del buffer[:excess]  # even: both lengths are even
            self._dropped_bytes += excess
        return []

    def start(self) -> list[bytes]:
        """Speakr is ready: returns the held audio as whole frames; the remainder waits for more audio."""
        self._ready = True
        return self._frames()

    def finish(self) -> bytes | None:
        """The call is over: returns the last partial frame (PCM: padded with zero samples; μ-law: as it is),
        or None if none.

        Before ``ready`` it returns None: Speakr never asked for audio.
        """
        if not self._ready or not self._buffer:
            return None
        frame = bytes(self._buffer)
        if self._pad:
            frame += bytes(self._frame_bytes - len(frame))
        self._buffer.clear()
        return frame

    def _frames(self) -> list[bytes]:
        buffer = self._buffer
        size = self._frame_bytes
        count = len(buffer) // size
        if not count:
            return []
        with memoryview(buffer) as view:
            frames = [bytes(view[i : i + size]) for i in range(0, count * size, size)]
        del buffer[: count * size]
        return frames
