"""Request-sampling intervals of a validation's headline percentiles (benchmarks.validation_errors)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.metrics import compute_metrics
from benchmarks.validation_errors import sampling_intervals
from tests.test_metrics import make_run


def test_sampling_intervals_shrink_with_the_slice_and_place_the_prediction() -> None:
    rng = np.random.default_rng(3)

    def run(n: int):
        ttft = rng.lognormal(-3.0, 0.5, n)  # seconds
        tpot = rng.lognormal(-4.0, 0.3, n)
        out = rng.integers(2, 200, n)
        arr = np.sort(rng.uniform(0, 60, n))
        return make_run(
            [
                dict(arrival=a, first_scheduled=a, first_token=a + t, finish=a + t + p * (o - 1),
                     prompt_tokens=100, output_tokens=int(o))
                for a, t, p, o in zip(arr, ttft, tpot, out)
            ]
        )  # fmt: skip

    small, big = run(80), run(2000)
    ms, mb = compute_metrics(small), compute_metrics(big)
    pred = {"ttft_ms": {"p50": 1.03 * ms["ttft_ms"]["p50"], "p90": 1.5 * ms["ttft_ms"]["p90"]}}
    s = sampling_intervals(small, pred)
    rows = {(r["metric"], r["stat"]): r for r in s["rows"]}
    # the point is the reported percentile, inside its own interval
    for (metric, stat), r in rows.items():
        assert r["measured"] == pytest.approx(ms[metric][stat])
        assert r["low"] <= r["measured"] <= r["high"]
    assert rows[("ttft_ms", "p50")]["inside"] is True and rows[("ttft_ms", "p50")]["beyond"] == 0.0
    far = rows[("ttft_ms", "p90")]
    assert far["inside"] is False
    assert far["beyond"] == pytest.approx((far["predicted"] - far["high"]) / far["measured"])
    assert rows[("tpot_ms", "p50")]["predicted"] is None and rows[("tpot_ms", "p50")]["inside"] is None
    assert s["max_beyond"] == far["beyond"]
    # 25x the requests: a P50 interval about 5x narrower; the same seed gives the same interval
    wide = rows[("e2e_ms", "p50")]
    narrow = {(r["metric"], r["stat"]): r for r in sampling_intervals(big, mb)["rows"]}[("e2e_ms", "p50")]
    def width(r: dict) -> float:
        return (r["high"] - r["low"]) / r["measured"]

    assert width(narrow) < 0.5 * width(wide)
    assert sampling_intervals(small, pred) == s
    # a wide interval says how many requests would narrow it to the target (width ~ 1 / sqrt(n))
    half = max(wide["measured"] - wide["low"], wide["high"] - wide["measured"]) / wide["measured"]
    assert half > 0.05
    assert wide["requests_for_target"] == int(np.ceil(80 * (half / 0.05) ** 2))
    assert (narrow["requests_for_target"] or 0) < wide["requests_for_target"]
    with pytest.raises(ValueError, match="level"):
        sampling_intervals(small, pred, level=1.5)
