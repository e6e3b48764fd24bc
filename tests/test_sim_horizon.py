"""A horizon (`SimConfig.horizon`) stops the clock wherever it falls, also inside a jumped decode
run (`Simulation._decode_run`) or a planned pipelined run (`_pipelined_decode_run`). The run's
iterations completed before the horizon must then count as stepping counts them: the iteration
total, the ITL histogram, every request's progress (output tokens, first token, finish) and the
KV peak (blocks of the iterations in progress were taken when stepping scheduled them). SimPy
processes the `until` stop before any other event at the same time, so an iteration ending
exactly at the horizon is not completed, in either form."""

from __future__ import annotations

import pytest

from backends.cost_model import ParallelLayout
from sim.config import SimConfig
from sim.simulator import Simulation, simulate
from tests.conftest import LinearCost
from tests.sim_identity import assert_identical_runs
from tests.test_sim_pipeline_plan import long_prompt_trace

ABSORBING = dict(enable_prefix_caching=False, record_iterations=False)


class _NoHook(dict):
    """Drops what runs register for the horizon: the results as they were before runs committed
    their iterations at the horizon, to show that a case does stop inside a run."""

    def __setitem__(self, key, value) -> None:
        pass


def _jumped_without_hook(tr, cfg: SimConfig, cost: LinearCost):
    sim = Simulation(tr, cfg, cost)
    sim._at_horizon = _NoHook()
    return sim.run()


# (trace seed, rate, pp, KV blocks, router, config extras, horizon)
CASES = [
    (9, 3.0, 1, 400, "least-work", ABSORBING, 7.3),  # `_decode_run`
    (8, 0.5, 3, 150, "round-robin", ABSORBING, 7.3),  # pipelined, three stages
    (8, 3.0, 2, 150, "round-robin", ABSORBING, 1500.0),  # pipelined, runs that take batches in
    (7, 0.5, 2, 80, "least-work", dict(enable_prefix_caching=False, record_iterations=True), 40.0),
]


@pytest.mark.parametrize("seed, rate, pp, blocks, router, extra, horizon", CASES)
def test_run_cut_by_the_horizon_counts_as_stepping(seed, rate, pp, blocks, router, extra, horizon):
    cost = LinearCost(per_ctx=1e-6, layout=ParallelLayout(1, pp))
    tr = long_prompt_trace(200 if horizon > 100 else 120, rate, seed)
    cfg = dict(num_kv_blocks=blocks, max_num_batched_tokens=384, num_replicas=2, router=router, pp=pp,
               horizon=horizon, **extra)
    stepped = simulate(tr, SimConfig(jump=False, **cfg), cost)
    jumped = simulate(tr, SimConfig(jump=True, **cfg), cost)
    assert (stepped.requests["status"] == "unfinished").any()  # the horizon cuts the replay
    assert_identical_runs(stepped, jumped)
    if extra["record_iterations"]:  # the rows hold every iteration completed, in both forms
        counted = jumped.meta["iterations"]
        assert stepped.iterations["count"].sum() == jumped.iterations["count"].sum() == counted
    unhooked = _jumped_without_hook(tr, SimConfig(jump=True, **cfg), cost)
    assert unhooked.meta["iterations"] < jumped.meta["iterations"]  # it stopped inside a run
