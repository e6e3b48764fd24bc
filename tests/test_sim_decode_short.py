"""Short decode runs (one pipeline stage) are computed in plain floats, long ones with numpy
(`Simulation._decode_run`, cut-over `_SHORT_RUN`): both must give the same times to the last
bit, and the same timeline as stepping one iteration at a time, including a cost model whose
decode line has a longest-context term."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import sim.simulator as simulator
from backends.cost_model import BatchShape
from sim.config import SimConfig
from sim.simulator import simulate
from tests.conftest import LinearCost
from traces.schema import Trace


@dataclass
class LongestContextCost(LinearCost):
    """LinearCost plus a term in the longest decode context (a paged-attention kernel's tail)."""

    per_max: float = 3e-6

    def stage_time(self, shape: BatchShape) -> float:
        return super().stage_time(shape) + self.per_max * shape.decode_max_context

    def decode_line(self, num_decode: int) -> tuple[float, float, float]:
        a, b = super().decode_line(num_decode)
        return a, b, self.per_max


def _trace(n: int, rate: float, seed: int) -> Trace:
    rng = np.random.default_rng(seed)
    return Trace(np.cumsum(rng.exponential(1 / rate, n)), rng.integers(1, 600, n), rng.integers(1, 300, n))


@pytest.mark.parametrize("cost", [LinearCost(per_ctx=1e-6), LongestContextCost(per_ctx=1e-6)])
def test_short_and_long_decode_runs_agree_bit_for_bit(cost, monkeypatch):
    tr = _trace(300, 1.5, 5)
    cfg = dict(num_kv_blocks=1500, max_num_batched_tokens=256, num_replicas=2, router="least-work")
    stepped = simulate(tr, SimConfig(jump=False, **cfg), cost)
    runs = {}
    for short in (0, 64, 10**9):  # numpy only, the default mix, plain floats only
        monkeypatch.setattr(simulator, "_SHORT_RUN", short)
        runs[short] = simulate(tr, SimConfig(jump=True, **cfg), cost)
    for r in runs.values():
        for k in ("first_scheduled", "first_token", "finish"):
            np.testing.assert_array_equal(r.requests[k], runs[0].requests[k])
            np.testing.assert_allclose(r.requests[k], stepped.requests[k], rtol=0, atol=1e-9)
        assert r.itl.total == runs[0].itl.total and r.itl.n == stepped.itl.n
        np.testing.assert_array_equal(r.itl.counts, runs[0].itl.counts)
        assert r.meta["iterations"] == stepped.meta["iterations"]
        assert len(r.iterations["start"]) < len(stepped.iterations["start"])  # it did jump
