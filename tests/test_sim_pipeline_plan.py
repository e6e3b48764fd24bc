"""The simulator's planned pipeline runs (prefill chunks riding along with decodes, jumped over
without events) must leave exactly the timeline that stepping one micro-batch at a time does;
and the pieces they rest on (`FCFSScheduler.steady_counts`, `ReplicaCore.plan_group`, the
buffered ITL histogram) do what they say."""

from __future__ import annotations

import math

import numpy as np
import pytest

from backends.cost_model import ParallelLayout
from policies.kv.block_manager import BlockManager
from policies.scheduling.base import SchedulerConfig
from policies.scheduling.batch import ScheduledBatch
from policies.scheduling.fcfs import FCFSScheduler
from policies.sequence import Sequence, Status
from sim.config import SimConfig
from sim.replica_core import ReplicaCore
from sim.results import ItlHistogram, RunRecorder
from sim.simulator import simulate
from traces.schema import Request, Trace


def long_prompt_trace(n: int, rate: float, seed: int) -> Trace:
    """Prompts of several chunks and short-to-medium outputs: many mixed iterations."""
    rng = np.random.default_rng(seed)
    return Trace(
        np.cumsum(rng.exponential(1 / rate, n)), rng.integers(1, 1500, n), rng.integers(1, 120, n)
    )


# The speed benchmark's layout (TP2 x PP2, least-work routing, chunked prefill 512), on 2 replicas.
VIDUR_PP = dict(
    model="llama-2-70b", accelerator="a100-80gb", tp=2, pp=2, num_replicas=2, router="least-work",
    max_num_batched_tokens=512, max_num_seqs=128, enable_prefix_caching=False,
)  # fmt: skip


def _same_timeline(a, b) -> None:
    for k in ("first_scheduled", "first_token", "finish"):
        np.testing.assert_allclose(a.requests[k], b.requests[k], rtol=0, atol=1e-9)
    assert np.array_equal(a.requests["replica"], b.requests["replica"])
    np.testing.assert_array_equal(a.requests["preemptions"], b.requests["preemptions"])
    np.testing.assert_array_equal(a.requests["status"], b.requests["status"])
    assert a.meta["iterations"] == b.meta["iterations"]
    assert a.itl.n == b.itl.n and a.itl.total == pytest.approx(b.itl.total, rel=1e-9)
    np.testing.assert_array_equal(a.itl.counts, b.itl.counts)
    # Prefix-cache hits must agree; eviction counts may not: a jump allocates a run's blocks in
    # bulk, so which free cached block is reused first can differ (as with pure-decode jumps).
    for k in ("hit_tokens", "queried_tokens", "peak_used_blocks"):
        assert a.meta["kv"][k] == b.meta["kv"][k], k


@pytest.mark.parametrize(
    ("pp", "rate", "blocks", "seed"),
    [(2, 1.0, 3000, 0), (2, 3.0, 400, 1), (3, 2.0, 3000, 2), (4, 1.5, 500, 3), (2, 6.0, 200, 4)],
)
def test_planned_runs_match_stepping(linear_cost, monkeypatch, pp, rate, blocks, seed):
    linear_cost.per_ctx = 1e-6
    linear_cost.layout = ParallelLayout(1, pp)
    tr = long_prompt_trace(250, rate, seed)
    cfg = dict(num_kv_blocks=blocks, max_num_batched_tokens=384, num_replicas=2, router="least-work", pp=pp)
    calls = {"n": 0}
    schedule = FCFSScheduler.schedule

    def counted(self, *args, **kw):
        calls["n"] += 1
        return schedule(self, *args, **kw)

    monkeypatch.setattr(FCFSScheduler, "schedule", counted)
    step = simulate(tr, SimConfig(jump=False, **cfg), linear_cost)
    calls["n"] = 0
    planned = simulate(tr, SimConfig(jump=True, **cfg), linear_cost)
    planned_calls = calls["n"]
    _same_timeline(step, planned)
    # Without the promise only pure-decode stretches are jumped: same timeline, more decisions.
    monkeypatch.setattr(FCFSScheduler, "plans_steady_batches", False)
    calls["n"] = 0
    decode_only = simulate(tr, SimConfig(jump=True, **cfg), linear_cost)
    _same_timeline(step, decode_only)
    assert planned_calls < calls["n"]


def test_planned_runs_match_stepping_with_preemption(linear_cost):
    linear_cost.per_ctx = 1e-6
    linear_cost.layout = ParallelLayout(1, 2)
    tr = long_prompt_trace(200, 8.0, 7)
    cfg = dict(num_kv_blocks=150, max_num_batched_tokens=256, pp=2)
    step = simulate(tr, SimConfig(jump=False, **cfg), linear_cost)
    planned = simulate(tr, SimConfig(jump=True, **cfg), linear_cost)
    assert step.requests["preemptions"].sum() > 0
    _same_timeline(step, planned)


