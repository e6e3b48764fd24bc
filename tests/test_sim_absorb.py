"""A pipelined run takes in the batch that stepping schedules where the run would otherwise end
(`absorb` in `Simulation._pipelined_decode_run`): at an arrival's deferred cut (the head of a
full pipeline completes, or the head has completed and stage 0 frees up; `_deferred_cut`), and
at a completion that finishes members of the head. The new batch enters as a new group and the
groups in flight keep their plans. The timeline, KV peak, routing (by work and by request
count) and iteration counts must stay those of stepping one micro-batch at a time, with the KV
pool tight (preemptions, batches that cannot be taken in), and every commit must find its
blocks taken; a take-in that ignores a waiting request must be caught by the same check."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sim.simulator as simulator
from backends.cost_model import ParallelLayout
from policies.kv.block_manager import BlockManager
from policies.scheduling.base import SchedulerConfig
from policies.scheduling.fcfs import FCFSScheduler
from policies.sequence import Sequence
from sim.config import SimConfig
from sim.replica_core import ReplicaCore
from sim.results import RunRecorder
from sim.simulator import Simulation, _first_shape, _shared_kv_limit, simulate
from tests.sim_identity import pipelined_case
from tests.test_sim_bulk_paths import _group, member, prefill
from tests.test_sim_pipeline_plan import VIDUR_PP, _same_timeline, long_prompt_trace
from tests.test_sim_run_past_finish import short_output_trace
from traces.schema import Request

ABSORBING = dict(enable_prefix_caching=False, record_iterations=False)


def _count_absorbs(monkeypatch) -> dict:
    """Count the batches runs tried to take in (`_absorbable` is asked once per try) and took,
    and the deferred cuts, among them those where the head had completed before the arrival."""
    seen = {"tries": 0, "taken": 0, "deferred": 0, "head_done": 0}
    absorbable = simulator._absorbable

    def counted(core, batch, n_flight):
        ok = absorbable(core, batch, n_flight)
        seen["tries"] += 1
        seen["taken"] += ok
        return ok

    monkeypatch.setattr(simulator, "_absorbable", counted)
    deferred_cut = Simulation._deferred_cut

    def cut(self, pending, last_c, nxt, remaining, entry_t, stage_free, t):
        r = deferred_cut(self, pending, last_c, nxt, remaining, entry_t, stage_free, t)
        if r is not None:
            seen["deferred"] += 1
            seen["head_done"] += last_c[pending[0]] < t
        return r

    monkeypatch.setattr(Simulation, "_deferred_cut", cut)
    return seen


def _check_blocks(monkeypatch) -> None:
    """After every commit, each running sequence holds blocks for all the tokens it has computed
    (a run takes the blocks of what it commits first, as stepping allocates before computing)."""
    for name in ("complete", "complete_planned", "complete_decodes"):
        orig = getattr(ReplicaCore, name)

        def checked(self, *args, _orig=orig, _name=name, **kw):
            out = _orig(self, *args, **kw)
            bs = self.kv.block_size
            for s in self.running:
                assert s.num_computed_tokens <= len(s.block_table) * bs, (
                    f"{_name}: sequence {s.id} computed {s.num_computed_tokens} tokens in "
                    f"{len(s.block_table)} blocks"
                )
            return out

        monkeypatch.setattr(ReplicaCore, name, checked)


@pytest.mark.parametrize(
    ("pp", "router", "rate", "blocks", "seed", "long", "replicas"),
    [
        (2, "least-work", 3.0, 3000, 0, False, 2),
        (2, "least-requests", 6.0, 250, 1, False, 2),
        (3, "least-work", 4.0, 600, 2, False, 2),
        (4, "round-robin", 3.0, 3000, 3, False, 2),
        (2, "least-work", 1.5, 800, 4, True, 2),
        (3, "least-requests", 2.0, 400, 5, True, 2),
        (2, "least-requests", 16.0, 3000, 0, False, 3),
        # A pool so small that the KV limit ends runs: a take-in must cap the groups in flight too.
        (2, "least-work", 2.0, 100, 0, False, 2),
        (3, "least-work", 2.0, 150, 2, False, 2),
    ],
)
def test_absorbed_batches_match_stepping(
    linear_cost, monkeypatch, pp, router, rate, blocks, seed, long, replicas
):
    tr = pipelined_case(linear_cost, pp, long, rate, seed)
    cfg = dict(num_kv_blocks=blocks, max_num_batched_tokens=384, num_replicas=replicas, router=router, pp=pp,
               **ABSORBING)
    step = simulate(tr, SimConfig(jump=False, **cfg), linear_cost)
    seen = _count_absorbs(monkeypatch)
    _check_blocks(monkeypatch)
    jumped = simulate(tr, SimConfig(jump=True, **cfg), linear_cost)
    _same_timeline(step, jumped)
    # Batches were taken in, also where the head had completed before the arrival.
    assert seen["taken"] >= 5 and seen["head_done"] > 0


@pytest.mark.parametrize(("rate", "blocks", "seed"), [(5.0, 3000, 2), (3.0, 800, 16)])
def test_kv_peak_with_blocks_left_to_the_next_commit(linear_cost, rate, blocks, seed):
    """A take-in leaves the blocks of the groups behind the head to the next commit point
    unless the head's commit frees some: traces whose KV peak falls at such a free."""
    linear_cost.per_ctx = 1e-6
    linear_cost.layout = ParallelLayout(1, 2)
    tr = short_output_trace(300, rate, seed)
    cfg = dict(num_kv_blocks=blocks, max_num_batched_tokens=384, num_replicas=2, router="least-work", pp=2,
               **ABSORBING)
    _same_timeline(simulate(tr, SimConfig(jump=False, **cfg), linear_cost),
                   simulate(tr, SimConfig(jump=True, **cfg), linear_cost))


