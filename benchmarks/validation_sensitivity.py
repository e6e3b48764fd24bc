"""How far a validation's headline errors move when every predicted step runs a little slower.

At a fixed arrival process a replica whose steps are 1% slower holds more sequences per step and
queues longer, so a latency percentile moves by a multiple of 1% that depends on the operating
point: re-simulating host U's 1,000-request Azure slice at 50% load (H200) with every step scaled
by 0.99 moved TPOT P50 by 2.5 points and E2E P50 by 2.9. The slice is simulated again with the cost
model scaled by 1 - delta and 1 + delta; the central difference gives each headline figure's points
of error per 1% of step time. A third simulation scales every step by the run's own step bias
(predicted over measured step time, summed over its iterations), so that the steps sum to the
measured time, and gives what each error would be without that bias: how much of a miss is step
time, and how much is something else (queueing, sampling, scheduling). It is simulated rather than
extrapolated from the slope because near saturation the response is far from linear: on host V's
Azure slice at 90% load (H200) TTFT P90 moved 3.7 points per 1% over +-1%, but 7.9 points when its
-2.1% bias was taken out. The capacity run is simulated too (`operating_point`): the load each side
really ran at.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backends.cost_model import BatchShape, CostModel, OverlapParts, abcg
from benchmarks.metrics import compute_metrics
from benchmarks.validation_errors import error_rows
from sim.config import SimConfig
from sim.results import RunResult
from sim.simulator import Simulation
from traces.schema import Trace
from traces.transforms import replace_arrivals

DELTA = 0.01


@dataclass(frozen=True)
class ScaledCost:
    """A cost model whose every second is `k` times the inner model's (the CostModel protocol by
    delegation; the decode line's g, a fraction, is kept)."""

    inner: CostModel
    k: float

    @property
    def name(self) -> str:
        return f"{self.inner.name} x{self.k:g}"

    @property
    def layout(self):
        return self.inner.layout

    def stage_time(self, shape: BatchShape) -> float:
        return self.k * self.inner.stage_time(shape)

    def decode_line(self, num_decode: int) -> tuple[float, float, float, float]:
        a, b, c, g = abcg(self.inner.decode_line(num_decode))
        return self.k * a, self.k * b, self.k * c, g

    def overlap_parts(self, shape: BatchShape) -> OverlapParts:
        p = self.inner.overlap_parts(shape)
        k = self.k
        return OverlapParts(k * p.lead, k * p.launch, k * p.device, k * p.after, p.graphed)


def step_sensitivity(
    trace: Trace, cfg: SimConfig, cost: CostModel, measured: dict, errors: dict, delta: float = DELTA
) -> dict:
    """errors["sensitivity"]: per headline figure, the signed errors with steps scaled by 1 -+ delta,
    the points of error per 1% of step time, and the error with every step scaled by the run's step
    bias (the error less what the bias explains).
    `measured` is the measured run's metrics; `errors` the report's (`summarize`), whose rows and
    summed step bias this reads."""
    if not 0 < delta < 0.5:
        raise ValueError(f"delta must be in (0, 0.5), got {delta!r}")
    target = errors["target"]
    bias = errors["iterations"]["total_busy_seconds"]["rel_error"]
    scaled = {}
    unbias = None if bias is None else 1 / (1 + bias)  # steps scaled to sum to the measured time
    for k in (1 - delta, 1 + delta, unbias):
        if k is None:
            continue
        pred = Simulation(trace, cfg, cost=ScaledCost(cost, k)).run()
        rows_k = error_rows(measured, compute_metrics(pred), target)
        scaled[k] = {(r["metric"], r["stat"]): r["rel_error"] for r in rows_k}
    rows = []
    for r in errors["metrics"]:
        if not r["headline"] or r["rel_error"] is None:
            continue
        key = (r["metric"], r["stat"])
        lo, hi = scaled[1 - delta][key], scaled[1 + delta][key]
        if lo is None or hi is None:
            continue
        per_unit = (hi - lo) / (2 * delta)  # error per unit of step-time scale
        rows.append({
            "metric": r["metric"],
            "stat": r["stat"],
            "label": r["label"],
            "rel_error": r["rel_error"],
            "at_faster": lo,
            "at_slower": hi,
            "points_per_percent": per_unit,  # points of error per 1% of step time
            "without_step_bias": None if unbias is None else scaled[unbias][key],
        })  # fmt: skip
    unbiased = [abs(x["without_step_bias"]) for x in rows if x["without_step_bias"] is not None]
    return {
        "delta": delta,
        "step_bias": bias,
        "rows": rows,
        "max_abs_without_step_bias": max(unbiased) if unbiased else None,
    }