def test_analytic_pipeline_matches_stepping():
    tr = long_prompt_trace(120, 2.0, 5)
    stepped = simulate(tr, SimConfig(jump=False, **VIDUR_PP))
    _same_timeline(stepped, simulate(tr, SimConfig(jump=True, **VIDUR_PP)))


def test_steady_counts_follow_the_budget():
    s = FCFSScheduler(SchedulerConfig(max_num_batched_tokens=10))
    assert s.steady_counts([1, 1, 30]) == [1, 1, 8]
    assert s.steady_counts([1, 4, 2]) == [1, 4, 2]
    assert s.steady_counts([6, 6, 1]) == [6, 4, 0]  # budget gone: the last one is not scheduled


def _seq(i: int, prompt: int, out: int) -> Sequence:
    return Sequence(Request(id=i, arrival=0.0, prompt_len=prompt, output_len=out))


def test_plan_group_spells_out_prefill_then_decodes():
    kv = BlockManager(100, 4, enable_prefix_caching=False)
    core = ReplicaCore(0, FCFSScheduler(SchedulerConfig(max_num_batched_tokens=8)), kv, RunRecorder(2))
    d, p = _seq(0, 5, 10), _seq(1, 20, 3)
    for s in (d, p):
        s.status = Status.RUNNING
        core.running.append(s)
    # d has its prompt computed and one token sampled: it decodes.
    kv.allocate(d, 6)
    d.num_computed_tokens, d.num_output_tokens = 5, 1
    kv.allocate(p, 7)  # p's first chunk, as the scheduler hands it over
    plan = core.plan_group(ScheduledBatch([d, p], [1, 7]))
    # chunks of 7, 7, 6 complete p's prompt at iteration 2; from iteration 3 both decode.
    assert plan.counts == [[1, 7], [1, 7], [1, 6]]
    assert plan.work == [8, 16, 23]
    assert [sh.prefill for sh in plan.shapes] == [[(7, 0)], [(7, 7)], [(6, 14)]]
    assert [sh.num_decode for sh in plan.shapes] == [1, 1, 1]
    # p samples its first token at iteration 2 and finishes 2 decodes later (output 3).
    assert plan.finish == 4
    assert plan.stop > 1000
    # Iteration 3: d attends 5 + 3 + 1 tokens, p attends 21: context 30 = ctx0 + 2 * 3.
    assert plan.ctx0 + 2 * 3 == 30 and plan.max0 + 3 == 21
    # Nothing changed.
    assert (d.num_computed_tokens, p.num_computed_tokens, p.num_output_tokens) == (5, 0, 0)


def test_itl_histogram_buffers_without_changing_counts():
    rng = np.random.default_rng(0)
    vals = 10 ** rng.uniform(-5, 1, 3 * ItlHistogram.FLUSH_EVERY + 17)
    h = ItlHistogram()
    for v in vals[:1000].tolist():
        h.add(v)
    h.add_ones(vals[1000:].tolist())
    h.add(0.5, 3)
    h.add_many(np.array([0.25, 0.125]), 2)
    expect = np.zeros(ItlHistogram.N + 2, dtype=np.int64)
    for v, w in [(v, 1) for v in vals.tolist()] + [(0.5, 3), (0.25, 2), (0.125, 2)]:
        lo, top = ItlHistogram.LO, ItlHistogram.N
        i = 0 if v <= lo else min(int(math.log10(v / lo) * 1000), top) + 1
        expect[i] += w
    np.testing.assert_array_equal(h.counts, expect)
    assert h.n == len(vals) + 7
    assert h.total == pytest.approx(vals.sum() + 1.5 + 0.5 + 0.25, rel=1e-12)


def test_runs_paused_at_arrivals_for_other_replicas_match_stepping(linear_cost, monkeypatch):
    """A pipelined run computes ahead only to the next arrival in the trace; when that arrival is
    routed to another replica the run is extended from where it paused. With three replicas
    most arrivals go elsewhere, so runs are paused and extended many times, and the timeline
    must still be the one stepping gives."""
    from sim.simulator import Simulation

    linear_cost.per_ctx = 1e-6
    linear_cost.layout = ParallelLayout(1, 2)
    tr = long_prompt_trace(240, 6.0, 11)
    cfg = dict(num_kv_blocks=2000, max_num_batched_tokens=384, num_replicas=3, router="least-work", pp=2)
    extended = {"paused": 0}
    extend = Simulation._extend_runs

    def counted(self):
        extended["paused"] += len(self._paused)
        return extend(self)

    monkeypatch.setattr(Simulation, "_extend_runs", counted)
    step = simulate(tr, SimConfig(jump=False, **cfg), linear_cost)
    assert extended["paused"] == 0  # stepping never pauses a run
    planned = simulate(tr, SimConfig(jump=True, **cfg), linear_cost)
    _same_timeline(step, planned)
    assert extended["paused"] > 10
