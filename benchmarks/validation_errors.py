"""Error rows and summaries of a validation: how far the simulator's prediction is from the engine's run.

Signed relative errors, (predicted - measured) / measured, of every headline and secondary metric
(the rows of the report's table), per request (TTFT, E2E) and per measured iteration (the cost
model's prediction for that iteration's exact shape), and the terminal form of the table. Shared by
a fresh validation (`benchmarks.validate`), a recomputed one (`benchmarks.revalidate`) and the
report (`benchmarks.validation_report`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from backends.profile import shape_kind
from benchmarks.metrics import compute_metrics, request_latencies

if TYPE_CHECKING:
    from backends.calibrated import CalibratedCostModel
    from backends.cost_model import BatchShape
    from sim.results import RunResult

DEFAULT_TARGET = 0.05  # |relative error| the issue asks for on the headline metrics
LATENCY_KEYS = (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("itl_ms", "ITL"), ("e2e_ms", "E2E"))
LATENCY_STATS = ("mean", "p50", "p90", "p99")
HEADLINE = {
    ("ttft_ms", "p50"),
    ("ttft_ms", "p90"),
    ("tpot_ms", "p50"),
    ("tpot_ms", "p90"),
    ("e2e_ms", "p50"),
    ("e2e_ms", "p90"),
    ("output_throughput", ""),
    ("request_throughput", ""),
}
SCALAR_ROWS: tuple[tuple[str, str, str], ...] = (
    # (label, path in the metrics dict, format)
    ("request throughput (req/s)", "request_throughput", ".3f"),
    ("output throughput (tok/s)", "output_throughput", ".1f"),
    ("total token throughput (tok/s)", "total_token_throughput", ".1f"),
    ("duration (s)", "duration_s", ".2f"),
    ("preemptions (total)", "kv.preemptions_total", "d"),
    ("prefix cache hit rate", "kv.prefix_hit_rate", ".2%"),
    ("KV use mean (time-weighted)", "kv.mean_use", ".1%"),
    ("KV use peak", "kv.peak_use", ".1%"),
)


def _get(metrics: dict, path: str) -> object:
    v = metrics
    for k in path.split("."):
        if not isinstance(v, dict) or k not in v:
            return None
        v = v[k]
    return v


def rel_error(predicted: float | None, measured: float | None) -> float | None:
    """(predicted - measured) / measured; None when undefined (a side missing, or measured 0)."""
    if predicted is None or measured is None or measured == 0:
        return None
    return (predicted - measured) / measured


def error_rows(measured: dict, predicted: dict, target: float = DEFAULT_TARGET) -> list[dict]:
    """One row per compared number: metric, stat, label, measured, predicted, rel_error, abs_error,
    headline (one of the issue's targets), within_target (headline rows only)."""
    rows = []

    def add(metric: str, stat: str, label: str, fmt: str) -> None:
        path = f"{metric}.{stat}" if stat else metric
        m, p = _get(measured, path), _get(predicted, path)
        e = rel_error(p, m)
        head = (metric, stat) in HEADLINE
        rows.append(
            {
                "metric": metric,
                "stat": stat,
                "label": label,
                "format": fmt,
                "measured": m,
                "predicted": p,
                "rel_error": e,
                "abs_error": (p - m) if (p is not None and m is not None) else None,
                "headline": head,
                "within_target": (abs(e) <= target) if (head and e is not None) else None,
            }
        )

    for key, short in LATENCY_KEYS:
        for stat in LATENCY_STATS:
            add(key, stat, f"{short} {stat.upper() if stat != 'mean' else 'mean'} (ms)", ".2f")
    for label, path, fmt in SCALAR_ROWS:
        add(path, "", label, fmt)
    return rows


def repeat_summary(runs: list[dict], predicted: dict, target: float = DEFAULT_TARGET) -> dict:
    """The headline figures over repeated measured runs of the same slice (`runs`: their metrics
    dicts; the first is the run the error table compares with), and the prediction against them.

    At high load a run's tail latencies move by several percent between repeats (queueing amplifies
    small differences in step time), so one measured run is a noisy yardstick for a 5% target; this
    says how noisy, and whether the prediction falls inside what the engine itself did. Per headline
    row: every run's value, their spread ((max - min) / median), the prediction's error against the
    median run, and whether the prediction lies within [min, max].
    """
    rows = []
    for r in error_rows(runs[0], predicted, target):
        if not r["headline"]:
            continue
        path = f"{r['metric']}.{r['stat']}" if r["stat"] else r["metric"]
        vals = [_get(m, path) for m in runs]
        missing = [i + 1 for i, v in enumerate(vals) if v is None]
        if missing and len(missing) < len(vals):  # one run lacking a figure would read as "no spread"
            raise ValueError(f"repeat_summary: measured run(s) {missing} lack {path}, which others have")
        p = r["predicted"]
        xs = [float(v) for v in vals if v is not None]
        med = float(np.median(xs)) if xs else None
        rows.append(
            {
                "metric": r["metric"],
                "stat": r["stat"],
                "label": r["label"],
                "measured": vals,
                "median": med,
                "spread": (max(xs) - min(xs)) / med if xs and med else None,
                "predicted": p,
                "rel_error_vs_median": rel_error(p, med),
                "predicted_within_range": (min(xs) <= p <= max(xs)) if xs and p is not None else None,
            }
        )
    errs = [abs(x["rel_error_vs_median"]) for x in rows if x["rel_error_vs_median"] is not None]
    return {
        "runs": len(runs),
        "rows": rows,
        "max_abs_rel_error_vs_median": max(errs) if errs else None,
        "all_within_target_vs_median": bool(errs) and max(errs) <= target,
    }


SAMPLED = (("ttft_ms", "ttft", "TTFT"), ("tpot_ms", "tpot", "TPOT"), ("e2e_ms", "e2e", "E2E"))


def sampling_intervals(
    measured: RunResult,
    predicted: dict,
    level: float = 0.95,
    draws: int = 2000,
    seed: int = 0,
    target: float = DEFAULT_TARGET,
) -> dict:
    """How far a headline latency percentile moves with which requests a slice happens to hold: the
    `level` interval of the measured P50 and P90 of TTFT, TPOT and E2E over `draws` bootstrap
    resamples of the finished requests (Efron 1979; percentile method), and where the prediction
    falls against it.

    A slice of 80 requests puts a P50 on the 40th request, so the target's 5% can be finer than the
    slice resolves; this says by how much. Requests in one run are not independent (they queue
    behind each other), so the interval is a lower bound on the run's noise; repeated runs
    (`repeat_summary`) show the rest. Seeded: the same run gives the same interval. Per row: the
    measured percentile, the interval (ms, and relative to the measured value), the prediction's
    error, whether it lies inside, and `beyond`, how far outside (relative to the measured value;
    0 inside), the part of the error that request sampling does not explain; and `requests_for_target`,
    where the interval is wider than +-target, roughly how many requests would narrow it to that
    (a bootstrap interval shrinks as 1 / sqrt(n)).
    """
    if not 0 < level < 1 or draws < 1:
        raise ValueError(f"sampling_intervals needs 0 < level < 1 and draws >= 1, got {level} and {draws}")
    lat = request_latencies(measured)
    rng = np.random.default_rng(seed)
    tail = 100.0 * (1.0 - level) / 2.0
    rows = []
    for metric, key, short in SAMPLED:
        v = np.asarray(lat[key], dtype=np.float64) * 1e3
        for stat, q in (("p50", 50.0), ("p90", 90.0)):
            row = {"metric": metric, "stat": stat, "label": f"{short} {stat.upper()} (ms)", "n": int(v.size)}
            p = _get(predicted, f"{metric}.{stat}")
            if v.size < 2:
                rows.append({**row, "measured": None, "low": None, "high": None, "predicted": p,
                             "rel_error": None, "inside": None, "beyond": None,
                             "requests_for_target": None})  # fmt: skip
                continue
            point = float(np.percentile(v, q))
            boot = np.empty(draws)
            step = max(1, 4_000_000 // v.size)  # resample in chunks: draws x n values at once is large
            for a in range(0, draws, step):
                b = min(draws, a + step)
                boot[a:b] = np.percentile(v[rng.integers(0, v.size, size=(b - a, v.size))], q, axis=1)
            lo, hi = (float(x) for x in np.percentile(boot, [tail, 100.0 - tail]))
            e = rel_error(p, point)
            inside = None if p is None else lo <= p <= hi
            beyond = None if p is None or not point else max(lo - p, p - hi, 0.0) / point
            half = max(point - lo, hi - point) / point if point else None
            need = None if half is None or half <= target else int(np.ceil(v.size * (half / target) ** 2))
            rows.append({**row, "measured": point, "low": lo, "high": hi,
                         "rel_low": rel_error(lo, point), "rel_high": rel_error(hi, point),
                         "predicted": p, "rel_error": e, "inside": inside, "beyond": beyond,
                         "requests_for_target": need})  # fmt: skip
    beyond = [r["beyond"] for r in rows if r["beyond"] is not None]
    return {
        "level": level,
        "draws": draws,
        "seed": seed,
        "target": target,
        "rows": rows,
        "max_beyond": max(beyond) if beyond else None,
    }


def format_repeats(rp: dict) -> list[str]:
    """`repeat_summary`'s rows as text: each headline figure's spread over the measured runs and where
    the prediction falls against them."""
    lines = [f"measured {rp['runs']} times (same slice, same engine): headline spread and prediction"]
    for x in rp["rows"]:
        if x["spread"] is None:
            continue
        inside = "inside" if x["predicted_within_range"] else "outside"
        lines.append(
            f"  {x['label']:<32} spread {x['spread']:6.1%}   vs median {x['rel_error_vs_median']:+.1%}   "
            f"prediction {inside} the range"
        )
    if rp["max_abs_rel_error_vs_median"] is not None:
        lines.append(
            f"headline |error| against the median run max {rp['max_abs_rel_error_vs_median']:.1%}: "
            f"{'all within' if rp['all_within_target_vs_median'] else 'NOT all within'}"
        )
    return lines


def repeated_runs(repeats: dict) -> list[dict]:
    """The measured runs' headline figures back as metrics dicts (for `repeat_summary` against a new
    prediction: a recomputed report keeps what the engine measured)."""
    runs: list[dict] = [{} for _ in range(repeats["runs"])]
    for x in repeats["rows"]:
        for m, v in zip(runs, x["measured"]):
            if x["stat"]:
                m.setdefault(x["metric"], {})[x["stat"]] = v
            else:
                m[x["metric"]] = v
    return runs


def _abs_rel_summary(pred: np.ndarray, meas: np.ndarray) -> dict:
    ok = np.isfinite(pred) & np.isfinite(meas) & (meas > 0)
    if not ok.any():
        return {
            "n": 0,
            "median_abs_rel_error": None,
            "p90_abs_rel_error": None,
            "max_abs_rel_error": None,
            "mean_signed_rel_error": None,
        }
    e = (pred[ok] - meas[ok]) / meas[ok]
    a = np.abs(e)
    return {
        "n": int(ok.sum()),
        "median_abs_rel_error": float(np.median(a)),
        "p90_abs_rel_error": float(np.percentile(a, 90)),
        "max_abs_rel_error": float(a.max()),
        "mean_signed_rel_error": float(e.mean()),
    }


def label_runs(measured: RunResult, predicted: RunResult, cost: CalibratedCostModel) -> None:
    """Name the engine's and the simulator's run for the reports, record in the prediction which cost
    model made it, and compute both runs' metrics (what `error_rows` compares), in place."""
    measured.meta["name"] = "measured (engine)"
    predicted.meta["name"] = "predicted (simulator)"
    predicted.meta["cost_model_profile"] = cost.describe()
    measured.metrics = compute_metrics(measured)
    predicted.metrics = compute_metrics(predicted)


def per_request(measured: RunResult, predicted: RunResult) -> dict[str, np.ndarray]:
    """TTFT and E2E (s) of requests finished in both runs, aligned by request id."""
    rm, rp = measured.requests, predicted.requests
    if not np.array_equal(rm["id"], rp["id"]):
        raise ValueError("measured and predicted runs hold different request ids")
    both = (np.asarray(rm["status"]).astype(str) == "finished") & (
        np.asarray(rp["status"]).astype(str) == "finished"
    )
    out = {"id": np.asarray(rm["id"])[both]}
    for side, r in (("measured", rm), ("predicted", rp)):
        arr = np.asarray(r["arrival"], dtype=np.float64)[both]
        out[f"{side}_ttft"] = np.asarray(r["first_token"], dtype=np.float64)[both] - arr
        out[f"{side}_e2e"] = np.asarray(r["finish"], dtype=np.float64)[both] - arr
    return out


def iteration_table(
    measured: RunResult,
    shapes: list[BatchShape],
    execute_s: np.ndarray,
    cost: CalibratedCostModel,
    async_scheduling: str = "off",
    launch_s: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per measured iteration: start (s), measured seconds (end - start: the scheduler's decision plus
    the runner's step, as the engine stamps it), the step alone (execute_s), and the cost model's
    prediction of both for that iteration's shape (`shapes`, from the replay's step log or
    `replay_shapes`). With `launch_s` (the step log's host seconds of launching each step; runs
    measured before it was recorded have none), that and the profile's (`host_launch`, NaN where it
    has none) too.

    With async scheduling an iteration is scheduled while the previous one runs, so its seconds are
    its period, the time from the previous iteration's ids (or its own launch) to its own (the step
    log's execute_s, both columns), and the model's is the slower of its device work and the host's
    loop around it (`CostModel.overlap_parts`); under "graphs" an eager step, which waits for the
    step in flight, adds its lead and bookkeeping to that."""
    it = measured.iterations
    n = len(it["start"])
    if not n == len(shapes) == len(execute_s):
        raise RuntimeError(
            f"engine logged {n} iterations but {len(shapes)} shapes and {len(execute_s)} step times "
            "were given"
        )
    if async_scheduling != "off":
        period = []
        for s in shapes:
            lead, launch, device, after, graphed = cost.overlap_parts(s)
            if graphed or async_scheduling == "all":
                period.append(max(device, lead + launch + after))
            else:
                period.append(lead + after + max(device, launch))
        measured_s = np.asarray(execute_s, dtype=np.float64)
        predicted_s = predicted_execute_s = predicted_stage_s = np.array(period)
    else:
        parts = [cost.parts(s) for s in shapes]
        measured_s = np.asarray(it["end"], dtype=np.float64) - np.asarray(it["start"], dtype=np.float64)
        predicted_s = np.array([p["execute"] + p["schedule"] for p in parts])
        predicted_execute_s = np.array([p["execute"] for p in parts])
        predicted_stage_s = np.array([cost.stage_time(s) for s in shapes])
    table = {
        "start": np.asarray(it["start"], dtype=np.float64),
        "measured_s": measured_s,
        "execute_s": np.asarray(execute_s, dtype=np.float64),
        "predicted_s": predicted_s,
        "predicted_execute_s": predicted_execute_s,
        "predicted_stage_s": predicted_stage_s,
        "kind": np.array([shape_kind(s) for s in shapes], dtype=object),
        "path": np.array([cost.path(s) for s in shapes], dtype=object),
        "num_seqs": np.array([s.num_seqs for s in shapes], dtype=np.int64),
        "prefill_tokens": np.array([s.num_tokens - s.num_decode for s in shapes], dtype=np.int64),
        "prefill_cached_tokens": np.array([sum(c for _, c in s.prefill) for s in shapes], dtype=np.int64),
        "num_decode": np.array([s.num_decode for s in shapes], dtype=np.int64),
        "decode_context": np.array([s.decode_context for s in shapes], dtype=np.int64),
        "decode_max_context": np.array(
            [s.decode_max_context or -(-s.decode_context // max(1, s.num_decode)) for s in shapes],
            dtype=np.int64,
        ),
    }
    if launch_s is not None:
        if len(launch_s) != n:
            raise RuntimeError(f"engine logged {n} iterations but {len(launch_s)} launch times were given")
        model = [cost.host_launch(s) for s in shapes]
        table["launch_s"] = np.asarray(launch_s, dtype=np.float64)
        table["predicted_launch_s"] = np.array([np.nan if x is None else x for x in model], dtype=np.float64)
    return table


def iteration_errors(table: dict[str, np.ndarray]) -> dict:
    out = {
        "all": _abs_rel_summary(table["predicted_s"], table["measured_s"]),
        "execute_only": _abs_rel_summary(table["predicted_execute_s"], table["execute_s"]),
    }
    for kind in ("decode", "prefill", "mixed"):
        sel = table["kind"] == kind
        out[kind] = _abs_rel_summary(table["predicted_s"][sel], table["measured_s"][sel])
    m, p = table["measured_s"].sum(), table["predicted_s"].sum()
    out["total_busy_seconds"] = {"measured": float(m), "predicted": float(p), "rel_error": rel_error(p, m)}
    out["by_path"] = path_errors(table)
    if "launch_s" in table:
        out["host_launch"] = launch_ratios(table)
    return out


def launch_ratios(table: dict[str, np.ndarray]) -> list[dict]:
    """The run's host launch seconds against the profile's, per launch path: median ratio over the
    steps both have. Across H200 hosts the grids' device times agree to within 0.7% while their
    launches differ by 24-36% (`python -m benchmarks.profile_drift`), so a run whose host is slower
    or faster than its profile's shows here first."""
    rows = []
    m, q, paths = table["launch_s"], table["predicted_launch_s"], table["path"]
    for p in sorted(set(paths.tolist())):
        sel = (paths == p) & (m > 0) & np.isfinite(q) & (q > 0)
        if sel.any():
            rows.append({
                "path": p,
                "n": int(sel.sum()),
                "measured_median_s": float(np.median(m[sel])),
                "predicted_median_s": float(np.median(q[sel])),
                "median_ratio": float(np.median(m[sel] / q[sel])),
            })  # fmt: skip
    rows.sort(key=lambda r: -r["n"])
    return rows


def path_errors(table: dict[str, np.ndarray]) -> list[dict]:
    """The step's time (`execute_s`) summed per launch path (`CalibratedCostModel.path`), measured
    against predicted, largest absolute difference first: the seconds a run's error is made of."""
    rows = []
    paths = table["path"]
    for p in sorted(set(paths.tolist())):
        sel = paths == p
        m, q = table["execute_s"][sel], table["predicted_execute_s"][sel]
        ok = m > 0
        rows.append({
            "path": p,
            "n": int(sel.sum()),
            "measured_s": float(m.sum()),
            "predicted_s": float(q.sum()),
            "rel_error": rel_error(float(q.sum()), float(m.sum())),
            "median_rel_error": float(np.median((q[ok] - m[ok]) / m[ok])) if ok.any() else None,
        })  # fmt: skip
    rows.sort(key=lambda r: -abs(r["predicted_s"] - r["measured_s"]))
    return rows


def summarize(
    measured: RunResult,
    predicted: RunResult,
    table: dict[str, np.ndarray],
    cost: CalibratedCostModel,
    mirror: dict,
    target: float,
    notes: list[str],
    capacity: dict | None,
) -> dict:
    rows = error_rows(measured.metrics, predicted.metrics, target)
    head = [r for r in rows if r["headline"]]
    errs = [abs(r["rel_error"]) for r in head if r["rel_error"] is not None]
    pr = per_request(measured, predicted)
    fit = cost.fit_report()
    return {
        "target": target,
        "headline": {
            "max_abs_rel_error": max(errs) if errs else None,
            "all_within_target": bool(errs)
            and all(r["within_target"] for r in head if r["rel_error"] is not None),
            "rows": [f"{r['metric']}.{r['stat']}" if r["stat"] else r["metric"] for r in head],
        },
        "metrics": rows,
        "per_request": {
            "ttft": _abs_rel_summary(pr["predicted_ttft"], pr["measured_ttft"]),
            "e2e": _abs_rel_summary(pr["predicted_e2e"], pr["measured_e2e"]),
        },
        "iterations": iteration_errors(table),
        "sampling": sampling_intervals(measured, predicted.metrics, target=target),
        "runs": {
            "measured": {
                "iterations": measured.meta.get("iterations"),
                "finished": measured.metrics.get("finished"),
                "device": measured.meta.get("device"),
                "wall_seconds": measured.meta.get("wall_seconds"),
            },
            "predicted": {
                "iterations": predicted.meta.get("iterations"),
                "finished": predicted.metrics.get("finished"),
                "wall_seconds": predicted.meta.get("wall_seconds"),
            },
        },
        "mirror": mirror,
        "cost_model": cost.describe(),
        "profile_fit": {
            "all": fit["all"],
            "groups": fit["groups"],
            "overhead": fit["overhead"],
            "notes": fit["notes"],
        },
        "capacity": capacity,
        "notes": list(notes),
    }


def previous_errors(errors: dict) -> dict[tuple[str, str], float | None] | None:
    """(metric, stat) -> the signed error a recomputed report replaced, or None for a fresh report."""
    prev = errors.get("previous")
    if not prev:
        return None
    return {(r["metric"], r["stat"]): r.get("rel_error") for r in prev.get("metrics", [])}


def format_errors(errors: dict) -> str:
    """The error table as text, for the terminal (with the replaced errors of a recomputed report)."""
    before = previous_errors(errors)
    head = f"{'metric':<34}{'measured':>14}{'predicted':>14}{'error':>10}"
    lines = [head + ("   before" if before else "")]
    for r in errors["metrics"]:

        def f(v, fmt=r["format"]):
            if v is None:
                return "n/a"
            return format(int(v), "d") if fmt == "d" else format(v, fmt)

        e = "n/a" if r["rel_error"] is None else f"{r['rel_error']:+.1%}"
        mark = "" if r["within_target"] is None else (" ok" if r["within_target"] else " !!")
        old = ""
        if before is not None:
            b = before.get((r["metric"], r["stat"]))
            old = f"{'n/a' if b is None else format(b, '+.1%'):>9}"
        lines.append(f"{r['label']:<34}{f(r['measured']):>14}{f(r['predicted']):>14}{e:>10}{mark:<3}{old}")
    h = errors["headline"]
    if h["max_abs_rel_error"] is not None:
        lines.append(
            f"headline |error| max {h['max_abs_rel_error']:.1%} (target {errors['target']:.0%}): "
            f"{'all within' if h['all_within_target'] else 'NOT all within'}"
        )
    if errors.get("repeats"):
        lines += format_repeats(errors["repeats"])
    sp = errors.get("sampling")
    if sp and sp["max_beyond"] is not None:
        n = max(r["n"] for r in sp["rows"])
        lines.append(
            f"request sampling ({sp['level']:.0%} bootstrap interval of each measured percentile over its "
            f"{n} finished requests):"
        )
        for r in sp["rows"]:
            if r["measured"] is None or r["rel_error"] is None:
                continue
            where = "inside" if r["inside"] else f"outside by {r['beyond']:.1%}"
            need = r.get("requests_for_target")
            more = f"; ±{sp['target']:.0%} needs ~{need} requests" if need else ""
            lines.append(
                f"  {r['label']:<32} [{r['rel_low']:+.1%}, {r['rel_high']:+.1%}]   "
                f"prediction {r['rel_error']:+.1%}, {where}{more}"
            )
        lines.append(f"headline latency error beyond request sampling: max {sp['max_beyond']:.1%}")
    if errors.get("sensitivity"):
        # it imports this module
        from benchmarks.validation_sensitivity import format_operating_point, format_sensitivity

        lines += format_sensitivity(errors["sensitivity"])
        lines += format_operating_point(errors.get("capacity"))
    it = errors["iterations"]["all"]
    if it["n"]:
        lines.append(
            f"iteration time |error|: median {it['median_abs_rel_error']:.1%}, "
            f"p90 {it['p90_abs_rel_error']:.1%} over {it['n']} iterations"
        )
    if errors.get("gpu"):
        from engine.telemetry import describe

        lines.append(describe(errors["gpu"]["summary"], "the measured run"))
        if errors["gpu"].get("error"):
            lines.append(errors["gpu"]["error"])
    launches = errors["iterations"].get("host_launch")
    if launches:
        lines.append(
            "host launch, the run's against the profile's (median ratio by launch path): "
            + "; ".join(
                f"{r['path']} {r['median_ratio']:.2f}x ({1e6 * r['measured_median_s']:.0f} against "
                f"{1e6 * r['predicted_median_s']:.0f} us, {r['n']} steps)"
                for r in launches[:4]
            )
        )
    worst = [r for r in errors["iterations"].get("by_path", [])[:3] if r["rel_error"] is not None]
    if worst:
        lines.append(
            "step time by launch path, largest differences: "
            + "; ".join(
                f"{r['path']} {1e3 * (r['predicted_s'] - r['measured_s']):+.0f} ms ({r['rel_error']:+.1%}, "
                f"{r['n']} steps)"
                for r in worst
            )
        )
    return "\n".join(lines)
