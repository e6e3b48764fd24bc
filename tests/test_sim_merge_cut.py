"""A pipelined run stops where stepping would schedule two completed micro-batch groups as one
(the merge point in `Simulation._pipelined_decode_run`'s `advance`): stage 0 frees at e after the
head completed, and the group behind it completes by e. When that group leaves the last stage
exactly at e (common with equal stage times: prefill chunks that fill the token budget, as
recomputation after preemption makes them), stepping's loop wakes at e after that completion
(its event was set up at the group's entry, before the wake-up's) and schedules both groups
together. The cut must keep that completion; leaving it in flight made the jumped run schedule
the head alone and drift from stepping (found with pp=3, a 60-block pool and two replicas:
request 196 finished 1.18 s apart). The cases below all differed from stepping before the fix."""

from __future__ import annotations

import pytest

from backends.cost_model import ParallelLayout
from sim.config import SimConfig
from sim.simulator import simulate
from tests.test_sim_pipeline_plan import VIDUR_PP, _same_timeline, long_prompt_trace

# Prefix cache off and no iteration log: the configuration in which runs also take in batches.
ABSORBING = dict(enable_prefix_caching=False, record_iterations=False)


@pytest.mark.parametrize(
    ("seed", "rate", "pp", "blocks", "router"),
    [
        (2, 2.0, 3, 60, "least-work"),  # the first case found (request 196)
        (1, 1.0, 4, 60, "round-robin"),
        (3, 1.0, 3, 200, "least-work"),
        (1, 2.0, 3, 200, "least-requests"),
        (5, 1.0, 4, 60, "round-robin"),
        (0, 1.0, 3, 200, "round-robin"),
    ],
)
def test_merge_point_keeps_a_completion_at_the_cut(linear_cost, seed, rate, pp, blocks, router):
    linear_cost.per_ctx = 1e-6
    linear_cost.layout = ParallelLayout(1, pp)
    tr = long_prompt_trace(200, rate, seed)
    cfg = dict(num_kv_blocks=blocks, max_num_batched_tokens=384, num_replicas=2, router=router, pp=pp,
               **ABSORBING)
    step = simulate(tr, SimConfig(jump=False, **cfg), linear_cost)
    assert step.requests["preemptions"].sum() > 0  # the tight pool that makes full-budget chunks
    _same_timeline(step, simulate(tr, SimConfig(jump=True, **cfg), linear_cost))


def test_merge_point_with_the_iteration_log(linear_cost):
    """Without take-ins and bulk commits of planned groups (the iteration log switches both off)
    the run stops at the same merge point: the first case again."""
    linear_cost.per_ctx = 1e-6
    linear_cost.layout = ParallelLayout(1, 3)
    tr = long_prompt_trace(200, 2.0, 2)
    cfg = dict(num_kv_blocks=60, max_num_batched_tokens=384, num_replicas=2, router="least-work", pp=3,
               enable_prefix_caching=False, record_iterations=True)
    _same_timeline(simulate(tr, SimConfig(jump=False, **cfg), linear_cost),
                   simulate(tr, SimConfig(jump=True, **cfg), linear_cost))


@pytest.mark.parametrize(("blocks", "router"), [(600, "round-robin"), (300, "least-work")])
def test_analytic_merge_point(blocks, router):
    """The analytic model (Llama-2-70B, TP2) with three stages: equal times there too."""
    tr = long_prompt_trace(300, 3.0, 2)
    cfg = dict(VIDUR_PP, pp=3, num_kv_blocks=blocks, router=router, **ABSORBING)
    _same_timeline(simulate(tr, SimConfig(jump=False, **cfg)), simulate(tr, SimConfig(jump=True, **cfg)))
