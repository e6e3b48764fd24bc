"""An arrival to a replica whose pipeline is full does not cut a pipelined run at once: the cut
moves to the next point at which stepping schedules (the head group's completion, or stage 0
freeing up after it; `Simulation._deferred_cut`), and that completion is committed in bulk.
The timeline, KV peak, routing (also by request count) and iteration counts must stay those of
stepping one micro-batch at a time; and a deferral that ignores when stepping schedules (a
pipeline with a free slot schedules the newcomer at once) must be caught by the same check."""

from __future__ import annotations

import pytest

from backends.cost_model import ParallelLayout
from sim.config import SimConfig
from sim.simulator import Simulation, simulate
from tests.sim_identity import pipelined_case
from tests.test_sim_pipeline_plan import VIDUR_PP, _same_timeline
from tests.test_sim_run_past_finish import short_output_trace


def _count_deferred(monkeypatch) -> dict:
    """Count arrivals whose cut was moved (to the head's completion, or to stage 0 freeing)."""
    seen = {"head": 0, "stage0": 0}
    orig = Simulation._deferred_cut

    def counted(self, pending, last_c, nxt, remaining, entry_t, stage_free, t):
        r = orig(self, pending, last_c, nxt, remaining, entry_t, stage_free, t)
        if r is not None:
            seen["head" if r == last_c[pending[0]] else "stage0"] += 1
        return r

    monkeypatch.setattr(Simulation, "_deferred_cut", counted)
    return seen


@pytest.mark.parametrize(
    ("pp", "router", "rate", "blocks", "seed", "long", "replicas"),
    [
        (2, "least-work", 4.0, 3000, 0, False, 2),
        (2, "least-requests", 6.0, 250, 1, False, 2),
        (3, "least-requests", 5.0, 600, 2, False, 2),
        (4, "least-work", 4.0, 3000, 3, False, 2),
        (2, "least-requests", 2.0, 800, 4, True, 2),
        # Busy replicas counted by requests: arrivals land between a head completion that
        # finishes members and stage 0 freeing up, where the count must already be lower.
        (2, "least-requests", 16.0, 3000, 0, False, 3),
        (2, "least-requests", 8.0, 3000, 1, False, 4),
    ],
)
def test_deferred_cuts_match_stepping(
    linear_cost, monkeypatch, pp, router, rate, blocks, seed, long, replicas
):
    tr = pipelined_case(linear_cost, pp, long, rate, seed)
    cfg = dict(num_kv_blocks=blocks, max_num_batched_tokens=256, num_replicas=replicas, router=router, pp=pp)
    seen = _count_deferred(monkeypatch)
    step = simulate(tr, SimConfig(jump=False, **cfg), linear_cost)
    assert seen["head"] == seen["stage0"] == 0  # stepping has no runs to cut
    jumped = simulate(tr, SimConfig(jump=True, **cfg), linear_cost)
    _same_timeline(step, jumped)
    assert seen["head"] > 10  # most arrivals found the pipeline full


def test_analytic_deferred_cuts_match_stepping(monkeypatch):
    """The vidur layout (TP2 x PP2, least-work) on the analytic model: both kinds of deferral."""
    seen = _count_deferred(monkeypatch)
    tr = short_output_trace(200, 4.0, 6)
    stepped = simulate(tr, SimConfig(jump=False, **VIDUR_PP))
    _same_timeline(stepped, simulate(tr, SimConfig(jump=True, **VIDUR_PP)))
    assert seen["head"] > 0 and seen["stage0"] > 0


def test_a_deferral_when_a_slot_is_free_is_caught(linear_cost, monkeypatch):
    """Deliberately wrong: defer even when fewer than `pp` groups are in flight (stepping then
    schedules the newcomer at the arrival). The comparison with stepping must notice."""
    linear_cost.per_ctx = 1e-6
    linear_cost.layout = ParallelLayout(1, 4)

    def too_eager(self, pending, last_c, nxt, remaining, entry_t, stage_free, t):
        if entry_t and entry_t[-1] >= t:
            return None
        c0 = last_c[pending[0]]
        if c0 <= t or (stage_free[0] > c0 and nxt[pending[0]] >= remaining[pending[0]]):
            return None
        return max(c0, stage_free[0])

    tr = short_output_trace(150, 0.5, 5)
    cfg = dict(num_kv_blocks=3000, max_num_batched_tokens=256, num_replicas=2, router="least-work", pp=4)
    step = simulate(tr, SimConfig(jump=False, **cfg), linear_cost)
    _same_timeline(step, simulate(tr, SimConfig(jump=True, **cfg), linear_cost))  # the real rule holds
    monkeypatch.setattr(Simulation, "_deferred_cut", too_eager)
    with pytest.raises(AssertionError):
        _same_timeline(step, simulate(tr, SimConfig(jump=True, **cfg), linear_cost))