def test_room_for_the_groups_behind_the_head_counts_the_heads_blocks(linear_cost):
    """A take-in left the blocks of a group behind the head to the next commit point on a room
    check made before the head's own blocks were taken; the batch scheduled then took the
    rest of the pool and the group's next commit found no block ("exceeded its KV plan").
    The pool is so tight that requests thrash (preempted again and again, no end without a
    horizon)."""
    linear_cost.per_ctx = 1e-6
    linear_cost.layout = ParallelLayout(1, 2)
    tr = long_prompt_trace(200, 3.0, 12)
    cfg = dict(num_kv_blocks=80, max_num_batched_tokens=384, num_replicas=2, router="least-requests", pp=2,
               horizon=300.0, **ABSORBING)
    _same_timeline(simulate(tr, SimConfig(jump=False, **cfg), linear_cost),
                   simulate(tr, SimConfig(jump=True, **cfg), linear_cost))


def test_no_absorbing_with_the_iteration_log_or_prefix_cache(linear_cost, monkeypatch):
    """Iteration rows are appended as iterations are committed, and a block published in flight
    could serve a new batch: neither path takes batches in, and both match stepping."""
    linear_cost.per_ctx = 1e-6
    linear_cost.layout = ParallelLayout(1, 2)
    tr = short_output_trace(300, 3.0, 0)
    seen = _count_absorbs(monkeypatch)
    for kw in (dict(enable_prefix_caching=False, record_iterations=True),
               dict(enable_prefix_caching=True, record_iterations=False)):
        cfg = dict(num_kv_blocks=3000, max_num_batched_tokens=384, num_replicas=2, router="least-work", pp=2,
                   **kw)
        _same_timeline(simulate(tr, SimConfig(jump=False, **cfg), linear_cost),
                       simulate(tr, SimConfig(jump=True, **cfg), linear_cost))
    assert seen["tries"] == 0 and seen["head_done"] == 0


