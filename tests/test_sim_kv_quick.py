"""A pipelined run caps its segments at the iterations the free KV blocks hold for all of them
(`cap_kv`). It first tries a sufficient bound from per-segment sums kept as segments are made
(`_KV_QUICK`): a member needs at most (c + o + k) / bs + 1 more blocks, so when the sum over
every member fits the free blocks, all of them fit for the longest span and the exact count
(`_shared_kv_limit`) is skipped. The bound must never change a cap: runs with and without it
must be the same to the bit (per-request columns, ITL histogram, iterations, KV statistics,
end time), on pools small enough that the exact count still runs and large ones where the
bound saves it."""

from __future__ import annotations

import numpy as np
import pytest

import sim.simulator as simulator
from sim.config import SimConfig
from sim.simulator import Simulation
from tests.sim_identity import assert_identical_runs, counting_calls, pipelined_case
from tests.test_sim_pipeline_plan import VIDUR_PP
from tests.test_sim_run_past_finish import short_output_trace


def _run(monkeypatch, quick: bool, tr, cfg: SimConfig, cost) -> tuple:
    monkeypatch.setattr(simulator, "_KV_QUICK", quick)
    with counting_calls(simulator, "_shared_kv_limit") as calls:
        result = Simulation(tr, cfg, cost).run()
    return result, calls[0]


@pytest.mark.parametrize(
    ("pp", "router", "rate", "blocks", "seed", "long", "caching"),
    [
        (2, "least-work", 5.0, 3000, 0, False, False),
        (2, "least-requests", 6.0, 250, 1, False, False),
        (2, "least-work", 6.0, 120, 1, False, False),  # the cap binds: a looser bound would overrun KV
        (3, "round-robin", 5.0, 600, 2, False, True),
        (2, "least-work", 3.0, 400, 3, True, False),
        (4, "least-work", 3.0, 3000, 4, True, True),
    ],
)
def test_quick_kv_cap_matches_the_exact_count(linear_cost, monkeypatch, pp, router, rate, blocks, seed, long,
                                              caching):
    tr = pipelined_case(linear_cost, pp, long, rate, seed)
    cfg = SimConfig(num_kv_blocks=blocks, max_num_batched_tokens=256, num_replicas=2, router=router, pp=pp,
                    enable_prefix_caching=caching, record_iterations=caching)
    exact, calls_exact = _run(monkeypatch, False, tr, cfg, linear_cost)
    quick, calls_quick = _run(monkeypatch, True, tr, cfg, linear_cost)
    assert_identical_runs(exact, quick)
    if caching:
        assert np.array_equal(exact.iterations["kv_blocks_used"], quick.iterations["kv_blocks_used"])
    assert 0 < calls_exact and calls_quick <= calls_exact


def test_quick_kv_cap_matches_on_the_benchmark_layout(monkeypatch):
    tr = short_output_trace(400, 4.0, 7)
    cfg = SimConfig(**VIDUR_PP, num_kv_blocks=3000, record_iterations=False)
    exact, calls_exact = _run(monkeypatch, False, tr, cfg, None)
    quick, calls_quick = _run(monkeypatch, True, tr, cfg, None)
    assert_identical_runs(exact, quick)
    assert calls_quick < calls_exact  # the bound saves the exact count