def format_sensitivity(sens: dict) -> list[str]:
    """Lines of the text report."""
    bias = sens["step_bias"]
    out = [
        f"step-time sensitivity (every predicted step {sens['delta']:.0%} faster / slower; the run's steps "
        f"summed {'n/a' if bias is None else format(bias, '+.1%')} against measured):"
    ]
    for x in sens["rows"]:
        fixed = "n/a" if x["without_step_bias"] is None else format(x["without_step_bias"], "+.1%")
        out.append(
            f"  {x['label']:<32} {x['at_faster']:+7.1%} .. {x['at_slower']:+7.1%}   "
            f"{x['points_per_percent']:+5.1f} points per 1%   without the step bias {fixed}"
        )
    return out


def capacity_record(result: RunResult, source: str) -> dict:
    """What a capacity run (the slice with every request arriving at once) measured."""
    m = compute_metrics(result)
    if not m["request_throughput"]:
        raise RuntimeError(f"capacity run ({source}) finished no request")
    return {
        "source": source,
        "request_throughput": m["request_throughput"],
        "output_throughput": m["output_throughput"],
        "duration_s": m["duration_s"],
    }


def capacity_burst(trace: Trace) -> Trace:
    """The capacity run's workload: the slice with every request arriving at once."""
    return replace_arrivals(trace, np.zeros(len(trace)))


def simulated_capacity(trace: Trace, cfg: SimConfig, cost: CostModel) -> dict:
    """The capacity run simulated: the model's own capacity."""
    return capacity_record(Simulation(capacity_burst(trace), cfg, cost=cost).run(), "sim")


def operating_point(trace: Trace, cfg: SimConfig, cost: CostModel, capacity: dict | None) -> dict | None:
    """errors["capacity"] with the simulator's own capacity beside the engine's: the load each side
    ran at. Near saturation a latency percentile moves several points per 1% of load (host V's Azure
    slice at 90%, H200: TTFT P90 3.7 points per 1% of step time), so a replica that the model makes
    4% faster than the engine runs at 86% of its own capacity while the engine runs at 90%, and
    queues far less. `trace` is the slice as replayed (its arrivals are replaced, so any rate will do).
    """
    if capacity is None or capacity["source"] != "engine":
        return capacity
    sim = simulated_capacity(trace, cfg, cost)["request_throughput"]
    return {
        **capacity,
        "simulated_request_throughput": sim,
        "simulated_rel_error": sim / capacity["request_throughput"] - 1,
        "simulated_load": capacity["rate"] / sim,
    }


def add_what_ifs(errors: dict, trace: Trace, cfg: SimConfig, cost: CostModel, measured: dict) -> None:
    """The report's re-simulations of the slice, beside `summarize`'s errors: the step-time
    sensitivity (errors["sensitivity"]) and the operating point (errors["capacity"], extended)."""
    errors["sensitivity"] = step_sensitivity(trace, cfg, cost, measured, errors)
    errors["capacity"] = operating_point(trace, cfg, cost, errors.get("capacity"))


def format_operating_point(capacity: dict | None) -> list[str]:
    """The text report's line, when the engine measured the capacity."""
    if not capacity or "simulated_request_throughput" not in capacity:
        return []
    return [
        f"operating point: capacity {capacity['request_throughput']:.3f} req/s on the engine, "
        f"{capacity['simulated_request_throughput']:.3f} in simulation "
        f"({capacity['simulated_rel_error']:+.1%}): the slice ran at {capacity['load']:.1%} of the "
        f"engine's capacity and {capacity['simulated_load']:.1%} of the simulator's"
    ]
