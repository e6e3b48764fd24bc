"""The pieces a pipelined run is planned and rebuilt with, checked against their plain forms:
`ReplicaCore.plan_group` against stepping a group's iterations one by one (the scheduler's
`steady_counts`, `ReplicaCore.shape`, the token bookkeeping of `complete`), and
`BlockManager.allocate_each` (which takes clean blocks inline) against `allocate` per sequence."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from policies.kv.block_manager import BlockManager
from policies.scheduling.base import SchedulerConfig
from policies.scheduling.batch import ScheduledBatch
from policies.scheduling.fcfs import FCFSScheduler
from policies.sequence import Sequence
from sim.replica_core import _NEVER, ReplicaCore
from sim.results import RunRecorder
from traces.schema import Request

# (prompt, output, outputs done, tokens computed, recomputing) per member: decoding (done > 0,
# computed = prompt + done - 1), recomputing after a preemption (done > 0, `computed` of its
# prompt + done tokens back), or a prefill that has `computed` of `prompt` tokens.
member = st.tuples(
    st.integers(1, 700), st.integers(1, 40), st.integers(0, 39), st.integers(0, 699), st.booleans()
).map(lambda t: (t[0], t[1], min(t[2], t[1] - 1), t[3], t[4]))


def _make_group(members: list[tuple[int, int, int, int, bool]], budget: int):
    kv = BlockManager(10_000, 16)
    sched = FCFSScheduler(SchedulerConfig(max_num_batched_tokens=budget, max_num_seqs=256))
    core = ReplicaCore(0, sched, kv, RunRecorder(len(members)))
    seqs = []
    for i, (p, o, done, c, recomputing) in enumerate(members):
        s = Sequence(Request(i, 0.0, p, o))
        s.num_output_tokens = done
        if done:
            s.num_computed_tokens = min(c, p + done - 1) if recomputing else p + done - 1
        else:
            s.num_computed_tokens = min(c, p - 1)
        seqs.append(s)
    counts = sched.steady_counts([s.num_uncomputed for s in seqs])
    for s, k in zip(seqs, counts):
        assert kv.allocate(s, max(k, 1))
    return core, seqs, counts


def _step_reference(core: ReplicaCore, seqs: list[Sequence], counts: list[int], max_explicit: int):
    """The group stepped plainly on copies: per iteration its counts, shape and running work,
    until every member decodes, a member finishes, or the scheduler would leave one out."""
    seqs = [copy.copy(s) for s in seqs]
    rows, shapes, work = [], [], []
    done = 0
    finish = stop = _NEVER
    j = 0
    while True:
        if all(k == 1 for k in counts) and all(
            s.num_output_tokens > 0 and s.num_computed_tokens + 1 == s.num_tokens for s in seqs
        ):
            break
        if j >= max_explicit:
            stop = j
            break
        shapes.append(ReplicaCore.shape(ScheduledBatch(list(seqs), list(counts))))
        rows.append(list(counts))
        done += sum(counts)
        work.append(done)
        for s, k in zip(seqs, counts):
            s.num_computed_tokens += k
            if s.num_computed_tokens == s.num_tokens:
                s.num_output_tokens += 1
                if s.num_output_tokens >= s.request.output_len and finish == _NEVER:
                    finish = j
        j += 1
        if finish != _NEVER:
            break
        counts = core.scheduler.steady_counts([s.num_uncomputed for s in seqs])
        if 0 in counts:
            stop = j
            break
    return seqs, rows, shapes, work, finish, stop, j


@settings(max_examples=300, deadline=None)
@given(st.lists(member, min_size=1, max_size=10), st.integers(8, 600), st.integers(1, 6))
def test_plan_group_equals_stepping(members, budget, max_explicit):
    core, seqs, counts = _make_group(members, budget)
    if 0 in counts:  # the scheduler leaves those from the first 0 on out: the group is the rest
        seqs, counts = seqs[: counts.index(0)], counts[: counts.index(0)]
        if not seqs:
            return
    before = [(s.num_computed_tokens, s.num_output_tokens, list(s.block_table)) for s in seqs]
    plan = core.plan_group(ScheduledBatch(list(seqs), list(counts)), max_explicit=max_explicit)
    assert [(s.num_computed_tokens, s.num_output_tokens, s.block_table) for s in seqs] == before
    after, rows, shapes, work, finish, stop, m = _step_reference(core, seqs, counts, max_explicit)
    assert plan.counts == rows and plan.shapes == shapes and plan.work == work
    assert plan.stop == stop
    if finish != _NEVER or stop != _NEVER:
        assert plan.finish == finish and plan.dctx == [] and plan.finishes == []
    else:  # decodes from m on: each member's context and finishing iteration
        assert plan.dctx == [s.num_computed_tokens + 1 - m for s in after]
        assert plan.finishes == [m + s.request.output_len - s.num_output_tokens - 1 for s in after]
        assert plan.finish == min(plan.finishes)
        assert plan.ctx0 == sum(plan.dctx) and plan.max0 == max(plan.dctx)
    # KV bound: at iteration j a member holds at most c + j + 1 tokens, and c is the least such
    # value (a larger one would stop runs on KV earlier than needed).
    for i, (s, (c, cap)) in enumerate(zip(seqs, plan.kv)):
        assert cap == len(s.block_table) * 16
        held = s.num_computed_tokens
        least = held
        for j, row in enumerate(rows):
            held += row[i]
            assert held <= c + j + 1
            least = max(least, held - j - 1)
        if plan.dctx:
            assert after[i].num_computed_tokens + 1 <= c + m + 1  # first decode iteration
            least = max(least, after[i].num_computed_tokens - m)
        assert c == least


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 60), min_size=4, max_size=4),
    st.lists(st.tuples(st.integers(0, 90), st.integers(1, 40)), min_size=1, max_size=8),
)
def test_allocate_each_equals_allocate_one_by_one(cached_lengths, asks):
    """With clean and cached-free (evictable) blocks in the pool, `allocate_each` takes the same
    blocks in the same order as `allocate` called per sequence, and stops at the same one."""

    def pool():
        kv = BlockManager(24, 4, enable_prefix_caching=True)
        for i, n in enumerate(cached_lengths):  # publish, then free: cached-free blocks
            s = Sequence(Request(100 + i, 0.0, n, 1), token_ids=[i * 1000 + t for t in range(n)])
            if kv.allocate(s, n):
                s.num_computed_tokens = n
                kv.cache_blocks(s)
                kv.free(s)
        seqs = []
        for i, (c, _) in enumerate(asks):
            s = Sequence(Request(i, 0.0, c + 50, 1))
            if c and kv.allocate(s, c):
                s.num_computed_tokens = c
            seqs.append(s)
        return kv, seqs

    kv_a, seqs_a = pool()
    kv_b, seqs_b = pool()
    needs = [n for _, n in asks]
    short = kv_a.allocate_each(seqs_a, needs)
    short_b = None
    for s, n in zip(seqs_b, needs):
        if not kv_b.allocate(s, n):
            short_b = s
            break
    assert (short.id if short else None) == (short_b.id if short_b else None)
    assert [s.block_table for s in seqs_a] == [s.block_table for s in seqs_b]
    assert kv_a.ref_count == kv_b.ref_count
    assert kv_a._clean == kv_b._clean and list(kv_a._cached_free) == list(kv_b._cached_free)
    assert kv_a.stats.evictions == kv_b.stats.evictions
    assert kv_a.stats.peak_used_blocks == kv_b.stats.peak_used_blocks
    kv_a.check_invariants()
