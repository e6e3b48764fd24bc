"""The step-time sensitivity of a validation's headline errors (benchmarks/validation_sensitivity.py)."""

from __future__ import annotations

import numpy as np
import pytest

from backends.cost_model import BatchShape
from benchmarks.metrics import compute_metrics
from benchmarks.validation_errors import error_rows
from benchmarks.validation_sensitivity import ScaledCost, format_sensitivity, step_sensitivity
from sim.config import SimConfig
from sim.simulator import Simulation
from tests.conftest import LinearCost
from traces.schema import Trace


def _trace(n: int = 400, rate: float = 0.5, seed: int = 3) -> Trace:
    rng = np.random.default_rng(seed)
    return Trace(
        arrival=np.cumsum(rng.exponential(1 / rate, n)),
        prompt_len=rng.integers(50, 1500, n),
        output_len=rng.integers(20, 300, n),
        name="poisson",
    )


def test_a_scaled_cost_scales_every_second_and_keeps_its_decode_line_exact() -> None:
    inner = LinearCost(fixed=0.01, per_token=0.001, per_ctx=2e-6)
    c = ScaledCost(inner, 1.25)
    shape = BatchShape([(300, 100)], 4, 4000, 1500)
    assert c.stage_time(shape) == pytest.approx(1.25 * inner.stage_time(shape))
    a, b, cc, g = c.decode_line(8)
    assert (a, b, cc, g) == pytest.approx((1.25 * (0.01 + 0.008), 1.25 * 2e-6, 0.0, 0.0))
    decode = BatchShape([], 8, 8000, 1000)
    assert a + b * 8000 == pytest.approx(c.stage_time(decode), rel=1e-12)
    parts = c.overlap_parts(shape)
    assert parts.device == pytest.approx(1.25 * inner.stage_time(shape)) and parts.graphed
    assert c.name == "linear-test x1.25" and c.layout == inner.layout


def test_a_pure_step_bias_is_what_the_sensitivity_takes_out() -> None:
    # The "engine" is the model's own replica with every step 4% slower, under load (about 60% busy):
    # the prediction's only error is a step bias of 1/1.04 - 1, which the queueing amplifies (more
    # than a point of latency error per 1% of step time), and the simulation with the bias taken out
    # is the engine's run itself.
    trace, cost = _trace(), LinearCost(per_ctx=1e-6)
    cfg = SimConfig(max_num_batched_tokens=512, max_num_seqs=32)
    truth = compute_metrics(Simulation(trace, cfg, cost=ScaledCost(cost, 1.04)).run())
    predicted = compute_metrics(Simulation(trace, cfg, cost=cost).run())
    errors = {
        "target": 0.05,
        "metrics": error_rows(truth, predicted, 0.05),
        "iterations": {"total_busy_seconds": {"rel_error": 1 / 1.04 - 1}},
    }
    s = step_sensitivity(trace, cfg, cost, truth, errors)
    rows = {(r["metric"], r["stat"]): r for r in s["rows"]}
    for key in (("ttft_ms", "p50"), ("tpot_ms", "p50"), ("e2e_ms", "p50"), ("e2e_ms", "p90")):
        r = rows[key]
        assert r["rel_error"] < -0.04 and r["points_per_percent"] > 1.0, r
        assert r["without_step_bias"] == pytest.approx(0.0, abs=1e-9), r
    assert s["step_bias"] == pytest.approx(1 / 1.04 - 1)
    assert s["max_abs_without_step_bias"] == max(abs(r["without_step_bias"]) for r in s["rows"])
    text = "\n".join(format_sensitivity(s))
    assert "summed -3.8% against measured" in text and "TPOT P50" in text
    with pytest.raises(ValueError, match="delta must be in"):
        step_sensitivity(trace, cfg, cost, truth, errors, delta=0.0)
