"""DownlinkEncoder: the fused 24 kHz PCM16 -> 8 kHz μ-law hot path equals its two-step definition."""

from __future__ import annotations

from types import ModuleType

import numpy as np
from codec_signals import LOUD, MEDIUM, alias_hz, amplitudes, db, tone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def _two_step(impl: ModuleType, pieces: list[bytes]) -> bytes:
    resampler = impl.Resampler(24000, 8000)
    pcm = b"".join(resampler.process(p) for p in pieces) + resampler.flush()
    return impl.ulaw_encode(pcm)  # type: ignore[no-any-return]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=4000),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=10),
    loud=st.booleans(),
)
def test_fused_output_is_byte_identical_to_resample_then_encode(
    impl: ModuleType, data: bytes, cuts: list[int], loud: bool
) -> None:
    if loud:  # full-scale square-ish input drives the clipping path too
        data = bytes(b | 0x7F if i % 2 else b for i, b in enumerate(data))
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    pieces = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    encoder = impl.DownlinkEncoder()
    fused = [encoder.process(p) for p in pieces]
    tail = encoder.flush()
    assert b"".join(fused) + tail == _two_step(impl, pieces)
    # ... and call by call, not only in total (one Twilio message per Speakr message).
    resampler = impl.Resampler(24000, 8000)
    assert fused == [impl.ulaw_encode(resampler.process(p)) for p in pieces]


def test_one_20_ms_message_gives_160_codes_in_steady_state(impl: ModuleType) -> None:
    encoder = impl.DownlinkEncoder()
    pcm = tone(1000, 24000, 0.2, MEDIUM)
    sizes = [len(encoder.process(pcm[i : i + 960])) for i in range(0, len(pcm), 960)]
    held = int(encoder.delay_s * 8000)  # 1.4 ms: 11 samples wait for the filter's look-ahead
    assert held == 11
    assert sizes[0] == 160 - held
    assert set(sizes[1:]) == {160}
    assert len(encoder.flush()) == held


def test_fused_output_is_anti_aliased(impl: ModuleType) -> None:
    # A 5 kHz tone at 24 kHz would land on 3 kHz if samples were simply dropped.
    codes = impl.DownlinkEncoder().process(tone(5000, 24000, 1.5, LOUD))
    pcm = impl.ulaw_decode(codes)
    # μ-law's own quantisation noise (~-38 dB per sample, spread) stays far below a real alias.
    assert db(amplitudes(pcm, 8000)[alias_hz(5000, 8000)] / LOUD) < -70
    speech_band = impl.ulaw_decode(impl.DownlinkEncoder().process(tone(1000, 24000, 1.5, MEDIUM)))
    assert abs(db(amplitudes(speech_band, 8000)[1000] / MEDIUM)) < 0.5


def test_reset_and_repr(impl: ModuleType) -> None:
    encoder = impl.DownlinkEncoder()
    pcm = np.random.default_rng(3).integers(-9000, 9000, 999, dtype=np.int16).astype("<i2").tobytes()
    first = encoder.process(pcm)
    encoder.process(b"\x01\x02\x03")
    encoder.reset()
    assert encoder.process(pcm) == first
    assert repr(encoder) == "DownlinkEncoder()"
    assert (encoder.in_rate, encoder.out_rate) == (24000, 8000)
    assert encoder.delay_s == impl.Resampler(24000, 8000).delay_s
