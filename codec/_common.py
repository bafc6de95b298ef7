"""Constants, tables, argument checks and filter design shared by both codec implementations.

Theory of operation
-------------------
Both implementations (``codec._mulaw``, compiled, and ``codec._fallback``, NumPy) take every number
that decides an output byte from this module, so they produce the same bytes:

* μ-law.  The encoder table is built from the ITU-T G.191 (STL) reference ``ulaw_compress``.  The
  reference turns a negative sample into its one's complement before dropping the two low bits, so
  the code depends only on ``x >> 2`` (arithmetic shift): a 16384-entry table indexed by
  ``(x >> 2) & 0x3FFF`` is exact for every int16.  The decoder table is ``ulaw_expand`` (which is also
  what CPython's ``audioop.ulaw2lin`` computes).

* Resampling.  A rational L/M polyphase FIR (L = up, M = down, gcd-reduced).  The prototype lowpass
  runs at ``L * in_rate``, is linear phase with an odd number of taps N = 2D + 1 (so the delay D is a
  whole number of prototype samples) and keeps ``0.425 * min_rate`` while stopping everything above
  ``0.575 * min_rate`` (3.4 / 4.6 kHz for 8 kHz).  It is an equiripple (Parks-McClellan) design,
  +-0.13 dB / -90 dB: for the same stopband it needs ~40 % fewer taps than a Kaiser window, which is
  less CPU and less delay (24 kHz -> 8 kHz: 69 taps and 1.4 ms instead of ~115 taps and 2.4 ms).
  Where the equiripple design would be too long (many-phase ratios such as 44.1 kHz) a
  Kaiser-windowed sinc with the same band edges is used.

  Coefficients are integers: ``c = round(h * L * 2**SCALE_BITS)``, each split as ``c = 256*hi + lo``
  with ``hi``, ``lo`` int16 and ``-128 <= lo < 128``.  An output sample is the exact integer
  ``acc = sum(x * c)`` -- the compiled code sums ``x*hi`` and ``x*lo`` in int32 lanes where this
  module proves neither sum can overflow (``FilterPlan.split``; else ``x*c`` in int64), the fallback
  sums in float64, exact because every partial sum is an integer (times 2**-S) far below 2**53 --
  rounded with one rule, ``floor(acc / 2**S + 1/2)``, and clipped to int16.  Exact arithmetic makes
  the two implementations bit-identical whatever their summation order.

  Output sample m is prototype sample ``t = m*M + D``: the filter's delay is compensated, so output is
  time-aligned with input, and the only hold-back is D prototype samples (the group delay).  With
  ``buf = (K - 1 zeros) + x`` it reads the K samples ``buf[q : q + K]``, ``q = t // L``, against the
  reversed sub-filter of phase ``t % L``.  Both repeat every L outputs, so they are two small tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "MAX_FACTOR",
    "PASS_EDGE",
    "SCALE_BITS",
    "SPLIT_MAX_WIDTH",
    "STOP_EDGE",
    "ULAW_DECODE_TABLE",
    "ULAW_ENCODE_TABLE",
    "FilterPlan",
    "check_pcm_length",
    "filter_plan",
    "ulaw_compress",
    "ulaw_expand",
]

# ---------------------------------------------------------------------------------------------------
# μ-law (ITU-T G.711 as implemented by the G.191 software tool library)


def ulaw_compress(x: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """G.191 ``ulaw_compress`` for int16 samples, vectorised.

    Args:
        x: 16-bit linear samples (any integer array-like in -32768..32767).

    Returns:
        The μ-law codes, one byte per sample.
    """
    lin = np.asarray(x, dtype=np.int32)
    # One's complement of negative samples before the 2-bit shift (this, not negation, is the reference).
    absno = np.where(lin < 0, (~lin) >> 2, lin >> 2) + 33
    absno = np.minimum(absno, 0x1FFF)
    segno = np.ones_like(absno)
    i = absno >> 6
    for _ in range(8):  # at most 7 shifts empty a 13-bit value
        segno += i != 0
        i >>= 1
    high = 8 - segno
    low = 0x0F - ((absno >> segno) & 0x0F)
    code = (high << 4) | low
    out: npt.NDArray[np.uint8] = np.where(lin >= 0, code | 0x80, code).astype(np.uint8)
    return out


def ulaw_expand(code: npt.ArrayLike) -> npt.NDArray[np.int16]:
    """G.191 ``ulaw_expand``: μ-law codes to 16-bit linear samples, vectorised.

    Args:
        code: μ-law codes (0..255).

    Returns:
        The int16 samples.
    """
    log = np.asarray(code, dtype=np.int32)
    sign = np.where(log < 0x80, -1, 1)
    mantissa = ~log
    exponent = (mantissa >> 4) & 0x07
    segment = exponent + 1
    mantissa &= 0x0F
    step = 4 << segment
    value = sign * ((0x80 << exponent) + step * mantissa + step // 2 - 4 * 33)
    out: npt.NDArray[np.int16] = value.astype(np.int16)
    return out


#: μ-law code for every int16 x, indexed by ``(x >> 2) & 0x3FFF`` (16384 bytes): entry i is the
#: code of the sample whose x >> 2 is i read as a signed 14-bit number.
ULAW_ENCODE_TABLE: bytes = ulaw_compress(
    ((np.arange(1 << 14, dtype=np.int32) ^ (1 << 13)) - (1 << 13)) << 2
).tobytes()

#: PCM16 little-endian sample for each μ-law code, 256 x 2 bytes.
ULAW_DECODE_TABLE: bytes = ulaw_expand(np.arange(256)).astype("<i2").tobytes()


# ---------------------------------------------------------------------------------------------------
# Argument checks, shared so both implementations raise the same errors with the same words.
# (Bytes-like inputs are read with the buffer protocol's simple request in both implementations --
# PyObject_GetBuffer(PyBUF_SIMPLE) in C, numpy.frombuffer in the fallback -- which raise the same
# TypeError / BufferError / ValueError for non-buffers and non-contiguous buffers.)


def check_pcm_length(nbytes: int) -> None:
    """Reject PCM16 input of odd length.

    Raises:
        ValueError: ``nbytes`` is odd (half a sample).
    """
    if nbytes & 1:
        raise ValueError(
            f"PCM16 input must have an even number of bytes (2 per sample), got {nbytes!r} bytes"
        )


# ---------------------------------------------------------------------------------------------------
# Resampling filters

#: Passband edge and stopband edge, as fractions of the lower of the two rates.
PASS_EDGE = 0.425
STOP_EDGE = 0.575
#: Design targets of the prototype lowpass (the tests require +-0.5 dB and >= 80 dB).
PASS_RIPPLE = 0.015  # +-0.13 dB
STOP_ATTEN_DB = 90.0
#: Fractional bits of the integer coefficients.
SCALE_BITS = 22
#: Largest accepted L or M after gcd reduction (44.1 kHz <-> 8 kHz needs 80/441).
MAX_FACTOR = 1024
#: Largest accepted sample rate, in Hz.
MAX_RATE = 1_536_000
#: Largest prototype designed by the exchange algorithm; beyond it, Kaiser window.
_REMEZ_MAX_TAPS = 401
#: Taps per phase are padded to a multiple of this (one SSE register of int16).
_WIDTH_ALIGN = 8
#: Taps per phase up to which the int32 sums of x * lo (|lo| <= 128) provably cannot overflow;
#: wider branches take the compiled code's int64 path (see FilterPlan.split).
SPLIT_MAX_WIDTH = 496
#: Bound on taps per phase (memory, not arithmetic: beyond SPLIT_MAX_WIDTH sums are int64).
_MAX_WIDTH = 8192


def _bary_weights(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Barycentric weights 1 / prod_{j != k} (x_k - x_j), scaled by a common factor (log domain)."""
    diff = x[:, None] - x[None, :]
    np.fill_diagonal(diff, 1.0)
    log_abs = np.log(np.abs(diff)).sum(axis=1)
    sign = np.prod(np.sign(diff), axis=1)
    weights: npt.NDArray[np.float64] = sign * np.exp(log_abs.min() - log_abs)
    return weights


