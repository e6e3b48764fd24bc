"""A pipelined run goes on past a completion that finishes members of a decoding group: the
group drops them and continues as a smaller one (`Simulation._pipelined_decode_run`'s
`split`). The timeline, KV peak and routing must stay those of stepping one micro-batch at a
time, including for a router that counts requests (finishes inside a run must be visible to it
at the next arrival) and with the KV pool tight (frees and later allocations replayed in time
order)."""

from __future__ import annotations

import numpy as np
import pytest

from backends.cost_model import ParallelLayout
from policies.kv.block_manager import BlockManager
from policies.sequence import Sequence
from sim.config import SimConfig
from sim.replica_core import ReplicaCore
from sim.results import RunRecorder
from sim.simulator import simulate
from tests.test_sim_pipeline_plan import VIDUR_PP, _same_timeline, long_prompt_trace
from traces.schema import Request, Trace


def short_output_trace(n: int, rate: float, seed: int) -> Trace:
    """Short prompts and widely spread outputs: many members finish while others decode."""
    rng = np.random.default_rng(seed)
    return Trace(np.cumsum(rng.exponential(1 / rate, n)), rng.integers(1, 300, n), rng.integers(2, 200, n))


def _count_splits(monkeypatch) -> dict:
    """Count finishes taken inside runs (`ReplicaCore.finish_ahead`)."""
    seen = {"n": 0}
    orig = ReplicaCore.finish_ahead

    def counted(self, n):
        seen["n"] += n
        return orig(self, n)

    monkeypatch.setattr(ReplicaCore, "finish_ahead", counted)
    return seen


@pytest.mark.parametrize(
    ("pp", "router", "rate", "blocks", "seed"),
    [
        (2, "least-work", 2.0, 3000, 0),
        (2, "least-requests", 4.0, 3000, 1),
        (3, "least-requests", 3.0, 600, 2),
        (2, "least-work", 6.0, 250, 3),
        (4, "round-robin", 2.0, 3000, 4),
    ],
)
def test_runs_past_finishes_match_stepping(linear_cost, monkeypatch, pp, router, rate, blocks, seed):
    linear_cost.per_ctx = 1e-6
    linear_cost.layout = ParallelLayout(1, pp)
    tr = short_output_trace(300, rate, seed)
    cfg = dict(num_kv_blocks=blocks, max_num_batched_tokens=256, num_replicas=3, router=router, pp=pp)
    seen = _count_splits(monkeypatch)
    step = simulate(tr, SimConfig(jump=False, **cfg), linear_cost)
    assert seen["n"] == 0  # stepping never runs ahead
    jumped = simulate(tr, SimConfig(jump=True, **cfg), linear_cost)
    _same_timeline(step, jumped)
    assert seen["n"] > 20  # most finishes happened inside runs


def test_runs_past_finishes_with_prefill_match_stepping(linear_cost, monkeypatch):
    """Long prompts: groups that finish members after their prefill chunks were spelled out."""
    linear_cost.per_ctx = 1e-6
    linear_cost.layout = ParallelLayout(1, 2)
    tr = long_prompt_trace(250, 1.5, 9)
    cfg = dict(num_kv_blocks=800, max_num_batched_tokens=384, num_replicas=2, router="least-requests", pp=2)
    seen = _count_splits(monkeypatch)
    step = simulate(tr, SimConfig(jump=False, **cfg), linear_cost)
    jumped = simulate(tr, SimConfig(jump=True, **cfg), linear_cost)
    _same_timeline(step, jumped)
    assert seen["n"] > 20


def test_analytic_runs_past_finishes_match_stepping(monkeypatch):
    seen = _count_splits(monkeypatch)
    tr = short_output_trace(150, 3.0, 6)
    stepped = simulate(tr, SimConfig(jump=False, **VIDUR_PP))
    _same_timeline(stepped, simulate(tr, SimConfig(jump=True, **VIDUR_PP)))
    assert seen["n"] > 0


def test_finish_ahead_is_taken_back_before_the_bookkeeping():
    core = ReplicaCore(0, None, BlockManager(10, 16), RunRecorder(2))  # type: ignore[arg-type]
    core.num_outstanding = 5
    core.finish_ahead(2)
    assert core.num_outstanding == 3
    core.end_decode_runs()
    assert core.num_outstanding == 5


def test_plan_group_lists_each_members_decode_line_and_finish():
    from policies.scheduling.base import SchedulerConfig
    from policies.scheduling.batch import ScheduledBatch
    from policies.scheduling.fcfs import FCFSScheduler

    kv = BlockManager(100, 16)
    core = ReplicaCore(0, FCFSScheduler(SchedulerConfig(max_num_batched_tokens=64)), kv, RunRecorder(3))
    seqs = []
    for i, (p, o, done_out) in enumerate([(10, 5, 2), (30, 9, 1)]):
        s = Sequence(Request(i, 0.0, p, o))
        s.num_output_tokens = done_out
        s.num_computed_tokens = p + done_out - 1
        assert kv.allocate(s, 1)
        seqs.append(s)
    plan = core.plan_group(ScheduledBatch(list(seqs), [1, 1]))
    assert plan.m == 0
    # context at iteration i is dctx + i; member k finishes with iteration output - done - 1
    assert plan.dctx == [10 + 2, 30 + 1]
    assert plan.finishes == [5 - 2 - 1, 9 - 1 - 1]
    assert plan.ctx0 == sum(plan.dctx) and plan.max0 == max(plan.dctx)
    assert plan.finish == min(plan.finishes)
    # A newcomer whose prompt takes two chunks: spelled out, then the same per-member lines.
    s = Sequence(Request(2, 0.0, 100, 4))
    assert kv.allocate(s, 62)
    plan = core.plan_group(ScheduledBatch([*seqs, s], [1, 1, 62]))
    assert plan.m == 2
    assert plan.finishes[2] == plan.m + 4 - 1 - 1
    assert plan.dctx[2] + plan.m == 100 + 1
    assert plan.ctx0 == sum(plan.dctx) and plan.max0 == max(plan.dctx)
