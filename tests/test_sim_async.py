"""The simulator's overlapped replica (SimConfig.async_scheduling), mirroring the engine's loop that
schedules step k+1 while step k runs: the same timeline as stepping when no host time is modelled,
an arrival joins one step later, and with a calibrated model the host's work hides under the device's."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest

from backends.calibrated import CalibratedCostModel
from backends.cost_model import BatchShape, OverlapParts, ParallelLayout
from backends.profile import ServingStep
from benchmarks.metrics import compute_metrics
from sim.config import SimConfig
from sim.simulator import simulate
from tests.conftest import LinearCost
from tests.test_calibrated import grid, synthetic_profile, true_execute
from traces.schema import Trace

# host part of a decode graph step: fixed + per sequence + per context token (s)
H0, H1, H2 = 1.5e-4, 2e-6, 3e-9


def _trace(arrival, prompt, output) -> Trace:
    return Trace(arrival=np.array(arrival, dtype=float), prompt_len=np.array(prompt),
                 output_len=np.array(output), name="t")  # fmt: skip


def _burst(n: int = 24, seed: int = 0) -> Trace:
    rng = np.random.default_rng(seed)
    return _trace(np.zeros(n), rng.integers(20, 3000, n), rng.integers(1, 300, n))


def _cfg(**kw) -> SimConfig:
    return SimConfig(max_num_batched_tokens=2048, max_num_seqs=16, num_kv_blocks=4000, **kw)


def test_without_host_time_the_overlapped_loop_keeps_the_stepped_timeline() -> None:
    trace = _burst()
    for cost in (None, LinearCost(per_ctx=1e-7)):  # the analytic model and a linear one
        a = simulate(trace, _cfg(), cost).requests
        b = simulate(trace, _cfg(async_scheduling="all"), cost).requests
        for col in ("first_token", "finish", "cached_tokens"):  # (scheduled a step earlier: at its start)
            np.testing.assert_allclose(b[col], a[col], rtol=1e-12, err_msg=col)


def test_an_arrival_during_a_step_joins_one_step_later() -> None:
    # Request 1 arrives while request 0's first chunk runs: stepping schedules it right after that
    # chunk; the overlapped loop had scheduled the next step already, so it waits one more.
    trace = _trace([0.0, 0.001], [4000, 50], [20, 20])
    cost = LinearCost()
    a = simulate(trace, _cfg(), cost)
    b = simulate(trace, _cfg(async_scheduling="all"), cost)
    ends_a = np.asarray(a.iterations["end"])
    ends_b = np.asarray(b.iterations["end"])
    assert a.requests["first_token"][1] == pytest.approx(ends_a[1])  # in step 2 (second chunk of 0)
    assert b.requests["first_token"][1] == pytest.approx(ends_b[2])  # in step 3
    assert b.requests["first_token"][1] > a.requests["first_token"][1]


def _profile_with_device_times():
    prof = synthetic_profile()
    samples = []
    for s in prof.samples:
        if not s.prefill:  # decode graph steps: device time = wall less the host line
            s = replace(s, device_s=s.median_s - (H0 + H1 * s.num_decode + H2 * s.decode_context))
        samples.append(s)
    return replace(prof, samples=samples)


def test_calibrated_model_hides_the_host_under_the_device() -> None:
    m = CalibratedCostModel(profile=_profile_with_device_times())
    assert m._graph_host["decode"] == pytest.approx((H0, H1, H2), rel=1e-6)
    shape = BatchShape([], 32, 32 * 1000)
    p = m.parts(shape)
    lead, launch, device, after, graphed = m.overlap_parts(shape)
    host = H0 + H1 * 32 + H2 * 32 * 1000
    assert device == pytest.approx(true_execute(shape) - host, rel=1e-6) and graphed
    assert lead == pytest.approx(p["schedule"] + host) and launch == 0.0 and after == p["complete"]
    # an eager step: its launches keep the host busy while its kernels run
    big = BatchShape([(2000, 0)], 8, 8 * 500)
    lead, launch, device, after, graphed = m.overlap_parts(big)
    assert max(device, launch) == pytest.approx(m.parts(big)["execute"])
    assert launch > 0 and lead == m.parts(big)["schedule"] and not graphed
    # serving: the overlapped loop is faster by about the host's share of decode steps
    trace = _trace(np.zeros(16), [200] * 16, [400] * 16)
    t_sync = compute_metrics(simulate(trace, _cfg(), m))["duration_s"]
    t_async = compute_metrics(simulate(trace, _cfg(async_scheduling="all"), m))["duration_s"]
    assert t_async < t_sync
    p16 = m.parts(BatchShape([], 16, 16 * 400))
    per_step = p16["schedule"] + p16["complete"] + H0 + H1 * 16 + H2 * 16 * 400
    assert (t_sync - t_async) / 400 == pytest.approx(per_step, rel=0.1)


def test_the_serving_loops_launches_set_the_host_part_of_graph_steps() -> None:
    """The grid's own launches of a graph step run slow (cold host path after building its batch);
    where the serving phase logged its launches, a graph step is its device time plus the host line
    (the grid launches' slopes, the loop's level) plus the grid's remainder (wall less launch less
    device), in the sync model as in the async one."""
    G0, REST = 4e-4, 3e-5  # the grid's launch: 400 us more than the loop's; 30 us after the device
    prof = _profile_with_device_times()
    loop_line = (1e-4, 1e-6, 2e-9)

    def loop(shape: BatchShape) -> float:
        return loop_line[0] + loop_line[1] * shape.num_seqs + loop_line[2] * shape.decode_context

    samples = []
    for s in prof.samples:
        if s.device_s is not None:  # the grid: wall = its (slow) launch + device + the remainder
            launch = G0 + loop(s.shape)
            s = replace(s, launch_s=launch, times_s=(launch + s.device_s + REST,))
            s = replace(s, median_s=s.times_s[0])
        samples.append(s)
    served = [
        ServingStep((), n, n * c, 0, 1e-4, 0.01, 1e-4, loop(BatchShape([], n, n * c)))
        for n in (1, 3, 8, 20, 64) for c in (300,)  # one context length: seqs and tokens collinear
    ]  # fmt: skip
    grid_only = CalibratedCostModel(profile=replace(prof, samples=samples))
    m = CalibratedCostModel(profile=replace(prof, samples=samples, serving=served))
    assert m._graph_host["decode"] == pytest.approx((loop_line[0] + REST, *loop_line[1:]), rel=1e-6)
    for n, c in ((1, 500), (12, 3000), (48, 1500), (8, 20000)):  # the slopes hold at long contexts
        shape = BatchShape([], n, n * c)
        device = true_execute(shape) - (H0 + H1 * n + H2 * n * c)  # the samples' device time
        ex = m.parts(shape)["execute"]
        assert ex == pytest.approx(device + loop(shape) + REST, rel=0.02)
        assert grid_only.parts(shape)["execute"] - ex == pytest.approx(G0, rel=0.05)
        lead, _, dev, _, graphed = m.overlap_parts(shape)
        assert graphed and dev == pytest.approx(ex - loop(shape) - REST, rel=1e-6)
        # The launch alone, as a run's own launches are logged: the loop's line, without the remainder.
        assert m.host_launch(shape) == pytest.approx(loop(shape), rel=1e-6)
        assert grid_only.host_launch(shape) is None  # no serving launches: nothing to compare with


def test_measured_eager_launch_times_set_the_launch_part() -> None:
    """The grid's eager steps are GPU-bound, so the eager fit cannot see their launch; the profile's
    launch_s (host seconds of `ModelRunner.launch`) gives it, a line in sequences and tokens."""
    L0, L1, L2 = 0.012, 4e-5, 1e-6
    prof = _profile_with_device_times()
    samples = [
        replace(s, launch_s=L0 + L1 * s.shape.num_seqs + L2 * s.shape.num_tokens) if s.prefill else s
        for s in prof.samples
    ]
    # graph steps (their device timed) launch by staging inputs for one replay: not in the line
    samples = [replace(s, launch_s=1e-4, device_s=s.median_s) if s.prefill and i % 4 == 0 else s
               for i, s in enumerate(samples)]  # fmt: skip
    m = CalibratedCostModel(profile=replace(prof, samples=samples))
    assert m._eager_launch == pytest.approx((L0, L1, L2), rel=1e-6)
    big = BatchShape([(2000, 0)], 8, 8 * 500)
    lead, launch, device, after, graphed = m.overlap_parts(big)
    assert launch == pytest.approx(L0 + L1 * 9 + L2 * 2008) and not graphed
    assert m.host_launch(big) == launch
    assert CalibratedCostModel(profile=prof).host_launch(big) is None
    # The serving loop's eager launches set the line's level; the grid keeps its slopes.
    LOOP0 = 0.007  # the loop launched 5 ms faster than the grid did
    served = [
        ServingStep(((t, 0),), n, n * 300, 0, 1e-4, 0.05, 1e-4, LOOP0 + L1 * (n + 1) + L2 * (t + n))
        for n in (0, 4, 16) for t in (512, 2048)
    ]  # fmt: skip
    looped = CalibratedCostModel(profile=replace(prof, samples=samples, serving=served))
    assert looped._eager_launch == pytest.approx((LOOP0, L1, L2), rel=1e-6)
    assert looped.host_launch(big) == pytest.approx(launch - (L0 - LOOP0))
    # one step at a time, nothing changes
    assert m.stage_time(big) == CalibratedCostModel(profile=prof).stage_time(big)


def test_the_fit_report_counts_launch_bound_eager_samples() -> None:
    """An eager sample that took no longer than its launch was the host's time, not the device's."""
    prof = _profile_with_device_times()
    eager = [i for i, s in enumerate(prof.samples) if s.prefill and s.device_s is None]
    bound = set(eager[:2])
    samples = [
        replace(s, launch_s=s.median_s if i in bound else 0.5 * s.median_s) if i in eager else s
        for i, s in enumerate(prof.samples)
    ]
    m = CalibratedCostModel(profile=replace(prof, samples=samples))
    assert any(n.startswith(f"2 of {len(eager)} eager grid samples") for n in m.notes)
    assert not any("eager grid samples" in n for n in CalibratedCostModel(profile=prof).notes)


def test_a_profile_without_device_times_cannot_simulate_async() -> None:
    m = CalibratedCostModel(profile=synthetic_profile(shapes=grid()))
    with pytest.raises(ValueError, match="device_s"):
        m.overlap_parts(BatchShape([], 4, 400))
    with pytest.raises(ValueError, match="pp = 1"):
        SimConfig(pp=2, async_scheduling="graphs")


@dataclass
class EagerPrefillCost:
    """Every prefill step runs eagerly: 50 ms of device work, launched from Python in 10 ms."""

    name: str = "eager-test"
    layout: ParallelLayout = ParallelLayout()

    def stage_time(self, shape: BatchShape) -> float:
        return 0.05

    def decode_line(self, num_decode: int) -> tuple[float, float]:
        return 0.05, 0.0

    def overlap_parts(self, shape: BatchShape) -> OverlapParts:
        return OverlapParts(0.0, 0.01 if shape.prefill else 0.0, 0.05, 0.0, not shape.prefill)


def test_graphs_mode_collects_before_an_eager_step_and_all_mode_waits_for_its_launch() -> None:
    # Four one-token requests, one 2048-token prefill step each (an eager step apiece).
    trace = _trace(np.zeros(4), [2048] * 4, [1] * 4)
    got = {
        mode: simulate(trace, _cfg(async_scheduling=mode), EagerPrefillCost()).requests["first_token"]
        for mode in ("off", "graphs", "all")
    }
    np.testing.assert_allclose(got["off"], [0.05, 0.10, 0.15, 0.20])
    np.testing.assert_allclose(got["graphs"], got["off"])  # each step's ids collected at its end
    # "all": the next step's launch blocks until the step in flight ends, and its ids wait for it
    np.testing.assert_allclose(got["all"], [0.06, 0.11, 0.16, 0.20])


def test_a_horizon_inside_the_overlap_reports_every_request() -> None:
    """Stopping the clock with steps in flight: sequences those steps released on reaching their
    length have not delivered their last token, and are reported unfinished with their lengths."""
    trace = _burst(24, seed=2)
    full = simulate(trace, _cfg(async_scheduling="all")).requests
    # just before some requests' last tokens arrive: the step that gives them is in flight
    for horizon in np.sort(full["finish"])[[2, 9, 17]] - 1e-6:
        cut = simulate(trace, _cfg(async_scheduling="all", horizon=horizon)).requests
        done = cut["status"] == "finished"
        assert (cut["finish"][done] <= horizon).all()
        np.testing.assert_array_equal(cut["finish"][done], full["finish"][done])
        # every request whose first token came before the horizon is reported with it
        early = full["first_token"] < horizon
        np.testing.assert_array_equal(cut["first_token"][early], full["first_token"][early])
        assert (cut["output_tokens"][early] > 0).all()
        assert set(cut["status"]) <= {"finished", "unfinished"}