def test_analytic_absorbed_batches_match_stepping(monkeypatch):
    """The vidur layout (TP2 x PP2, least-work) on the analytic model: all three kinds of take-in."""
    seen = _count_absorbs(monkeypatch)
    _check_blocks(monkeypatch)
    tr = short_output_trace(300, 4.0, 6)
    cfg = dict(VIDUR_PP, **ABSORBING)
    _same_timeline(simulate(tr, SimConfig(jump=False, **cfg)), simulate(tr, SimConfig(jump=True, **cfg)))
    # Each deferred cut is one try at most, so more tries mean finishes were taken in too.
    assert seen["head_done"] > 0 and seen["deferred"] > seen["head_done"] and seen["tries"] > seen["deferred"]


def test_taking_in_past_a_waiting_request_is_caught(linear_cost, monkeypatch):
    """Deliberately wrong: take a batch in although a request still waits (the sequence cap
    keeps it out), as if the run stayed steady. The comparison with stepping must notice."""
    linear_cost.per_ctx = 1e-6
    linear_cost.layout = ParallelLayout(1, 2)
    tr = short_output_trace(300, 8.0, 1)
    cfg = dict(num_kv_blocks=3000, max_num_batched_tokens=384, max_num_seqs=6, num_replicas=2,
               router="least-work", pp=2, **ABSORBING)
    step = simulate(tr, SimConfig(jump=False, **cfg), linear_cost)
    _same_timeline(step, simulate(tr, SimConfig(jump=True, **cfg), linear_cost))

    def eager(core, batch, n_flight):
        return not batch.is_empty and not batch.preempted and len(batch.seqs) + n_flight == len(core.running)

    monkeypatch.setattr(simulator, "_absorbable", eager)
    with pytest.raises(AssertionError):
        _same_timeline(step, simulate(tr, SimConfig(jump=True, **cfg), linear_cost))


@settings(max_examples=300, deadline=None)
@given(st.lists(member, max_size=9), st.lists(prefill, max_size=2), st.integers(8, 300))
def test_first_shape_is_the_scheduled_shape(members, prefills, budget):
    """A take-in enters the new group with the shape of its plan's iteration 0: it must be what
    `ReplicaCore.shape` makes of the batch, to the order of the prefill chunks (the cost model
    sums them in order)."""
    core, batch = _group(members + prefills, budget)
    if not batch.seqs:
        return
    assert _first_shape(core.plan_group(batch)) == core.shape(batch)


# Per member: (tokens held now, envelope above them, iteration in flight o), per group.
kv_group = st.lists(st.tuples(st.integers(1, 300), st.integers(0, 40)), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(kv_group, st.integers(0, 30)), min_size=1, max_size=3), st.integers(40, 400),
       st.integers(1, 200))
def test_shared_kv_limit_is_kv_limit(groups, num_blocks, k_max):
    """A take-in caps the groups in flight with one pass when there is room: the result must be
    `ReplicaCore.kv_limit`'s on the pairs it stands for, with room and without."""
    kv = BlockManager(num_blocks, 16, enable_prefix_caching=False)
    core = ReplicaCore(0, FCFSScheduler(SchedulerConfig(512, 256)), kv, RunRecorder(1, False))
    given_groups = []
    pairs = []
    i = 0
    for members, o in groups:
        seqs, envelopes = [], []
        for held, extra in members:
            s = Sequence(Request(i, 0.0, 1000, 1000))
            i += 1
            if not kv.allocate(s, held):
                return
            seqs.append(s)
            c = held - o - 1 + extra  # holds at most c + o + k tokens k iterations on
            if o:
                envelopes.append((c, 0))  # the capacity is read from the block table
                pairs.append((c + o, len(s.block_table) * 16))
            else:
                envelopes.append((c, len(s.block_table) * 16))
                pairs.append(envelopes[-1])
        given_groups.append((seqs, envelopes, o))
    hog = Sequence(Request(i, 0.0, 100_000, 1))
    while True:  # the free pool shrinking block by block: across the point where room runs out
        assert _shared_kv_limit(core, given_groups, k_max) == core.kv_limit(pairs, k_max)
        if not kv.allocate(hog, len(hog.block_table) * 16 + 1):
            break
