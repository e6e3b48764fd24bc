"""Serving metrics of one run, defined as vLLM's serving benchmark defines them.

The definitions follow vLLM's `benchmarks/benchmark_serving.py` (`calculate_metrics`), so that a
simulated run and a `vllm bench serve` run of the same trace can be compared number for number:

* TTFT = first token - arrival; E2E latency = finish - arrival.
* TPOT = (E2E - TTFT) / (output_tokens - 1), only for requests with more than one output token
  (vLLM leaves single-token requests out of the TPOT statistics, but lets them pass a TPOT SLO).
* ITL pools every gap between consecutive tokens of every request. Runs store these in the
  pooled `ItlHistogram`, so the ITL mean is exact (from the exact sum) while its percentiles
  are bin centres (0.23% relative bin width) and its std comes from the bin centres.
* Statistics use numpy's defaults as vLLM does: population std (ddof=0), linearly interpolated
  percentiles; everything is reported in milliseconds.
* Goodput counts finished requests that meet *every* SLO that applies to them (inclusive:
  `value <= slo`), divided by the duration (vLLM `--goodput`, after DistServe, Zhong et al.,
  OSDI 2024).

One deliberate difference: vLLM divides by the benchmark's wall time (first request sent to last
response received, failed ones included). A run here has no separate client clock, so the
duration is `max(finish) - min(arrival)` over the finished requests; for a run that drains its
queue this equals vLLM's figure up to the client's start-up slack.

Only requests with status "finished" enter latencies and throughputs; rejected and unfinished
requests are counted (rejections by reason) so that nothing disappears silently.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sim.results import ITERATION_COLUMNS, REQUEST_COLUMNS, ItlHistogram, RunResult

STATUSES = ("finished", "rejected", "unfinished")
DEFAULT_PERCENTILES: tuple[float, ...] = (50, 90, 95, 99)
# Latency families in output order: (key in the metrics dict, short label, section title).
LATENCY_SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("ttft_ms", "TTFT", "Time to First Token"),
    ("tpot_ms", "TPOT", "Time per Output Token (excl. 1st token)"),
    ("itl_ms", "ITL", "Inter-token Latency"),
    ("e2e_ms", "E2EL", "End-to-end Latency"),
    ("queue_ms", "Queue", "Queueing Delay"),
)
_TIME_TOLERANCE = 1e-9  # seconds; float noise allowed when checking event order


@dataclass(frozen=True)
class SLO:
    """Global service-level objectives in seconds; None leaves that metric unconstrained.

    A global value overrides the per-request SLO columns (`ttft_slo`, `tpot_slo`, `e2e_slo`)
    for its metric; a metric with no global value falls back to those columns (NaN = none).
    """

    ttft: float | None = None
    tpot: float | None = None
    e2e: float | None = None

    def __post_init__(self) -> None:
        for name in ("ttft", "tpot", "e2e"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"SLO.{name} must be a positive number of seconds, got {v!r}")

    def is_empty(self) -> bool:
        return self.ttft is None and self.tpot is None and self.e2e is None


def percentile_key(q: float) -> str:
    """Dictionary key for the q-th percentile: 50 -> 'p50', 99.9 -> 'p99.9'."""
    return f"p{q:g}"


def _num(x: float) -> float | None:
    """A JSON-safe float: NaN and infinities (undefined statistics) become None."""
    x = float(x)
    return x if math.isfinite(x) else None


def latency_stats(values_s: np.ndarray, percentiles: Sequence[float]) -> dict:
    """n, mean, std, median and the requested percentiles of latencies in seconds, in ms."""
    v = np.asarray(values_s, dtype=np.float64) * 1000.0
    out: dict = {"n": int(v.size)}
    if v.size == 0:
        out.update({"mean": None, "std": None, "median": None})
        out.update({percentile_key(q): None for q in percentiles})
        return out
    out["mean"] = _num(np.mean(v))
    out["std"] = _num(np.std(v))
    out["median"] = _num(np.median(v))
    for q in percentiles:
        out[percentile_key(q)] = _num(np.percentile(v, q))
    return out


def itl_stats(h: ItlHistogram, percentiles: Sequence[float]) -> dict:
    """ITL statistics in ms from the pooled histogram: exact mean, binned std and percentiles."""
    out: dict = {"n": int(h.n)}
    if h.n == 0:
        out.update({"mean": None, "std": None, "median": None})
        out.update({percentile_key(q): None for q in percentiles})
        return out
    nz = np.flatnonzero(h.counts)
    mids = ItlHistogram.bin_centres(nz)
    w = h.counts[nz].astype(np.float64)
    m = float(np.sum(w * mids) / h.n)
    var = max(float(np.sum(w * (mids - m) ** 2) / h.n), 0.0)
    out["mean"] = _num(h.mean() * 1000.0)
    out["std"] = _num(math.sqrt(var) * 1000.0)
    out["median"] = _num(h.percentile(50) * 1000.0)
    for q in percentiles:
        out[percentile_key(q)] = _num(h.percentile(q) * 1000.0)
    return out


def check_columns(result: RunResult) -> int:
    """Check that every request and iteration column is present with one length; return n requests."""
    for table, schema, what in (
        (result.requests, REQUEST_COLUMNS, "requests"),
        (result.iterations, ITERATION_COLUMNS, "iterations"),
    ):
        missing = [k for k in schema if k not in table]
        if missing:
            raise ValueError(f"run {result.name!r}: {what} lacks column(s) {', '.join(missing)}")
        lengths = {k: len(table[k]) for k in schema}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"run {result.name!r}: {what} columns differ in length: {lengths}")
    return len(result.requests["id"])


def _status_masks(result: RunResult) -> dict[str, np.ndarray]:
    status = np.asarray(result.requests["status"]).astype(str)
    bad = ~np.isin(status, STATUSES)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        rid = int(result.requests["id"][i])
        raise ValueError(
            f"run {result.name!r}: request id {rid} (row {i}): field 'status' is {status[i]!r}, "
            f"expected one of {', '.join(STATUSES)}"
        )
    return {s: status == s for s in STATUSES}


def _check_finished(result: RunResult, fin: np.ndarray) -> None:
    """Finished requests must have finite, ordered event times and at least one output token."""
    r = result.requests
    ids = np.asarray(r["id"])[fin]

    def fail(mask: np.ndarray, field: str, expected: str) -> None:
        if mask.any():
            j = int(np.flatnonzero(mask)[0])
            raise ValueError(
                f"run {result.name!r}: finished request id {int(ids[j])}: field {field!r} "
                f"is {np.asarray(r[field])[fin][j]!r}, expected {expected}"
            )

    cols = {k: np.asarray(r[k], dtype=np.float64)[fin] for k in ("arrival", "first_scheduled",
                                                                  "first_token", "finish")}
    for k, v in cols.items():
        fail(~np.isfinite(v), k, "a finite time")
    fail(cols["first_scheduled"] < cols["arrival"] - _TIME_TOLERANCE, "first_scheduled", ">= arrival")
    fail(cols["first_token"] < cols["first_scheduled"] - _TIME_TOLERANCE, "first_token",
         ">= first_scheduled")
    fail(cols["finish"] < cols["first_token"] - _TIME_TOLERANCE, "finish", ">= first_token")
    fail(np.asarray(r["output_tokens"])[fin] < 1, "output_tokens", ">= 1 for a finished request")


def _goodput(result: RunResult, fin: np.ndarray, ttft: np.ndarray, tpot_all: np.ndarray,
             e2e: np.ndarray, slo: SLO | None) -> tuple[np.ndarray | None, dict]:
    """Which finished requests meet all SLOs that apply to them (None if no SLO applies at all)."""
    slo = slo or SLO()
    r = result.requests
    good = np.ones(int(fin.sum()), dtype=bool)
    any_slo = False
    used_columns: list[str] = []
    for name, values in (("ttft", ttft), ("tpot", tpot_all), ("e2e", e2e)):
        glob = getattr(slo, name)
        if glob is not None:
            any_slo = True
            good &= values <= glob
            continue
        col = np.asarray(r[f"{name}_slo"], dtype=np.float64)[fin]
        has = ~np.isnan(col)
        if has.any():
            any_slo = True
            used_columns.append(f"{name}_slo")
            good &= ~has | (values <= col)
    detail = {
        "slo_ms": {k: (None if getattr(slo, k) is None else getattr(slo, k) * 1000.0)
                   for k in ("ttft", "tpot", "e2e")},
        "per_request_columns": used_columns,
    }
    return (good if any_slo else None), detail


def _kv_use(result: RunResult) -> tuple[float | None, float | None]:
    """Peak and time-weighted mean fraction of KV blocks in use, over all iteration rows.

    Each row (one iteration, or a run of `count` jumped-over decode iterations spanning
    [start, end]) contributes its end-of-row `kv_blocks_used / kv_blocks_total`, weighted by
    its duration end - start. Inside a jumped run KV only grows, so the end value there is an
    upper bound. Idle gaps between iterations carry no weight: this is the KV use while the
    engine works. Several replicas are pooled (each row weighs its own duration).
    """
    it = result.iterations
    used = np.asarray(it["kv_blocks_used"], dtype=np.float64)
    total = np.asarray(it["kv_blocks_total"], dtype=np.float64)
    if used.size == 0:
        return None, None
    no_total = total <= 0
    if no_total.all():
        return None, None  # the backend keeps no block accounting
    if no_total.any():
        i = int(np.flatnonzero(no_total)[0])
        raise ValueError(
            f"run {result.name!r}: iteration row {i}: field 'kv_blocks_total' is {int(total[i])}, "
            "expected > 0 (other rows of this run have a block pool)"
        )
    frac = used / total
    dur = np.asarray(it["end"], dtype=np.float64) - np.asarray(it["start"], dtype=np.float64)
    if (dur < -_TIME_TOLERANCE).any():
        i = int(np.flatnonzero(dur < -_TIME_TOLERANCE)[0])
        raise ValueError(f"run {result.name!r}: iteration row {i}: field 'end' precedes 'start'")
    dur = np.maximum(dur, 0.0)
    peak = float(frac.max())
    mean = float(np.sum(frac * dur) / dur.sum()) if dur.sum() > 0 else float(frac.mean())
    return peak, mean


def _latencies(result: RunResult, fin: np.ndarray) -> dict[str, np.ndarray]:
    """Per finished request, in seconds: ttft, e2e, queue, tpot_all (0 for single-token requests,
    as goodput counts them) and tpot (vLLM's TPOT statistics skip single-token requests)."""
    r = result.requests
    f64 = {k: np.asarray(r[k], dtype=np.float64)[fin]
           for k in ("arrival", "first_scheduled", "first_token", "finish")}
    out_tok = np.asarray(r["output_tokens"], dtype=np.int64)[fin]
    ttft = f64["first_token"] - f64["arrival"]
    e2e = f64["finish"] - f64["arrival"]
    multi = out_tok > 1
    tpot_all = np.zeros_like(e2e)
    tpot_all[multi] = (e2e[multi] - ttft[multi]) / (out_tok[multi] - 1)
    return {
        "ttft": ttft, "e2e": e2e, "queue": f64["first_scheduled"] - f64["arrival"],
        "tpot_all": tpot_all, "tpot": tpot_all[multi],
    }  # fmt: skip


def request_latencies(result: RunResult) -> dict[str, np.ndarray]:
    """TTFT, TPOT, E2E and queueing time of every finished request, in seconds: the values whose
    percentiles `compute_metrics` reports (keys ttft, tpot, e2e, queue; tpot_all as in `_latencies`)."""
    check_columns(result)
    fin = _status_masks(result)["finished"]
    _check_finished(result, fin)
    return _latencies(result, fin)


def compute_metrics(result: RunResult, slo: SLO | None = None,
                    percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> dict:
    """All serving metrics of one run as a JSON-serialisable dict (undefined values are None)."""
    for q in percentiles:
        if not 0 <= q <= 100:
            raise ValueError(f"percentiles must lie in [0, 100], got {q!r}")
    n = check_columns(result)
    masks = _status_masks(result)
    fin = masks["finished"]
    _check_finished(result, fin)
    r = result.requests
    f64 = {k: np.asarray(r[k], dtype=np.float64)[fin] for k in ("arrival", "finish")}
    out_tok = np.asarray(r["output_tokens"], dtype=np.int64)[fin]
    in_tok = np.asarray(r["prompt_tokens"], dtype=np.int64)[fin]
    lat = _latencies(result, fin)
    ttft, e2e, queue, tpot_all, tpot = (lat[k] for k in ("ttft", "e2e", "queue", "tpot_all", "tpot"))

    n_fin = int(fin.sum())
    duration = float(f64["finish"].max() - f64["arrival"].min()) if n_fin else float("nan")

    def rate(x: float) -> float | None:
        return _num(x / duration) if duration > 0 else None

    total_in, total_out = int(in_tok.sum()), int(out_tok.sum())

    good, good_detail = _goodput(result, fin, ttft, tpot_all, e2e, slo)
    if good is None:
        goodput = None
        request_goodput = None
    else:
        n_good = int(good.sum())
        request_goodput = rate(n_good)
        goodput = {
            **good_detail,
            "good_requests": n_good,
            "request_goodput": request_goodput,
            # over all submitted requests: a rejected or unfinished request missed its SLO too
            "slo_attainment": _num(n_good / n) if n else None,
        }

    reasons = Counter(np.asarray(r["reject_reason"]).astype(str)[masks["rejected"]].tolist())
    admitted = ~masks["rejected"]
    preempt = np.asarray(r["preemptions"], dtype=np.int64)
    cached = int(np.asarray(r["cached_tokens"], dtype=np.int64)[fin].sum())
    peak, mean = _kv_use(result)
    kv_meta = result.meta.get("kv") if isinstance(result.meta.get("kv"), dict) else {}
    evictions = kv_meta.get("evictions")

    return {
        "percentiles": [float(q) for q in percentiles],
        "num_requests": n,
        "finished": n_fin,
        "rejected": int(masks["rejected"].sum()),
        "rejected_reasons": dict(sorted(reasons.items())),
        "unfinished": int(masks["unfinished"].sum()),
        "duration_s": _num(duration),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": rate(n_fin),
        "request_goodput": request_goodput,
        "output_throughput": rate(total_out),
        "total_token_throughput": rate(total_in + total_out),
        "goodput": goodput,
        "ttft_ms": latency_stats(ttft, percentiles),
        "tpot_ms": latency_stats(tpot, percentiles),
        "itl_ms": itl_stats(result.itl, percentiles),
        "e2e_ms": latency_stats(e2e, percentiles),
        "queue_ms": latency_stats(queue, percentiles),
        "kv": {
            # cached tokens are summed over every admission of a request (a preempted request
            # re-admitted may hit the cache again), so this can exceed a single-pass hit rate.
            "prefix_hit_rate": _num(cached / total_in) if total_in else None,
            "cached_tokens": cached,
            "preemptions_total": int(preempt.sum()),
            "preemptions_per_request": _num(preempt[admitted].mean()) if admitted.any() else None,
            "preempted_requests": int((preempt > 0).sum()),
            "evictions": None if evictions is None else int(evictions),
            "peak_use": _num(peak) if peak is not None else None,
            "mean_use": _num(mean) if mean is not None else None,
        },
    }


def _line(label: str, value: object, fmt: str = ".2f") -> str:
    if value is None:
        text = "n/a"
    elif isinstance(value, float):
        text = format(value, fmt)
    else:
        text = str(value)
    return f"{label:<40} {text:<10}"


def _rule(title: str, fill: str = "-") -> str:
    return f"{title:{fill}^50}"


def format_metrics(metrics: dict) -> str:
    """A text table in the layout of vLLM's serving-benchmark printout (plus our extra rows)."""
    m = metrics
    lines = [_rule(" Serving Benchmark Result ", "=")]
    lines.append(_line("Successful requests:", m["finished"]))
    lines.append(_line("Rejected requests:", m["rejected"]))
    for reason, count in m.get("rejected_reasons", {}).items():
        lines.append(_line(f"  rejected ({reason or 'no reason'}):", count))
    lines.append(_line("Unfinished requests:", m["unfinished"]))
    lines.append(_line("Benchmark duration (s):", m["duration_s"]))
    lines.append(_line("Total input tokens:", m["total_input_tokens"]))
    lines.append(_line("Total generated tokens:", m["total_output_tokens"]))
    lines.append(_line("Request throughput (req/s):", m["request_throughput"]))
    g = m.get("goodput")
    if g is not None:
        lines.append(_line("Request goodput (req/s):", m["request_goodput"]))
        lines.append(_line("SLO attainment (of all requests):", g["slo_attainment"], ".2%"))
    lines.append(_line("Output token throughput (tok/s):", m["output_throughput"]))
    lines.append(_line("Total Token throughput (tok/s):", m["total_token_throughput"]))
    for key, short, title in LATENCY_SECTIONS:
        s = m[key]
        lines.append(_rule(title))
        lines.append(_line(f"Mean {short} (ms):", s["mean"]))
        lines.append(_line(f"Std {short} (ms):", s["std"]))
        lines.append(_line(f"Median {short} (ms):", s["median"]))
        for k, v in s.items():
            if k.startswith("p") and k[1:2].isdigit() and k != "p50":  # p50 is the median
                lines.append(_line(f"P{k[1:]} {short} (ms):", v))
    kv = m["kv"]
    lines.append(_rule("KV Cache"))
    lines.append(_line("Prefix cache hit rate:", kv["prefix_hit_rate"], ".2%"))
    lines.append(_line("Preemptions:", kv["preemptions_total"]))
    lines.append(_line("Preemptions per request:", kv["preemptions_per_request"], ".3f"))
    lines.append(_line("Evictions:", kv["evictions"]))
    lines.append(_line("Peak KV use:", kv["peak_use"], ".2%"))
    lines.append(_line("Mean KV use (time-weighted):", kv["mean_use"], ".2%"))
    lines.append("=" * 50)
    return "\n".join(lines)
