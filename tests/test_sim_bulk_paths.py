"""The bulk forms the simulator takes for speed, checked against their plain forms:
`ReplicaCore.complete_planned` (a planned group's spelled-out iterations committed at once)
against `complete` per iteration, and `Trace.__iter__` (rows built from column chunks) against
`Trace.request`."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.kv.block_manager import BlockManager
from policies.scheduling.base import SchedulerConfig
from policies.scheduling.batch import ScheduledBatch
from policies.scheduling.fcfs import FCFSScheduler
from policies.sequence import Sequence
from sim.replica_core import ReplicaCore
from sim.results import RunRecorder
from sim.simulator import _iteration_batch
from traces.schema import Request, Trace

# (prompt, output, outputs done, tokens computed) per member: decoding when done > 0 (computed
# = prompt + done - 1), else a prefill that has `computed` of its prompt.
member = st.tuples(st.integers(1, 700), st.integers(2, 300), st.integers(0, 299), st.integers(0, 699)).map(
    lambda t: (t[0], t[1], min(t[2], t[1] - 2), t[3])
)

prefill = st.tuples(st.integers(1, 1500), st.integers(2, 60), st.just(0), st.integers(0, 50))


def _group(members: list[tuple[int, int, int, int]], budget: int) -> tuple[ReplicaCore, ScheduledBatch]:
    """A replica (no prefix cache, no iteration log) and a group scheduled as FCFS would: the
    sequences decoding have sampled before (first and last token times set)."""
    kv = BlockManager(10_000, 16, enable_prefix_caching=False)
    core = ReplicaCore(0, FCFSScheduler(SchedulerConfig(budget, 256)), kv, RunRecorder(len(members), False))
    seqs = []
    for i, (p, o, done, c) in enumerate(members):
        s = Sequence(Request(i, 0.0, p, o))
        s.num_output_tokens = done
        s.num_computed_tokens = p + done - 1 if done else min(c, p - 1)
        if done:
            s.first_token = 0.5
            s.last_token = 0.5 + 0.01 * i
        seqs.append(s)
    counts = core.scheduler.steady_counts([s.num_uncomputed for s in seqs])
    n = counts.index(0) if 0 in counts else len(counts)
    for s, k in zip(seqs[:n], counts[:n]):
        assert kv.allocate(s, k)
        core.running.append(s)
    return core, ScheduledBatch(seqs[:n], counts[:n])


def _state(core: ReplicaCore, batch: ScheduledBatch) -> tuple:
    itl = core.recorder.itl
    seqs = [(s.num_computed_tokens, s.num_output_tokens, s.first_token, s.last_token, s.finish, s.status)
            for s in batch.seqs]
    running = [s.id for s in core.running]
    return seqs, running, itl.counts.tolist(), itl.n, core._work_done, core.num_iterations


@settings(max_examples=300, deadline=None)
@given(st.lists(member, max_size=9), st.lists(prefill, min_size=1, max_size=2), st.integers(8, 300))
def test_complete_planned_equals_complete_then_decodes(members, prefills, budget):
    """Iterations 0 .. k-1 of a planned group at once against `complete` per spelled-out
    iteration and `complete_decodes` for the decodes after them, for k within the spelled-out
    ones and past them (up to the first finish, where a run's segment ends)."""
    core, batch = _group(members + prefills, budget)
    plan = core.plan_group(batch) if batch.seqs else None
    if plan is None or plan.m == 0:
        return
    m = plan.m
    last = plan.finish + 1 if plan.dctx else min(m, plan.finish)  # past m only when all decode there
    for k in sorted({1, 2, m // 2, m, m + 1, m + 3, last} & set(range(1, last + 1))):
        if not core.can_complete_planned(plan, k):
            continue
        a, batch_a = _group(members + prefills, budget)
        b, batch_b = _group(members + prefills, budget)
        plan_a, plan_b = a.plan_group(batch_a), b.plan_group(batch_b)
        ends = [1.0 + 0.03 * j + 0.001 * j * j for j in range(k)]
        for j in range(min(k, m)):
            a.complete(_iteration_batch(batch_a, plan_a, j), ends[j] - 0.03, ends[j])
        if k > m:
            a.complete_decodes(list(batch_a.seqs), ends[m:], ends[m:], allocated=True)
        b.complete_planned(plan_b, k, ends)
        assert _state(a, batch_a) == _state(b, batch_b)
        assert np.isclose(a.recorder.itl.total, b.recorder.itl.total, rtol=1e-12)


def test_complete_planned_is_not_offered_where_per_iteration_effects_matter():
    # A one-token request finishes with its prefill, in the second spelled-out iteration.
    core, batch = _group([(30, 50, 2, 0), (1000, 1, 0, 0)], 512)
    plan = core.plan_group(batch)
    assert plan.m == 2 and plan.finish == 1
    assert core.can_complete_planned(plan, 1) and not core.can_complete_planned(plan, 2)
    cached_kv = BlockManager(100, 16, enable_prefix_caching=True)
    cached = ReplicaCore(1, core.scheduler, cached_kv, RunRecorder(2, False))
    assert not cached.can_complete_planned(plan, 1)
    logged = ReplicaCore(2, core.scheduler, core.kv, RunRecorder(2, record_iterations=True))
    assert not logged.can_complete_planned(plan, 1)


def test_trace_rows_equal_request_across_chunks_and_optional_columns():
    n = 9000  # more than one chunk
    rng = np.random.default_rng(3)
    slo = rng.random(n)
    slo[::3] = np.nan
    full = Trace(
        np.cumsum(rng.random(n)), rng.integers(1, 100, n), rng.integers(1, 100, n),
        prefix_hashes=[tuple(range(i % 5)) for i in range(n)], hash_block_tokens=16,
        priority=rng.integers(0, 3, n), tenant=[f"t{i % 4}" for i in range(n)],
        ttft_slo=slo, e2e_slo=slo * 2, prompt_token_ids=[(1, 2, i) for i in range(n)],
    )
    bare = Trace(np.arange(5.0), np.ones(5, dtype=np.int64), np.full(5, 2))
    for trace in (full, bare, bare.select(np.arange(0))):
        rows = list(trace)
        assert rows == [trace.request(i) for i in range(len(trace))]
        for got, want in zip(rows, (trace.request(i) for i in range(len(trace)))):
            assert all(type(getattr(got, f)) is type(getattr(want, f)) for f in Request.__slots__)
