"""A pipelined run's rebuild leaves micro-batches in flight whose completion events are scheduled
only when the replica is about to wait or step (`_ARM_LATE`): the next run nearly always starts
at once and takes them over, and their events would only fire as no-ops. Scheduling them late
(at the same instant, before any other event of that replica) must give the very same run as
scheduling them at once: every per-request time to the bit, the ITL histogram, the iteration
count, the KV statistics and the simulated end time; and it must save events."""

from __future__ import annotations

import pytest

import sim.simulator as simulator
from sim.config import SimConfig
from sim.simulator import Simulation
from tests.sim_identity import assert_identical_runs, counting_calls, pipelined_case
from tests.test_sim_pipeline_plan import VIDUR_PP, long_prompt_trace


def _run(monkeypatch, late: bool, tr, cfg: SimConfig, cost) -> tuple:
    monkeypatch.setattr(simulator, "_ARM_LATE", late)
    sim = Simulation(tr, cfg, cost)
    with counting_calls(sim.env, "schedule") as calls:  # every SimPy event goes through it
        result = sim.run()
    return result, calls[0]


@pytest.mark.parametrize(
    ("pp", "router", "rate", "blocks", "seed", "long"),
    [
        (2, "least-work", 4.0, 3000, 0, False),
        (2, "least-requests", 6.0, 250, 1, True),
        (3, "round-robin", 5.0, 600, 2, False),
        (4, "least-work", 3.0, 3000, 3, True),
    ],
)
def test_late_completion_events_match_immediate_ones(linear_cost, monkeypatch, pp, router, rate, blocks, seed,
                                                     long):
    tr = pipelined_case(linear_cost, pp, long, rate, seed)
    cfg = SimConfig(num_kv_blocks=blocks, max_num_batched_tokens=256, num_replicas=2, router=router, pp=pp)
    now, events_now = _run(monkeypatch, False, tr, cfg, linear_cost)
    late, events_late = _run(monkeypatch, True, tr, cfg, linear_cost)
    assert_identical_runs(now, late)
    assert events_late < events_now


def test_late_completion_events_match_on_the_benchmark_layout(monkeypatch):
    tr = long_prompt_trace(300, 3.0, 5)
    cfg = SimConfig(**VIDUR_PP, num_kv_blocks=2000)
    now, events_now = _run(monkeypatch, False, tr, cfg, None)
    late, events_late = _run(monkeypatch, True, tr, cfg, None)
    assert_identical_runs(now, late)
    assert events_late < events_now
