"""When members of a decoding segment finish, a pipelined run goes on with the others as a new
segment (`split`). Most of the time exactly one member finishes; then its lists are copied
without that member in C (`_SPLIT_ONE`) instead of filtered member by member. Both must give
the very same run: per-request columns to the bit, ITL histogram, iterations, KV statistics
and end time, with many finishes (short and widely spread outputs), ties included."""

from __future__ import annotations

import numpy as np
import pytest

import sim.simulator as simulator
from backends.cost_model import ParallelLayout
from sim.config import SimConfig
from sim.simulator import Simulation
from tests.sim_identity import assert_identical_runs
from tests.test_sim_pipeline_plan import VIDUR_PP
from tests.test_sim_run_past_finish import short_output_trace
from traces.schema import Trace


def _run(monkeypatch, one: bool, tr, cfg: SimConfig, cost):
    monkeypatch.setattr(simulator, "_SPLIT_ONE", one)
    return Simulation(tr, cfg, cost).run()


def _tied_outputs_trace(n: int, rate: float, seed: int) -> Trace:
    """Few distinct output lengths: members of a group often finish in the same iteration."""
    rng = np.random.default_rng(seed)
    return Trace(np.cumsum(rng.exponential(1 / rate, n)), rng.integers(1, 64, n), rng.choice([8, 16, 24], n))


@pytest.mark.parametrize(
    ("pp", "router", "rate", "blocks", "seed", "tied"),
    [
        (2, "least-work", 6.0, 3000, 0, False),
        (3, "round-robin", 5.0, 600, 2, False),
        (2, "least-requests", 8.0, 3000, 3, True),
    ],
)
def test_one_finish_split_matches_the_general_one(linear_cost, monkeypatch, pp, router, rate, blocks, seed,
                                                  tied):
    linear_cost.per_ctx = 1e-6
    linear_cost.layout = ParallelLayout(1, pp)
    tr = _tied_outputs_trace(300, rate, seed) if tied else short_output_trace(300, rate, seed)
    cfg = SimConfig(num_kv_blocks=blocks, max_num_batched_tokens=256, num_replicas=2, router=router, pp=pp,
                    enable_prefix_caching=False, record_iterations=False)
    slow = _run(monkeypatch, False, tr, cfg, linear_cost)
    assert_identical_runs(slow, _run(monkeypatch, True, tr, cfg, linear_cost))


def test_one_finish_split_matches_on_the_benchmark_layout(monkeypatch):
    tr = short_output_trace(400, 4.0, 7)
    cfg = SimConfig(**VIDUR_PP, num_kv_blocks=3000, record_iterations=False)
    assert_identical_runs(_run(monkeypatch, False, tr, cfg, None), _run(monkeypatch, True, tr, cfg, None))
