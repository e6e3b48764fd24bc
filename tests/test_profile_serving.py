"""The profile's serving-phase workload: the load ramp, the capacity estimate, lengths that fit."""

from __future__ import annotations

import numpy as np
import pytest

from backends.profile import ShapeSample
from engine.profile_serving import (
    RAMP,
    estimate_capacity,
    ramp_arrivals,
    serving_workload,
    workload_lengths,
)


def _samples() -> list[ShapeSample]:
    # 2048-token prefill in 50 ms (40,960 tok/s); decode of 64 in 8 ms (8,000 tok/s) is the best.
    def s(prefill, nd, ctx, t):
        return ShapeSample(tuple(prefill), nd, ctx, (t,), t)

    return [
        s([(512, 0)], 0, 0, 0.02),
        s([(2048, 0)], 0, 0, 0.05),
        s([(64, 0)], 4, 400, 0.03),  # mixed: ignored by the estimate
        s([], 1, 500, 0.005),
        s([], 64, 64 * 500, 0.008),
    ]


def test_capacity_estimate_adds_prefill_and_decode_time() -> None:
    cap = estimate_capacity(_samples(), mean_new_prompt=409.6, mean_output=80.0)
    assert cap == pytest.approx(1.0 / (409.6 / 40960 + 80.0 / 8000))
    with pytest.raises(ValueError, match="prefill-only and decode-only"):
        estimate_capacity([s for s in _samples() if s.prefill], 100, 10)


def test_ramp_rate_rises_linearly() -> None:
    cap, seconds = 50.0, 60.0
    t = ramp_arrivals(200_000, cap, seconds, seed=1)
    assert np.all(np.diff(t) >= 0)
    # Arrivals in the first and last tenth of the phase match the integral of the linear rate.
    lo, hi = RAMP[0] * cap, RAMP[1] * cap

    def expected(a: float, b: float) -> float:
        rate = lambda x: lo + (hi - lo) * x / seconds  # noqa: E731
        return (rate(a) + rate(b)) / 2 * (b - a)

    for a, b in ((0.0, 6.0), (54.0, 60.0), (20.0, 40.0)):
        got = np.count_nonzero((t >= a) & (t < b))
        want = expected(a, b)
        assert abs(got - want) < 5 * np.sqrt(want), (a, b, got, want)
    assert np.array_equal(t, ramp_arrivals(200_000, cap, seconds, seed=1))  # seeded


@pytest.mark.parametrize("max_model_len", [64, 512, 4096, 32768])
def test_workload_fits_the_context_window(max_model_len: int) -> None:
    ln = workload_lengths(max_model_len)
    assert ln["prefix"] + ln["suffix_cap"] + ln["output_cap"] <= max(max_model_len, 3)
    trace, cap = serving_workload(_samples(), max_model_len, seconds=10.0, seed=0)
    assert cap > 0 and len(trace) > 8
    assert int((trace.prompt_len + trace.output_len).max()) <= max_model_len
    assert trace.arrival[0] >= 0 and np.all(np.diff(trace.arrival) >= 0)
    # Requests share their group's prefix blocks (the prefix cache has work to do).
    if ln["prefix"] >= trace.hash_block_tokens:
        firsts = [h[0] for h in trace.prefix_hashes if h]
        assert len(set(firsts)) <= 16 < len(firsts)
    with pytest.raises(ValueError, match="must be > 0 s"):
        serving_workload(_samples(), max_model_len, seconds=0.0)
