"""The shared filter design: equiripple prototypes that meet the band specification by themselves."""

from __future__ import annotations

import numpy as np
import pytest

from codec._common import (
    FROZEN_TAPS,
    PASS_EDGE,
    SCALE_BITS,
    STOP_EDGE,
    _remez_lowpass,
    _stopband_db,
    design_taps,
    filter_plan,
)

RATIOS = [
    (24000, 8000),
    (16000, 8000),
    (48000, 8000),
    (8000, 24000),
    (8000, 16000),
    (8000, 48000),
    (24000, 16000),
    (16000, 24000),
    (44100, 8000),
    (8000, 44100),
]


def _ids(rates: tuple[int, int]) -> str:
    return f"{rates[0]}-{rates[1]}"


@pytest.mark.parametrize("rates", RATIOS, ids=_ids)
def test_integer_prototype_meets_the_band_specification(rates: tuple[int, int]) -> None:
    in_rate, out_rate = rates
    plan = filter_plan(in_rate, out_rate)
    assert plan.taps % 2 == 1 and np.array_equal(plan.proto, plan.proto[::-1])  # linear phase
    assert plan.delay_s <= 0.0025
    band = min(in_rate, out_rate) / (plan.up * in_rate)
    taps = plan.proto / (plan.up * 2.0**SCALE_BITS)
    ripple_db, stop_db = _stopband_db(taps, PASS_EDGE * band, STOP_EDGE * band)
    assert ripple_db <= 0.15
    assert stop_db <= -89.0


@pytest.mark.parametrize("rates", RATIOS, ids=_ids)
def test_polyphase_tables_are_the_prototype_rearranged(rates: tuple[int, int]) -> None:
    plan = filter_plan(*rates)
    assert np.array_equal(plan.coef_hi.astype(np.int64) * 256 + plan.coef_lo, plan.coef)
    assert plan.coef_lo.min() >= -128 and plan.coef_lo.max() < 128
    rebuilt = plan.coef[:, ::-1].T.reshape(-1)  # row p, reversed, holds c[p], c[p + L], ...
    assert np.array_equal(rebuilt[: plan.taps], plan.proto)
    assert not rebuilt[plan.taps :].any()
    if plan.split:  # the compiled kernel's int32 sums cannot overflow for any int16 input
        assert int(np.abs(plan.coef_hi).sum(axis=1).max()) * 32768 < 2**31
        assert 32768 * 128 * plan.width < 2**31


def test_exchange_algorithm_matches_scipy_remez() -> None:
    signal = pytest.importorskip("scipy.signal")
    f_pass, f_stop, weight = 3400 / 24000, 4600 / 24000, 2000.0
    for numtaps in (45, 69, 91):
        ours, _ = _remez_lowpass(numtaps, f_pass, f_stop, weight)
        theirs = signal.remez(numtaps, [0, f_pass, f_stop, 0.5], [1, 0], weight=[1, weight], fs=1.0)
        our_ripple, our_stop = _stopband_db(ours, f_pass, f_stop)
        their_ripple, their_stop = _stopband_db(theirs, f_pass, f_stop)
        assert our_stop == pytest.approx(their_stop, abs=0.5)
        assert our_ripple == pytest.approx(their_ripple, abs=0.02)


def test_equiripple_design_is_shorter_than_a_kaiser_window() -> None:
    # Kaiser's formula for 90 dB over 3.4-4.6 kHz at 24 kHz gives 115 taps (2.4 ms of delay).
    assert filter_plan(24000, 8000).taps <= 75


@pytest.mark.parametrize("rates", sorted(FROZEN_TAPS), ids=_ids)
def test_frozen_prototypes_are_what_the_design_produces(rates: tuple[int, int]) -> None:
    frozen = filter_plan(*rates).proto
    designed = design_taps(*rates)
    assert len(designed) == len(frozen)
    # Exact where they were frozen; elsewhere floating point may move a tap by one unit (2**-22).
    assert np.abs(designed - frozen).max() <= 1
