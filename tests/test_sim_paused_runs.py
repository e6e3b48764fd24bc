"""Pipelined runs paused at the next arrival are extended by the arrival process each time an
arrival goes to another replica (`Simulation._extend_runs`). A run the arrival woke is cut
there, so the arrival process drops it from `_paused` at once (`_arrivals`) instead of testing
every paused run's event at each arrival: no run whose wake-up fired may be extended, and
every run that is extended must still be waiting."""

from __future__ import annotations

import pytest

import sim.simulator as simulator
from backends.cost_model import ParallelLayout
from sim.config import SimConfig
from sim.simulator import Simulation
from tests.test_sim_pipeline_plan import VIDUR_PP
from tests.test_sim_run_past_finish import short_output_trace


def _checked_run(monkeypatch, tr, cfg: SimConfig, cost) -> int:
    extend = Simulation._extend_runs
    extended = [0]

    def checked(self) -> None:
        for _advance, _result, ev in self._paused.values():
            assert not ev.triggered, "a run cut by an arrival is still listed as paused"
            extended[0] += 1
        extend(self)

    monkeypatch.setattr(simulator.Simulation, "_extend_runs", checked)
    Simulation(tr, cfg, cost).run()
    return extended[0]


@pytest.mark.parametrize(("pp", "router", "absorbing"), [(2, "least-work", True), (3, "round-robin", False)])
def test_only_waiting_runs_are_extended(linear_cost, monkeypatch, pp, router, absorbing):
    linear_cost.per_ctx = 1e-6
    linear_cost.layout = ParallelLayout(1, pp)
    cfg = SimConfig(num_kv_blocks=3000, max_num_batched_tokens=256, num_replicas=3, router=router, pp=pp,
                    enable_prefix_caching=not absorbing, record_iterations=not absorbing)
    assert _checked_run(monkeypatch, short_output_trace(300, 6.0, pp), cfg, linear_cost) > 0


def test_only_waiting_runs_are_extended_on_the_benchmark_layout(monkeypatch):
    cfg = SimConfig(**VIDUR_PP, num_kv_blocks=3000, record_iterations=False)
    assert _checked_run(monkeypatch, short_output_trace(300, 4.0, 9), cfg, None) > 0
