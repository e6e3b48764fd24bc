"""Where a pipelined run commits a segment whose members finished, stepping would have taken the
blocks of every iteration entered before that finish, so the peak it records is reached there.
The run takes the other segments' blocks at that point only when they could raise the recorded
peak (`_DEFER_RESERVES`, `peak_in_reach`); otherwise at the next commit point, the same count.
Deferring must give the very same run as taking them at once: every per-request column to the
bit, the ITL histogram, the iteration count, the KV statistics (the peak above all) and the
simulated end time; and it must save allocation passes. Small pools make the peak reachable at
many ends (both branches run); a large one makes it out of reach at most."""

from __future__ import annotations

import numpy as np
import pytest

import sim.simulator as simulator
from backends.cost_model import ParallelLayout
from policies.kv.block_manager import BlockManager
from sim.config import SimConfig
from sim.simulator import Simulation
from tests.sim_identity import assert_identical_runs, counting_calls, pipelined_case
from tests.test_sim_pipeline_plan import VIDUR_PP
from tests.test_sim_run_past_finish import short_output_trace


def _run(monkeypatch, defer: bool, tr, cfg: SimConfig, cost) -> tuple:
    monkeypatch.setattr(simulator, "_DEFER_RESERVES", defer)
    with counting_calls(BlockManager, "allocate_each") as calls:
        result = Simulation(tr, cfg, cost).run()
    return result, calls[0]


@pytest.mark.parametrize(
    ("pp", "router", "rate", "blocks", "seed", "long"),
    [
        (2, "least-work", 5.0, 3000, 0, False),
        (2, "least-requests", 6.0, 250, 1, False),
        (3, "round-robin", 5.0, 600, 2, False),
        (2, "least-work", 3.0, 400, 3, True),
    ],
)
def test_deferred_reserves_match_immediate_ones(linear_cost, monkeypatch, pp, router, rate, blocks, seed,
                                                long):
    tr = pipelined_case(linear_cost, pp, long, rate, seed)
    cfg = SimConfig(num_kv_blocks=blocks, max_num_batched_tokens=256, num_replicas=2, router=router, pp=pp,
                    enable_prefix_caching=False, record_iterations=False)
    now, calls_now = _run(monkeypatch, False, tr, cfg, linear_cost)
    later, calls_later = _run(monkeypatch, True, tr, cfg, linear_cost)
    assert_identical_runs(now, later)
    assert calls_later <= calls_now


def test_deferred_reserves_match_on_the_benchmark_layout(monkeypatch):
    tr = short_output_trace(400, 4.0, 7)
    cfg = SimConfig(**VIDUR_PP, num_kv_blocks=3000, record_iterations=False)
    now, calls_now = _run(monkeypatch, False, tr, cfg, None)
    later, calls_later = _run(monkeypatch, True, tr, cfg, None)
    assert_identical_runs(now, later)
    assert calls_later < calls_now  # the deferral is taken


def test_reserves_are_taken_at_once_where_rows_or_the_prefix_cache_see_them(linear_cost, monkeypatch):
    """Iteration rows record the used count at each commit and the prefix cache evicts by block
    order: there every reserve is taken at once, deferral switch or not."""
    linear_cost.per_ctx = 1e-6
    linear_cost.layout = ParallelLayout(1, 2)
    tr = short_output_trace(300, 5.0, 4)
    cfg = SimConfig(num_kv_blocks=600, max_num_batched_tokens=256, num_replicas=2, router="least-work", pp=2)
    now, calls_now = _run(monkeypatch, False, tr, cfg, linear_cost)
    later, calls_later = _run(monkeypatch, True, tr, cfg, linear_cost)
    assert_identical_runs(now, later)
    assert np.array_equal(now.iterations["kv_blocks_used"], later.iterations["kv_blocks_used"])
    assert calls_later == calls_now