def _bary_eval(
    x: npt.NDArray[np.float64],
    nodes: npt.NDArray[np.float64],
    values: npt.NDArray[np.float64],
    weights: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """Evaluate the polynomial interpolating (nodes, values) at x (second barycentric form)."""
    diff = x[:, None] - nodes[None, :]
    exact = diff == 0.0
    diff[exact] = 1.0
    c = weights / diff
    out: npt.NDArray[np.float64] = (c @ values) / c.sum(axis=1)
    hit_rows, hit_cols = np.nonzero(exact)
    out[hit_rows] = values[hit_cols]
    return out


def _alternating_extrema(err: npt.NDArray[np.float64], bands: tuple[slice, ...]) -> list[int]:
    """Indices of the local extrema of err in each band, merged so that their signs alternate."""
    found: list[int] = []
    for band in bands:
        e = err[band]
        lo = np.concatenate(([-np.inf], e[:-1]))
        hi = np.concatenate((e[1:], [-np.inf]))
        peaks = (e > 0) & (e >= lo) & (e >= hi)
        lo = np.concatenate(([np.inf], e[:-1]))
        hi = np.concatenate((e[1:], [np.inf]))
        dips = (e < 0) & (e <= lo) & (e <= hi)
        found.extend((np.flatnonzero(peaks | dips) + band.start).tolist())
    merged: list[int] = []
    for idx in found:  # design time only: a few dozen candidates
        if merged and (err[idx] > 0) == (err[merged[-1]] > 0):
            if abs(err[idx]) > abs(err[merged[-1]]):
                merged[-1] = idx
        else:
            merged.append(idx)
    return merged


def _remez_lowpass(
    numtaps: int, f_pass: float, f_stop: float, stop_weight: float
) -> tuple[npt.NDArray[np.float64], float]:
    """Equiripple linear-phase lowpass (Parks-McClellan exchange), band edges in cycles/sample.

    Returns:
        The taps (unit DC gain) and the final weighted ripple |delta|; the passband deviates by
        delta and the stopband by delta / stop_weight.
    """
    r = (numtaps - 1) // 2
    n_ext = r + 2
    n_grid = 16 * n_ext
    span = f_pass + 0.5 - f_stop
    n_pass = max(n_ext, math.ceil(n_grid * f_pass / span))
    n_stop = max(n_ext, math.ceil(n_grid * (0.5 - f_stop) / span))
    freq = np.concatenate((np.linspace(0.0, f_pass, n_pass), np.linspace(f_stop, 0.5, n_stop)))
    desired = np.concatenate((np.ones(n_pass), np.zeros(n_stop)))
    weight = np.concatenate((np.ones(n_pass), np.full(n_stop, stop_weight)))
    x = np.cos(2.0 * np.pi * freq)
    bands = (slice(0, n_pass), slice(n_pass, n_pass + n_stop))
    sign = (-1.0) ** np.arange(n_ext)
    ext = np.linspace(0, len(freq) - 1, n_ext).round().astype(np.intp)
    delta = 0.0
    nodes = values = node_weights = np.zeros(0)
    for _ in range(60):
        xe = x[ext]
        w = _bary_weights(xe)
        delta = float(np.dot(w, desired[ext]) / np.dot(w, sign / weight[ext]))
        nodes = xe[:-1]
        values = (desired[ext] - sign * delta / weight[ext])[:-1]
        node_weights = _bary_weights(nodes)
        err = weight * (desired - _bary_eval(x, nodes, values, node_weights))
        new = _alternating_extrema(err, bands)
        if len(new) < n_ext:
            break
        while len(new) > n_ext:
            new.pop(0 if abs(err[new[0]]) < abs(err[new[-1]]) else -1)
        converged = np.max(np.abs(err)) - abs(delta) <= 1e-6 * abs(delta)
        ext = np.asarray(new, dtype=np.intp)
        if converged:
            break
    # Sample the amplitude response at numtaps frequencies; its inverse DFT is the impulse response.
    amp = _bary_eval(np.cos(2.0 * np.pi * np.arange(numtaps) / numtaps), nodes, values, node_weights)
    taps = np.roll(np.fft.ifft(amp).real, r)
    return (taps + taps[::-1]) / 2.0, abs(delta)


def _kaiser_lowpass(f_pass: float, f_stop: float, atten_db: float) -> npt.NDArray[np.float64]:
    """Kaiser-windowed sinc lowpass (unit DC gain), band edges in cycles/sample."""
    width = 2.0 * np.pi * (f_stop - f_pass)
    numtaps = math.ceil((atten_db - 7.95) / (2.285 * width)) + 1
    numtaps |= 1
    beta = 0.1102 * (atten_db - 8.7)
    n = np.arange(numtaps) - (numtaps - 1) / 2.0
    cutoff = (f_pass + f_stop) / 2.0
    taps: npt.NDArray[np.float64] = 2.0 * cutoff * np.sinc(2.0 * cutoff * n) * np.kaiser(numtaps, beta)
    taps /= taps.sum()
    return taps


def _stopband_db(taps: npt.NDArray[np.float64], f_pass: float, f_stop: float) -> tuple[float, float]:
    """(worst passband deviation in dB, worst stopband gain in dB) of unit-gain taps."""
    nfft = 1 << max(16, (len(taps) * 16 - 1).bit_length())
    mag = np.abs(np.fft.rfft(taps, nfft))
    freq = np.arange(len(mag)) / nfft
    passband = mag[freq <= f_pass]
    ripple = float(np.max(np.abs(20.0 * np.log10(passband))))
    stop = float(20.0 * np.log10(np.max(mag[freq >= f_stop]) + 1e-300))
    return ripple, stop


def _prototype(f_pass: float, f_stop: float) -> npt.NDArray[np.float64]:
    """The shortest equiripple lowpass meeting the design targets (Kaiser where that is too long)."""
    d_stop = 10.0 ** (-STOP_ATTEN_DB / 20.0)
    # Kaiser's (1974) estimate of the equiripple length; start a little under it and grow.
    estimate = (-20.0 * math.log10(math.sqrt(PASS_RIPPLE * d_stop)) - 13.0) / (14.6 * (f_stop - f_pass)) + 1
    numtaps = max(3, int(estimate) - 6) | 1
    ripple_db = 20.0 * math.log10(1.0 + PASS_RIPPLE)
    for _ in range(12):  # a few lengths around the estimate; each is one exchange design
        if numtaps > _REMEZ_MAX_TAPS:
            break
        taps, delta = _remez_lowpass(numtaps, f_pass, f_stop, PASS_RIPPLE / d_stop)
        if delta <= PASS_RIPPLE:
            ripple, stop = _stopband_db(taps, f_pass, f_stop)
            if ripple <= ripple_db + 0.01 and stop <= -STOP_ATTEN_DB + 0.5:
                return taps
        numtaps += 2
    return _kaiser_lowpass(f_pass, f_stop, STOP_ATTEN_DB)


def design_taps(in_rate: int, out_rate: int) -> npt.NDArray[np.int64]:
    """Design the integer prototype ``round(h * L * 2**SCALE_BITS)`` for a pair of valid rates."""
    g = math.gcd(in_rate, out_rate)
    up, down = out_rate // g, in_rate // g
    if up == down:  # same rate: the identity filter, no delay
        return np.array([1 << SCALE_BITS], dtype=np.int64)
    band = min(in_rate, out_rate) / (up * in_rate)
    proto = _prototype(PASS_EDGE * band, STOP_EDGE * band)
    taps: npt.NDArray[np.int64] = np.rint(proto * (up * float(1 << SCALE_BITS))).astype(np.int64)
    return taps


@dataclass(frozen=True, slots=True, eq=False)
class FilterPlan:
    """Everything that decides a resampler's output, for one (in_rate, out_rate) pair.

    Attributes:
        in_rate: input sample rate, Hz.
        out_rate: output sample rate, Hz.
        up: L, the interpolation factor (gcd-reduced).
        down: M, the decimation factor (gcd-reduced).
        taps: N, the prototype's length (odd).
        proto: (N,) int64, the prototype's integer taps ``c = round(h * L * 2**SCALE_BITS)``.
        delay: D = (N - 1) / 2, the group delay in prototype samples (rate L * in_rate).
        width: K, taps per polyphase branch, padded with zeros to a multiple of 8.
        split: whether int32 sums of x * coef_hi and x * coef_lo provably cannot overflow.
        coef: (L, K) int32, reversed branch p at row p: ``coef[p, i] = c[p + L*(K-1-i)]``.
        coef_hi: (L, K) int16, ``(coef + 128) >> 8``.
        coef_lo: (L, K) int16, ``coef - 256 * coef_hi``, in -128..127.
        phase: (L,) int32, branch used by output m: ``phase[m % L]``.
        q_offset: (L,) int64, window start of output m: ``(m // L) * M + q_offset[m % L]``.
        delay_s: the hold-back, D / (L * in_rate) seconds.
        peak: bound on |output| before clipping to int16, over all int16 inputs.
    """

    in_rate: int
    out_rate: int
    up: int
    down: int
    taps: int
    proto: npt.NDArray[np.int64]
    delay: int
    width: int
    split: bool
    coef: npt.NDArray[np.int32]
    coef_hi: npt.NDArray[np.int16]
    coef_lo: npt.NDArray[np.int16]
    phase: npt.NDArray[np.int32]
    q_offset: npt.NDArray[np.int64]
    delay_s: float
    peak: int

    def total(self, n_in: int) -> int:
        """How many outputs n_in input samples make in all: ceil(n_in * L / M)."""
        return -((-self.up * n_in) // self.down)

    def window_start(self, m: int) -> int:
        """q for output m: it reads ``buf[q : q + K]`` with ``buf = (K - 1 zeros) + x``."""
        return (m // self.up) * self.down + int(self.q_offset[m % self.up])


def _check_rate(name: str, rate: object) -> int:
    if isinstance(rate, bool) or not isinstance(rate, int | np.integer):
        raise ValueError(f"{name} must be a positive integer number of Hz, got {rate!r}")
    value = int(rate)
    if not 0 < value <= MAX_RATE:
        raise ValueError(f"{name} must be between 1 and {MAX_RATE} Hz, got {rate!r}")
    return value


def filter_plan(in_rate: object, out_rate: object) -> FilterPlan:
    """Validate the rates and return their (cached) filter plan.

    Raises:
        ValueError: a rate is not a positive integer, or the reduced ratio needs more than
            ``MAX_FACTOR`` phases.
    """
    i = _check_rate("in_rate", in_rate)
    o = _check_rate("out_rate", out_rate)
    g = math.gcd(i, o)
    if max(i, o) // g > MAX_FACTOR:
        raise ValueError(
            f"unsupported resampling ratio {in_rate!r} -> {out_rate!r} Hz: "
            f"{o // g}/{i // g} needs more than {MAX_FACTOR} phases"
        )
    return _plan(i, o)


def _frozen(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    array.setflags(write=False)
    return array


@lru_cache(maxsize=32)
def _plan(in_rate: int, out_rate: int) -> FilterPlan:
    g = math.gcd(in_rate, out_rate)
    up, down = out_rate // g, in_rate // g
    half = FROZEN_TAPS.get((in_rate, out_rate))
    c = np.array(half + half[-2::-1], dtype=np.int64) if half else design_taps(in_rate, out_rate)
    ntaps = len(c)
    delay = (ntaps - 1) // 2
    width = -(-ntaps // up)
    width = -(-width // _WIDTH_ALIGN) * _WIDTH_ALIGN
    if width > _MAX_WIDTH:
        raise ValueError(f"unsupported resampling ratio {in_rate!r} -> {out_rate!r} Hz: filter too long")
    padded = np.zeros(up * width, dtype=np.int64)
    padded[:ntaps] = c
    # Branch p holds c[p], c[p + L], ...; reversed so it lines up with ascending samples.
    coef = padded.reshape(width, up).T[:, ::-1].copy()
    hi = (coef + 128) >> 8
    lo = coef - 256 * hi
    # The split path sums x*hi and x*lo in int32.  Neither sum can leave int32 for any int16 input
    # when sum|hi| * 2**15 < 2**31 and 2**15 * 128 * K < 2**31; otherwise the kernel sums in int64.
    split = width <= SPLIT_MAX_WIDTH and int(np.abs(hi).sum(axis=1).max()) * 32768 < 1 << 31
    assert not split or 32768 * 128 * width < 1 << 31
    t = np.arange(up, dtype=np.int64) * down + delay
    return FilterPlan(
        in_rate=in_rate,
        out_rate=out_rate,
        up=up,
        down=down,
        taps=ntaps,
        proto=_frozen(c),
        delay=delay,
        width=width,
        split=split,
        coef=_frozen(coef.astype(np.int32)),
        coef_hi=_frozen(hi.astype(np.int16)),
        coef_lo=_frozen(lo.astype(np.int16)),
        phase=_frozen((t % up).astype(np.int32)),
        q_offset=_frozen(t // up),
        delay_s=delay / (up * in_rate),
        peak=(int(np.abs(coef).sum(axis=1).max()) * 32768 >> SCALE_BITS) + 1,
    )


#: The integer prototypes of the usual ratios, designed once by ``design_taps`` and frozen here (first
#: half up to the centre tap; the rest mirrors it), so that their output never depends on the floating
#: point of the machine that would otherwise design them.  tests/codec/test_filter_design.py checks
#: that ``design_taps`` still produces them.
# fmt: off
FROZEN_TAPS: dict[tuple[int, int], tuple[int, ...]] = {
    (24000, 8000): (
        -788, -3002, -6444, -8981, -7303, 213, 10491, 16160, 10936, -3451, -15743, -13108, 6195, 27286,
        28782, 3091, -31377, -41603, -10138, 42135, 66715, 30063, -47278, -96478, -57639, 55756, 148297,
        114138, -59174, -244545, -243775, 63895, 603935, 1121441, 1334515,
    ),
    (8000, 24000): (
        -2364, -9005, -19333, -26944, -21908, 638, 31472, 48480, 32808, -10354, -47230, -39323, 18584,
        81858, 86347, 9274, -94132, -124810, -30413, 126406, 200144, 90188, -141833, -289435, -172917,
        167269, 444890, 342413, -177522, -733635, -731325, 191685, 1811804, 3364322, 4003544,
    ),
    (16000, 8000): (
        -834, -6182, -15538, -15894, 2825, 19354, 2076, -27660, -10807, 38154, 25492, -49739, -48284, 61570,
        82662, -72802, -135647, 82609, 225383, -90238, -419085, 95081, 1326275, 2000410,
    ),
    (8000, 16000): (
        -1668, -12365, -31076, -31788, 5649, 38708, 4153, -55319, -21613, 76309, 50984, -99479, -96569,
        123139, 165324, -145605, -271295, 165218, 450766, -180475, -838170, 190162, 2652549, 4000821,
    ),
    (48000, 8000): (
        -218, -539, -1100, -1906, -2919, -4029, -5056, -5766, -5918, -5323, -3906, -1762, 826, 3410, 5451,
        6427, 5974, 4005, 783, -3082, -6722, -9194, -9701, -7828, -3703, 1950, 7905, 12679, 14880, 13577,
        8618, 774, -8327, -16507, -21526, -21659, -16218, -5869, 7360, 20421, 29901, 32867, 27680, 14602,
        -4030, -24121, -40646, -48811, -45318, -29413, -3429, 27369, 55695, 73776, 75216, 56788, 19720,
        -29880, -81656, -122655, -139749, -122352, -64899, 31482, 158495, 301585, 442114, 560444, 639338,
        667028,
    ),
    (8000, 48000): (
        -1306, -3233, -6602, -11436, -17512, -24175, -30335, -34595, -35508, -31935, -23436, -10574, 4955,
        20463, 32703, 38560, 35846, 24033, 4698, -18491, -40333, -55161, -58207, -46970, -22218, 11698,
        47429, 76076, 89279, 81465, 51710, 4645, -49964, -99043, -129155, -129956, -97311, -35212, 44162,
        122524, 179408, 197201, 166083, 87610, -24180, -144727, -243874, -292863, -271908, -176478, -20574,
        164215, 334172, 442657, 451296, 340728, 118321, -179282, -489936, -735932, -838492, -734113,
        -389397, 188889, 950972, 1809511, 2652683, 3362661, 3836026, 4002166,
    ),
    (24000, 16000): (
        -1576, -6003, -12889, -17963, -14606, 425, 20981, 32320, 21872, -6903, -31487, -26216, 12389, 54572,
        57565, 6183, -62755, -83207, -20275, 84270, 133430, 60125, -94555, -192957, -115278, 111513, 296593,
        228276, -118348, -489090, -487550, 127790, 1207869, 2242881, 2669029,
    ),
    (16000, 24000): (
        -2364, -9005, -19333, -26944, -21908, 638, 31472, 48480, 32808, -10354, -47230, -39323, 18584,
        81858, 86347, 9274, -94132, -124810, -30413, 126406, 200144, 90188, -141833, -289435, -172917,
        167269, 444890, 342413, -177522, -733635, -731325, 191685, 1811804, 3364322, 4003544,
    ),
}
# fmt: on
