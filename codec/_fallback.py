"""Pure-Python/NumPy codec: the same names and byte-identical output as the compiled ``codec._mulaw``.

Used where the extension could not be built, or when ``SPEAKR_BRIDGE_PURE_PYTHON=1`` forces it.
Everything is vectorised -- table lookups, and the FIR as one matrix product (per polyphase branch)
over a strided view of the input -- with no per-sample Python loop.

Theory of operation (streams): the same as ``codec._mulaw``.  A stream keeps its unconsumed input
as PCM16LE bytes that start as K - 1 zero samples (an odd trailing byte simply stays at the end).
``process`` appends the new bytes, computes every output whose window is complete in float64 --
the coefficients are integers times 2**-S, so every product and partial sum is exact whatever the
summation order (BLAS included) -- rounds with the shared rule and drops the samples no future output
reads.  ``flush`` pads the last window with zeros, emits the tail and resets.

Rounding: with ``acc`` the exact sum scaled by 2**-S, ``acc + (1/2 + OFFSET)`` is exact and
positive, so truncating it to an integer is ``floor(acc + 1/2) + OFFSET``: the index into a table
that clips to int16 (and, for the fused encoder, also μ-law encodes) in the same lookup.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from codec._common import (
    SCALE_BITS,
    ULAW_DECODE_TABLE,
    ULAW_ENCODE_TABLE,
    FilterPlan,
    check_pcm_length,
    filter_plan,
)

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12

IMPLEMENTATION = "python"

__all__ = ["IMPLEMENTATION", "DownlinkEncoder", "Resampler", "ulaw_decode", "ulaw_encode"]

_U8 = np.dtype(np.uint8)
_I16 = np.dtype("<i2")
_U16 = np.dtype("<u2")
_ENC = np.frombuffer(ULAW_ENCODE_TABLE, dtype=_U8)
#: μ-law code of every 16-bit pattern: (x >> 2) & 0x3FFF is the pattern's top 14 bits.
_ENC16 = np.repeat(_ENC, 4)
_DEC = np.frombuffer(ULAW_DECODE_TABLE, dtype=_I16)

#: Offset of the clipping tables; every plan's ``peak`` is below it.
_OFFSET = 1 << 17
_SCALE = 2.0**-SCALE_BITS
_ROUND = 0.5 + _OFFSET


def ulaw_decode(data: Buffer) -> bytes:
    """Decode G.711 μ-law bytes to PCM16LE (ITU-T G.191 reference values).

    Args:
        data: μ-law codes, any bytes-like object.

    Returns:
        Two bytes of little-endian PCM per input byte.
    """
    # (A positional dtype: the keyword costs 20 % of this call.)
    pcm: bytes = _DEC.take(np.frombuffer(data, _U8)).tobytes()  # type: ignore[call-overload]
    return pcm


def ulaw_encode(pcm: Buffer) -> bytes:
    """Encode PCM16LE to G.711 μ-law, bit-exact with the ITU-T G.191 reference for every int16.

    Args:
        pcm: little-endian 16-bit samples, any bytes-like object of even length.

    Returns:
        One μ-law byte per sample.

    Raises:
        ValueError: ``pcm`` has an odd number of bytes.
    """
    try:
        patterns = np.frombuffer(pcm, _U16)  # type: ignore[call-overload]
    except ValueError:
        check_pcm_length(np.frombuffer(pcm, _U8).size)  # type: ignore[call-overload]  # raises if odd
        raise
    codes: bytes = _ENC16.take(patterns).tobytes()
    return codes


@cache
def _clip_tables() -> tuple[npt.NDArray[np.int16], npt.NDArray[np.uint8]]:
    """(int16 clip, μ-law of int16 clip) of every y in -OFFSET..OFFSET-1, indexed by y + OFFSET."""
    clipped = np.clip(np.arange(-_OFFSET, _OFFSET), -32768, 32767).astype(_I16)
    return clipped, _ENC16.take(clipped.view(_U16))


class _Stream:
    """Shared machinery of Resampler and DownlinkEncoder (see the module's theory of operation)."""

    __slots__ = ("_base", "_block", "_coef", "_m", "_pad", "_plan", "_raw", "_table")

    _plan: FilterPlan
    _coef: npt.NDArray[np.floating[Any]]
    _block: npt.NDArray[np.float64]
    _pad: npt.NDArray[np.float64]
    _table: npt.NDArray[np.int16] | npt.NDArray[np.uint8]
    _raw: bytes
    _base: int
    _m: int

    def _setup(self, in_rate: object, out_rate: object, ulaw: bool) -> None:
        plan = filter_plan(in_rate, out_rate)
        assert plan.peak < _OFFSET
        self._plan = plan
        self._coef = plan.coef * _SCALE  # exact: integers times a power of two
        if plan.up == 1:
            # Decimator: B = ceil(K/M) outputs per block; block b reads the 2G samples from q0 + b*G
            # (G = B*M >= K), so the FIR is one product of a strided (blocks x 2G) view with a banded
            # (2G x B) matrix.  The view's rows overlap by half: the copy BLAS needs is 2x the input,
            # where an (outputs x K) window matrix is K/M times it (measured 1.7x faster per frame).
            per_block = -(-plan.width // plan.down)
            stride = per_block * plan.down
            block = np.zeros((2 * stride, per_block))
            for k in range(per_block):  # setup only: B columns
                block[k * plan.down : k * plan.down + plan.width, k] = self._coef[0]
            self._block = block
            self._pad = np.zeros(3 * stride)  # room for the last block's rows past the input
        self._table = _clip_tables()[1 if ulaw else 0]
        self.reset()

    def reset(self) -> None:
        """Forget all input: the next ``process`` starts a new stream."""
        # Unconsumed input as PCM16LE bytes (and possibly an odd trailing byte), after K - 1 zeros.
        self._raw = bytes(2 * (self._plan.width - 1))
        self._base = 0
        self._m = 0

    def process(self, pcm: Buffer) -> bytes:
        """Feed PCM16LE samples; return every output sample they complete.

        Args:
            pcm: any bytes-like object, any length (an odd trailing byte waits for the next call).

        Returns:
            The output that depends only on input so far, minus the filter's delay.
        """
        if type(pcm) is not bytes:  # read it like the C buffer protocol does (same errors)
            pcm = np.frombuffer(pcm, _U8).tobytes()  # type: ignore[call-overload]
        raw = self._raw + pcm
        plan = self._plan
        num = plan.up * (self._base + (len(raw) >> 1) - plan.width + 1) - plan.delay
        if num <= 0 or -(-num // plan.down) <= self._m:
            self._raw = raw
            return b""
        return self._emit(raw, -(-num // plan.down))

    def flush(self) -> bytes:
        """End the stream: emit the tail as if silence followed, then reset.

        A dangling odd byte (half a sample) is discarded.

        Returns:
            The remaining output, so that the stream's output totals ceil(n_in * out / in) samples.
        """
        plan = self._plan
        raw = self._raw[: len(self._raw) & ~1]
        total = plan.total(self._base + (len(raw) >> 1) - plan.width + 1)
        out = b""
        if total > self._m:
            need = plan.window_start(total - 1) - self._base + plan.width
            out = self._emit(raw + bytes(2 * max(0, need - (len(raw) >> 1))), total)
        self.reset()
        return out

    def _emit(self, raw: bytes, m_end: int) -> bytes:
        plan = self._plan
        up, down, width = plan.up, plan.down, plan.width
        n_out = m_end - self._m
        samples = np.frombuffer(raw, _I16, len(raw) >> 1)
        if up == 1:
            per_block = self._block.shape[1]
            stride = per_block * down
            x = np.concatenate((samples, self._pad))
            q = self._m * down + int(plan.q_offset[0]) - self._base
            rows = np.ndarray((-(-n_out // per_block), 2 * stride), np.float64, x, q * 8, (stride * 8, 8))
            acc = np.dot(rows, self._block)
        else:
            x = samples.astype(np.float64)
            acc = np.empty(n_out)
            for k in range(min(up, n_out)):  # one strided product per polyphase branch
                m = self._m + k
                j = m % up
                q = (m // up) * down + int(plan.q_offset[j]) - self._base
                count = (n_out - k + up - 1) // up
                windows = np.ndarray((count, width), np.float64, x, q * 8, (down * 8, 8))
                acc[k::up] = np.dot(windows, self._coef[plan.phase[j]])
        acc += _ROUND
        out: bytes = self._table.take(acc.astype(np.intp)).tobytes()
        if len(out) != n_out * self._table.itemsize:
            out = out[: n_out * self._table.itemsize]
        self._m = m_end
        drop = min(plan.window_start(m_end) - self._base, len(raw) >> 1)
        self._raw = raw[2 * drop :]
        self._base += drop
        return out

    @property
    def in_rate(self) -> int:
        """Input sample rate, Hz."""
        return self._plan.in_rate

    @property
    def out_rate(self) -> int:
        """Output sample rate, Hz."""
        return self._plan.out_rate

    @property
    def delay_s(self) -> float:
        """Hold-back in seconds: the filter's group delay (output is otherwise time-aligned)."""
        return self._plan.delay_s


class Resampler(_Stream):
    """Streaming PCM16LE sample-rate converter: linear phase, deterministic, chunking-invariant.

    One per direction per call: it keeps the filter's history (and an odd byte) between calls, so
    chunk boundaries never click, and ``process(a) + process(b) + flush()`` equals
    ``process(a + b) + flush()`` byte for byte.  Output is delay-compensated (time-aligned with the
    input); only the group delay (``delay_s``, ~1.4 ms for 24 kHz -> 8 kHz) is held back.

    Args:
        in_rate: input rate in Hz (e.g. 24000).
        out_rate: output rate in Hz (e.g. 8000).

    Raises:
        ValueError: a rate is not a positive integer, or the ratio is unsupported.
    """

    __slots__ = ()

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self._setup(in_rate, out_rate, False)

    def __repr__(self) -> str:
        return f"Resampler({self._plan.in_rate!r}, {self._plan.out_rate!r})"


class DownlinkEncoder(_Stream):
    """The downlink hot path fused: PCM16LE 24 kHz in, μ-law 8 kHz out, one call per message.

    Output is byte-identical to ``ulaw_encode(Resampler(24000, 8000).process(pcm))`` (and likewise
    for ``flush``), in one pass and one allocation.
    """

    __slots__ = ()

    def __init__(self) -> None:
        self._setup(24000, 8000, True)

    def __repr__(self) -> str:
        return "DownlinkEncoder()"
