"""Validate the simulator against the engine: one trace slice, served for real and simulated.

The engine (`LLMEngine.replay`) serves the trace on the device against the wall clock; the
simulator replays the same requests with the same scheduler policy, a replica configured to
mirror the engine exactly (the engine's own KV block count -- read from it, never recomputed --,
block size, token budget, sequence cap, chunked-prefill and prefix-caching switches,
max_model_len, arrival times) and the calibrated cost model fitted to a profile of that very
device. A published simulator moved TTFT by 20% through a 31% block-count mismatch; mirroring
the pool one to one rules that source of error out, so what is left is the cost model's.

The result is a report directory:
  index.html            self-contained page: the mirror check, predicted-vs-measured table of
                        mean/P50/P90/P99 TTFT, TPOT, ITL, E2E, throughput, preemptions and
                        prefix-hit rate with signed relative errors, per-request TTFT and E2E
                        scatter, iteration time predicted vs measured over the run, the profile fit
  side_by_side.html     `benchmarks.report.write_report` of both runs (CDFs, throughput, KV, batch)
  png/                  every figure of both pages as PNG
  errors.json           all the numbers of the table, per-request and per-iteration error summaries
  iterations.csv        per measured iteration: its shape, measured and predicted seconds
  measured/, predicted/ both runs in the `RunResult` format
  profile.json          the profile the cost model was fitted to

Predicted iteration times need each measured iteration's full shape (prefill chunks with their
cached prefixes, summed and longest decode context), which the engine's iteration rows do not hold;
the validation records it by wrapping the engine runner's `execute` for the duration of the replay.

`recompute` (`python -m benchmarks.validate --recompute DIR [--profile P]`) re-predicts an existing
report directory without a GPU: it rebuilds the very trace slice the engine served (from the slicing
recorded in errors.json, or inferred from the measured run and checked against it request by
request), simulates it with the recorded mirrored configuration and the current cost model, rebuilds
every measured iteration's shape by replaying the measured iteration boundaries through the same
`ReplicaCore` the engine ran (checked against the engine's iteration rows), and rewrites the report
with the previous headline errors kept next to the new ones. That is how a cost-model change is
judged against runs already measured; the measured runs are the test set, never fitted to.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import html
import json
import math
import operator
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import plotly.offline

from backends.calibrated import CalibratedCostModel
from backends.cost_model import BatchShape
from backends.profile import Profile, shape_kind
from benchmarks.metrics import compute_metrics
from benchmarks.report import PNG_HELP, png_export_available, write_report
from policies.scheduling.batch import ScheduledBatch
from sim.config import SimConfig
from sim.results import RunResult
from sim.simulator import Simulation
from traces.schema import Trace

if TYPE_CHECKING:  # the engine needs torch; importing this module does not
    from engine.config import EngineConfig
    from engine.llm_engine import LLMEngine
    from engine.model_runner import ModelRunner
    from engine.profiler import ProfileGrid

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
# SimConfig fields the validation may change: everything else mirrors the engine.
OVERRIDABLE = frozenset({"jump", "record_iterations", "horizon", "seed"})
POLICY_KEYS = frozenset(
    {
        "scheduler",
        "enable_chunked_prefill",
        "enable_prefix_caching",
        "max_num_batched_tokens",
        "max_num_seqs",
        "block_size",
        "num_kv_blocks",
        "max_model_len",
        "gpu_memory_utilization",
    }
)
_SHORT_DTYPE = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
_SHAPE_FIELDS = (
    "num_layers",
    "hidden_size",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "intermediate_size",
    "vocab_size",
)


@dataclass
class ValidationResult:
    measured: RunResult
    predicted: RunResult
    sim_config: SimConfig
    cost: CalibratedCostModel
    errors: dict  # what errors.json holds
    iterations: dict[str, np.ndarray]  # per measured iteration (see `iteration_table`)
    trace: Trace  # the slice both sides served (rescaled when a load was asked for)
    engine: LLMEngine | None  # reusable for further runs (`validate(..., engine=...)`); None when recomputed
    out_dir: Path | None = None
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------
# Mirroring the engine


def mirror_sim_config(engine: LLMEngine, overrides: dict | None = None) -> SimConfig:
    """The SimConfig of a single replica configured exactly as `engine` (an `LLMEngine`) is.

    The KV block count is the runner's (`runner.num_blocks`, what the engine's block manager got),
    not a recomputation from memory sizes. Only the run-control fields in `OVERRIDABLE` may be
    overridden; anything else would break the mirror and raises.
    """
    runner = engine.runner
    if engine.kv.num_blocks != runner.num_blocks or engine.kv.block_size != runner.block_size:
        raise ValueError(
            f"engine block manager ({engine.kv.num_blocks} x {engine.kv.block_size}) differs from "
            f"its runner's pool ({runner.num_blocks} x {runner.block_size})"
        )
    sc = engine.sched_config
    cfg = SimConfig(
        model=engine.spec.name or engine.spec.family,
        accelerator=runner.device.name,
        cost_model="calibrated",
        dtype=_SHORT_DTYPE.get(str(runner.dtype).removeprefix("torch."), str(runner.dtype)),
        tp=1,
        pp=1,
        num_replicas=1,
        scheduler=engine.scheduler_name,
        max_num_batched_tokens=sc.max_num_batched_tokens,
        max_num_seqs=sc.max_num_seqs,
        enable_chunked_prefill=sc.enable_chunked_prefill,
        block_size=engine.kv.block_size,
        num_kv_blocks=runner.num_blocks,
        enable_prefix_caching=engine.kv.enable_prefix_caching,
        max_model_len=engine.max_model_len,
    )
    for k, v in (overrides or {}).items():
        if k not in OVERRIDABLE:
            raise ValueError(
                f"sim override {k!r}: mirrored from the engine (set it in the engine config); "
                f"only {', '.join(sorted(OVERRIDABLE))} may be overridden"
            )
        setattr(cfg, k, v)
    return cfg


def mirror_table(engine: LLMEngine, cfg: SimConfig) -> dict[str, list]:
    """field -> [engine value, simulator value], for the report (they must agree)."""
    sc = engine.sched_config
    return {
        "scheduler": [engine.scheduler_name, cfg.scheduler],
        "num_kv_blocks": [engine.runner.num_blocks, cfg.num_kv_blocks],
        "block_size": [engine.kv.block_size, cfg.block_size],
        "max_num_batched_tokens": [sc.max_num_batched_tokens, cfg.max_num_batched_tokens],
        "max_num_seqs": [sc.max_num_seqs, cfg.max_num_seqs],
        "enable_chunked_prefill": [sc.enable_chunked_prefill, cfg.enable_chunked_prefill],
        "enable_prefix_caching": [engine.kv.enable_prefix_caching, cfg.enable_prefix_caching],
        "max_model_len": [engine.max_model_len, cfg.max_model_len],
        "replicas / tp / pp": ["1 / 1 / 1", f"{cfg.num_replicas} / {cfg.tp} / {cfg.pp}"],
    }


def profile_mismatches(profile: Profile, engine: LLMEngine) -> tuple[list[str], list[str]]:
    """(errors, notes): a profile from another device, model, dtype, block size or step path cannot
    calibrate this engine (errors); one measured under smaller limits is extrapolated (notes)."""
    h = profile.header
    r = engine.runner
    errors = []
    dtype = str(r.dtype).removeprefix("torch.")
    for what, got, want in (
        ("device", h.device, r.device.name),
        ("dtype", h.dtype, dtype),
        ("block_size", h.block_size, r.block_size),
        ("attention_backend", h.attention_backend, r.backend.name),
        ("cuda_graphs", h.cuda_graphs, r.graphs is not None),
    ):
        if got != want:
            errors.append(f"{what}: profile {got!r}, engine {want!r}")
    for f in _SHAPE_FIELDS:
        if h.model_config.get(f) != getattr(engine.spec, f):
            errors.append(f"model {f}: profile {h.model_config.get(f)!r}, engine {getattr(engine.spec, f)!r}")
    notes = []
    sc = engine.sched_config
    for what, prof_v, eng_v in (
        ("max_num_batched_tokens", h.max_num_batched_tokens, sc.max_num_batched_tokens),
        ("max_num_seqs", h.max_num_seqs, sc.max_num_seqs),
    ):
        if eng_v > prof_v:
            notes.append(f"engine {what} {eng_v} > profiled {prof_v}: larger steps are extrapolated")
    return errors, notes


_computed = operator.attrgetter("num_computed_tokens")
_outputs = operator.attrgetter("num_output_tokens")


class ShapeTap:
    """Records the shape and wall seconds of every `ModelRunner.execute` call while active.

    Installed as an instance attribute over the runner's `execute` (the engine looks it up on its
    runner each step) and removed on exit; the engine's code is untouched. Inside the engine's
    measured step it only snapshots two per-sequence counters (a few microseconds for hundreds of
    sequences, `cpu_seconds` in all); the shapes are built from the snapshots afterwards, with the
    classification `ReplicaCore.shape` applies.
    """

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.seconds: list[float] = []
        self.cpu_seconds = 0.0
        self._raw: list[tuple[list, list[int], list[int], list[int]]] = []
        self._execute: Callable | None = None

    def _on_execute(self, batch: ScheduledBatch) -> list[int]:
        t0 = time.perf_counter()
        seqs = batch.seqs
        self._raw.append((seqs, batch.num_new_tokens, list(map(_computed, seqs)), list(map(_outputs, seqs))))
        self.cpu_seconds += time.perf_counter() - t0
        tokens = self._execute(batch)
        self.seconds.append(self.runner.last_step_seconds)
        return tokens

    @property
    def shapes(self) -> list[BatchShape]:
        out = []
        for seqs, counts, computed, outputs in self._raw:
            prefill: list[tuple[int, int]] = []
            nd = ctx = mx = 0
            for s, n, c, o in zip(seqs, counts, computed, outputs):
                if n == 1 and o > 0 and c + 1 == s.request.prompt_len + o:  # as ReplicaCore.shape
                    nd += 1
                    ctx += c + 1
                    mx = max(mx, c + 1)
                else:
                    prefill.append((n, c))
            out.append(BatchShape(prefill, nd, ctx, mx))
        return out

    def __enter__(self) -> ShapeTap:
        r = self.runner
        if "execute" in vars(r):
            raise RuntimeError("the runner's execute is already wrapped")
        self._execute = r.execute
        r.execute = self._on_execute
        return self

    def __exit__(self, *exc: object) -> None:
        del self.runner.execute


def warm_up(runner: ModelRunner, rounds: int = 2) -> None:
    """Run a few steps of each kind before a measured replay, so Triton's JIT compilation and cuBLAS
    heuristics are not billed to the first requests. Uses its own block manager over the runner's
    pool: the engine's block manager (and prefix cache) stays untouched."""
    from engine.profiler import ShapeLimits, _Synth, build_batch, release
    from policies.kv.block_manager import BlockManager

    cfg = runner.config
    lim = ShapeLimits(
        cfg.max_num_batched_tokens,
        cfg.max_num_seqs,
        runner.max_model_len,
        runner.num_blocks,
        runner.block_size,
    )
    nd = max(1, min(8, cfg.max_num_seqs - 1))
    n_pf = max(1, min(512, cfg.max_num_batched_tokens - nd))
    ctx = max(2, min(64, runner.max_model_len))
    shapes = [
        BatchShape([], 1, ctx),
        BatchShape([], nd, nd * ctx),
        BatchShape([(n_pf, 0)]),
        BatchShape([(n_pf, 0)], nd, nd * ctx),
    ]
    kv = BlockManager(runner.num_blocks, runner.block_size, enable_prefix_caching=False)
    synth = _Synth(runner.spec.vocab_size, seed=12345)
    for s in shapes:
        if lim.why_not(s) is not None:
            continue
        batch = build_batch(s, kv, synth)
        try:
            for _ in range(rounds):
                runner.execute(batch)
        finally:
            release(batch, kv)


# ------------------------------------------------------------------------------------------------
# Comparison


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
    measured: RunResult, shapes: list[BatchShape], execute_s: np.ndarray, cost: CalibratedCostModel
) -> dict[str, np.ndarray]:
    """Per measured iteration: start (s), measured seconds (end - start: the scheduler's decision plus
    the runner's step, as the engine stamps it), the step alone (execute_s), and the cost model's
    prediction of both for that iteration's shape (`shapes`, from a `ShapeTap` or `replay_shapes`)."""
    it = measured.iterations
    n = len(it["start"])
    if not n == len(shapes) == len(execute_s):
        raise RuntimeError(
            f"engine logged {n} iterations but {len(shapes)} shapes and {len(execute_s)} step times "
            "were given"
        )
    parts = [cost.parts(s) for s in shapes]
    return {
        "start": np.asarray(it["start"], dtype=np.float64),
        "measured_s": np.asarray(it["end"], dtype=np.float64) - np.asarray(it["start"], dtype=np.float64),
        "execute_s": np.asarray(execute_s, dtype=np.float64),
        "predicted_s": np.array([p["execute"] + p["schedule"] for p in parts]),
        "predicted_execute_s": np.array([p["execute"] for p in parts]),
        "predicted_stage_s": np.array([cost.stage_time(s) for s in shapes]),
        "kind": np.array([shape_kind(s) for s in shapes], dtype=object),
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
    return out


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


def _previous_errors(errors: dict) -> dict[tuple[str, str], float | None] | None:
    """(metric, stat) -> the signed error a recomputed report replaced, or None for a fresh report."""
    prev = errors.get("previous")
    if not prev:
        return None
    return {(r["metric"], r["stat"]): r.get("rel_error") for r in prev.get("metrics", [])}


def format_errors(errors: dict) -> str:
    """The error table as text, for the terminal (with the replaced errors of a recomputed report)."""
    before = _previous_errors(errors)
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
    it = errors["iterations"]["all"]
    if it["n"]:
        lines.append(
            f"iteration time |error|: median {it['median_abs_rel_error']:.1%}, "
            f"p90 {it['p90_abs_rel_error']:.1%} over {it['n']} iterations"
        )
    return "\n".join(lines)


def fresh_kv(engine: LLMEngine) -> None:
    """Give the engine an empty block manager of the same pool (no cached prefixes, zeroed stats), as
    the simulator starts with. The KV tensors keep stale content, which no block hash points at."""
    from policies.kv.block_manager import BlockManager

    kv = engine.kv
    engine.kv = BlockManager(engine.runner.num_blocks, kv.block_size, kv.enable_prefix_caching)


# ------------------------------------------------------------------------------------------------
# Capacity (to run at a given fraction of it)


def measure_capacity(
    engine: LLMEngine, trace: Trace, cfg: SimConfig, cost: CalibratedCostModel, source: str, seed: int = 0
) -> dict:
    """Request throughput with every request of the slice arriving at once.

    source 'engine': served for real (then the engine's block manager is replaced by a fresh
    one, so the validation run starts from an empty prefix cache as the simulator does);
    'sim': simulated with the calibrated model (fast, but it is the model's own estimate).
    """
    from traces.transforms import replace_arrivals

    burst = replace_arrivals(trace, np.zeros(len(trace)))
    if source == "engine":
        res = engine.replay(burst, seed=seed)
        fresh_kv(engine)
    elif source == "sim":
        res = Simulation(burst, cfg, cost=cost).run()
    else:
        raise ValueError(f"capacity source must be 'engine' or 'sim', got {source!r}")
    m = compute_metrics(res)
    if not m["request_throughput"]:
        raise RuntimeError(f"capacity run ({source}) finished no request")
    return {
        "source": source,
        "request_throughput": m["request_throughput"],
        "output_throughput": m["output_throughput"],
        "duration_s": m["duration_s"],
    }


# ------------------------------------------------------------------------------------------------
# The run


def validate(
    trace: Trace,
    engine_config: EngineConfig | None = None,
    *,
    engine: LLMEngine | None = None,
    scheduler: str = "fcfs",
    enable_chunked_prefill: bool = True,
    profile: Profile | str | Path | None = None,
    profile_grid: ProfileGrid | None = None,
    profile_repeats: int = 3,
    profile_warmup: int = 1,
    sim_overrides: dict | None = None,
    load: float | None = None,
    capacity: dict | None = None,
    capacity_from: str = "engine",
    out_dir: str | Path | None = None,
    png: bool | str = "auto",
    seed: int = 0,
    time_limit: float | None = None,
    target: float = DEFAULT_TARGET,
    progress: Callable[[str], None] | None = None,
    trace_spec: dict | None = None,
) -> ValidationResult:
    """Serve `trace` on the engine built from `engine_config` and simulate it on the mirrored replica.

    engine: an engine to reuse instead (one model load and CUDA-graph capture for several runs; its
        block manager is replaced by an empty one first, and `scheduler`/`enable_chunked_prefill`
        are its own).
    profile: a Profile or profile file of this engine's device/model/dtype; None profiles the engine
        on the spot (with `profile_grid`, default `ProfileGrid()`; `ProfileGrid.quick()` for tests).
    load: when set, the trace is first time-scaled to `load` x the capacity measured by
        `capacity_from` ('engine' or 'sim'), e.g. 0.5 and 0.9; `capacity` (a previous result's
        errors["capacity"]) skips measuring it again.
    sim_overrides: run-control SimConfig fields (jump, record_iterations, horizon, seed) only.
    out_dir: when set, the report directory is written there (see `write_validation_report`).
    trace_spec: how `trace` was cut from its file (`trace_spec_from_args`), kept in errors.json so that
        `recompute` can rebuild the same slice later.
    """
    from engine.llm_engine import LLMEngine
    from engine.profiler import ProfileGrid, profile_runner

    say = progress or (lambda _m: None)
    notes: list[str] = []
    if png not in (True, False, "auto"):
        raise ValueError(f"png must be True, False or 'auto', got {png!r}")
    if png is True and out_dir is not None and not png_export_available():
        raise RuntimeError(PNG_HELP)  # before anything slow runs
    if engine is None:
        if engine_config is None:
            raise ValueError("validate needs an engine_config or an engine")
        engine = LLMEngine(engine_config, scheduler=scheduler, enable_chunked_prefill=enable_chunked_prefill)
    else:
        fresh_kv(engine)  # a previous run's prefix cache must not serve this one
    say(f"engine: {engine.spec.name} on {engine.runner.device.name}, {engine.runner.num_blocks} KV blocks")
    if profile is None:
        say("profiling the engine (no profile given)")
        prof = profile_runner(
            engine.runner,
            profile_grid or ProfileGrid(),
            repeats=profile_repeats,
            warmup=profile_warmup,
            command="benchmarks.validate (profiled on the spot)",
            progress=say,
            seed=seed,
        )
        cost = CalibratedCostModel(profile=prof)
        notes.append("profile measured on the spot, on this engine")
    else:
        cost = CalibratedCostModel(profile=profile)
        prof = cost.profile
        errors, more = profile_mismatches(prof, engine)
        if errors:
            raise ValueError(
                f"{cost.profile_path or 'profile'} does not describe this engine: " + "; ".join(errors)
            )
        notes += more
        warm_up(engine.runner)
    notes += cost.notes
    cfg = mirror_sim_config(engine, sim_overrides)
    if time_limit is not None and "horizon" not in (sim_overrides or {}):
        cfg.horizon = time_limit
    if load is not None:
        if not load > 0:
            raise ValueError(f"load must be > 0 (a fraction of capacity), got {load!r}")
        from traces.transforms import scale_to_rate

        if capacity is None:
            capacity = measure_capacity(engine, trace, cfg, cost, capacity_from, seed)
        else:
            capacity = {
                k: capacity[k] for k in ("source", "request_throughput", "output_throughput", "duration_s")
            }
        capacity["load"] = load
        capacity["rate"] = load * capacity["request_throughput"]
        trace = scale_to_rate(trace, capacity["rate"])
        say(
            f"capacity ({capacity['source']}) {capacity['request_throughput']:.3f} req/s; replaying at "
            f"{capacity['rate']:.3f} req/s"
        )
    else:
        capacity = None
    say(f"engine replay of {len(trace)} requests")
    with ShapeTap(engine.runner) as tap:
        measured = engine.replay(trace, seed=seed, time_limit=time_limit)
    say("simulating")
    predicted = Simulation(trace, cfg, cost=cost).run()
    measured.meta["name"] = "measured (engine)"
    predicted.meta["name"] = "predicted (simulator)"
    predicted.meta["cost_model_profile"] = cost.describe()
    measured.metrics = compute_metrics(measured)
    predicted.metrics = compute_metrics(predicted)
    if len(tap.seconds) != len(measured.iterations["start"]):
        raise RuntimeError(
            f"engine logged {len(measured.iterations['start'])} iterations but {len(tap.seconds)} steps "
            "were executed"
        )
    shapes = tap.shapes
    table = iteration_table(measured, shapes, np.asarray(tap.seconds), cost)
    notes.append(_replay_check(measured, trace, cfg, shapes))
    busy = float(table["measured_s"].sum())
    if busy > 0:
        notes.append(
            f"recording iteration shapes added {tap.cpu_seconds / busy:.2%} to the engine's busy time"
        )
    mirror = mirror_table(engine, cfg)
    bad = [k for k, (a, b) in mirror.items() if a != b]
    if bad:
        raise AssertionError(f"simulated replica does not mirror the engine in: {', '.join(bad)}")
    errors = summarize(measured, predicted, table, cost, mirror, target, notes, capacity)
    errors["trace_spec"] = trace_spec
    errors["time_limit"] = time_limit
    errors["seed"] = seed
    result = ValidationResult(measured, predicted, cfg, cost, errors, table, trace, engine, notes=notes)
    if out_dir is not None:
        write_validation_report(result, out_dir, png=png)
        say(f"report: {result.out_dir}/index.html")
    return result


# ------------------------------------------------------------------------------------------------
# Recomputing an existing report (no GPU)

TRACE_SLICE_KEYS = (
    "trace",
    "format",
    "skip_bad_rows",
    "window",
    "max_requests",
    "rate",
    "cap_prompt",
    "cap_output",
    "cap_total",
)
_ROOT = Path(__file__).resolve().parents[1]


def trace_spec_from_args(a: argparse.Namespace) -> dict:
    """The trace-slicing flags of a `validate` command line (what `sim.cli._load_trace` applies), with
    the trace file as given and as resolved, for errors.json."""
    from traces.loaders import default_trace_path

    spec = {k: getattr(a, k, None) for k in TRACE_SLICE_KEYS}
    path = Path(a.trace) if a.trace else default_trace_path()
    spec["trace"] = str(path)
    spec["trace_resolved"] = str(path.resolve())
    return spec


def _find_trace_file(candidates: list[str | None]) -> Path:
    """The first candidate that is a file: as given, then under the project root, then by its name
    among the shared traces (a report made on another machine names that machine's paths)."""
    tried = []
    for c in candidates:
        if not c:
            continue
        p = Path(c)
        for q in (p, _ROOT / p, _ROOT.parent / "shared" / "traces" / p.name):
            tried.append(str(q))
            if q.is_file():
                return q
    raise FileNotFoundError(
        "trace file of the measured run not found (tried " + ", ".join(tried) + "); pass --trace PATH"
    )


def _slice_trace(spec: dict, path: Path) -> Trace:
    from sim.cli import _load_trace

    ns = argparse.Namespace(**{k: spec.get(k) for k in TRACE_SLICE_KEYS})
    ns.trace = str(path)
    ns.format = ns.format or "auto"
    ns.skip_bad_rows = bool(ns.skip_bad_rows)
    return _load_trace(ns)


def _trace_mismatch(trace: Trace, measured: RunResult) -> list[str]:
    """How `trace` differs from the requests the engine served ([] when it is the same slice). Requests a
    time-limited run never admitted have 0 prompt tokens in the measured run; unfinished ones a short
    output: those columns are compared where they are defined."""
    rq = measured.requests
    n = len(rq["id"])
    if len(trace) != n:
        return [f"{len(trace)} requests, the measured run served {n}"]
    out = []
    arr = np.asarray(rq["arrival"], dtype=np.float64)
    if not np.allclose(trace.arrival, arr, rtol=1e-12, atol=1e-9):
        i = int(np.argmax(np.abs(trace.arrival - arr)))
        out.append(f"arrival of request {i}: {trace.arrival[i]!r} vs measured {arr[i]!r}")
    prompt = np.asarray(rq["prompt_tokens"])
    seen = prompt > 0
    bad = np.flatnonzero(seen & (trace.prompt_len != prompt))
    if bad.size:
        out.append(f"{bad.size} prompt length(s) differ, first request {bad[0]}: {trace.prompt_len[bad[0]]} "
                   f"vs measured {prompt[bad[0]]}")
    done = np.asarray(rq["status"]).astype(str) == "finished"
    bad = np.flatnonzero(done & (trace.output_len != np.asarray(rq["output_tokens"])))
    if bad.size:
        out.append(f"{bad.size} output length(s) differ, first request {bad[0]}")
    return out


def rebuild_trace(
    measured: RunResult, errors: dict, trace_path: str | None = None, slicing: dict | None = None
) -> tuple[Trace, dict, list[str]]:
    """The trace slice a validation run served, rebuilt from its trace file: (trace, slicing used, notes).

    The slicing is the one recorded in errors.json ("trace_spec"), overridden by `slicing`; a report
    from before it was recorded is taken as the first num_requests requests, capped in total length
    where the measured prompts show a cap (every shortened request then ends at the same total). The
    result is scaled to the recorded load's rate and must match the measured requests (count, arrival
    times, prompt lengths, finished outputs), else ValueError saying how it differs.
    """
    notes: list[str] = []
    recorded = errors.get("trace_spec")
    spec = dict(recorded or {})
    if slicing:
        spec.update({k: v for k, v in slicing.items() if v is not None})
    path = _find_trace_file(
        [trace_path, spec.get("trace"), spec.get("trace_resolved"), measured.meta.get("trace_source")]
    )
    if not recorded and not (slicing and slicing.get("max_requests")):
        spec["max_requests"] = int(measured.meta["num_requests"])
        notes.append(
            f"slice not recorded: taken as the first {spec['max_requests']} requests of {path.name} "
            "and checked against the measured requests"
        )
    cap = errors.get("capacity") or {}

    def build(sp: dict) -> Trace:
        t = _slice_trace(sp, path)
        if cap.get("rate"):
            from traces.transforms import scale_to_rate

            t = scale_to_rate(t, float(cap["rate"]))
        return t

    trace = build(spec)
    why = _trace_mismatch(trace, measured)
    if why and not recorded and len(trace) == len(measured.requests["id"]) and not spec.get("cap_total"):
        # A length cap (e.g. --cap-total below max_model_len) shortens the prompt first, so every
        # shortened prompt plus its requested output ends at the cap.
        prompt = np.asarray(measured.requests["prompt_tokens"])
        diff = (prompt > 0) & (trace.prompt_len != prompt)
        totals = set((prompt + trace.output_len)[diff].tolist())
        if len(totals) == 1:
            spec["cap_total"] = int(totals.pop())
            trace = build(spec)
            why = _trace_mismatch(trace, measured)
            notes.append(f"length cap inferred from the measured prompts: cap_total={spec['cap_total']}")
    if why:
        raise ValueError(
            f"the trace rebuilt from {path} ({spec}) is not the slice the engine served: "
            + "; ".join(why)
            + ". Pass the slicing flags the validation ran with (--trace, --max-requests, --window, "
            "--cap-total, ...)"
        )
    spec["trace"] = str(path)
    return trace, spec, notes


_ITER_CHECKS = (
    ("num_seqs", lambda b, s: len(b.seqs)),
    ("num_prefill_seqs", lambda b, s: len(s.prefill)),
    ("prefill_tokens", lambda b, s: s.num_tokens - s.num_decode),
    ("decode_tokens", lambda b, s: s.num_decode),
    ("preempted", lambda b, s: len(b.preempted)),
)


def replay_shapes(measured: RunResult, trace: Trace, cfg: SimConfig) -> list[BatchShape]:
    """The shape of every iteration of a measured run, rebuilt by stepping the engine's own replica
    logic (`ReplicaCore` with the mirrored scheduler and block manager) through the measured iteration
    boundaries: arrivals up to each iteration's start are admitted, as the engine's loop admits them,
    and the scheduler, deterministic, picks the batch the engine picked. Every rebuilt iteration is
    checked against the engine's own iteration row; a difference raises ValueError naming it."""
    from policies.kv.block_manager import BlockManager
    from policies.scheduling import fcfs  # noqa: F401  (registers the schedulers)
    from policies.scheduling.base import SCHEDULERS, SchedulerConfig
    from policies.sequence import Sequence
    from sim.replica_core import ReplicaCore
    from sim.results import RunRecorder

    if cfg.num_replicas != 1 or cfg.pp != 1:
        raise ValueError("replay_shapes rebuilds single-replica, single-stage runs (as the engine serves)")
    core = ReplicaCore(
        0,
        SCHEDULERS.create(
            cfg.scheduler,
            SchedulerConfig(cfg.max_num_batched_tokens, cfg.max_num_seqs, cfg.enable_chunked_prefill),
        ),
        BlockManager(cfg.num_kv_blocks, cfg.block_size, cfg.enable_prefix_caching),
        RunRecorder(len(trace), record_iterations=False),
        cfg.max_model_len,
    )
    it = measured.iterations
    starts = np.asarray(it["start"], dtype=np.float64)
    ends = np.asarray(it["end"], dtype=np.float64)
    arrival = trace.arrival
    nxt = 0
    shapes: list[BatchShape] = []
    for j in range(len(starts)):
        now = float(starts[j])
        while nxt < len(trace) and arrival[nxt] <= now:
            core.add(Sequence(trace.request(nxt)), float(arrival[nxt]))
            nxt += 1
        batch = core.schedule(now)
        shape = core.shape(batch)
        bad = [
            f"{name} {get(batch, shape)} vs engine {int(it[name][j])}"
            for name, get in _ITER_CHECKS
            if get(batch, shape) != int(it[name][j])
        ]
        if bad:
            raise ValueError(
                f"measured iteration {j} (start {now:.6f} s) rebuilds differently: {'; '.join(bad)}; the "
                "replica policy or the prefix hashing no longer matches the run that was measured"
            )
        shapes.append(shape)
        core.complete(batch, now, float(ends[j]))
    return shapes


def _replay_check(measured: RunResult, trace: Trace, cfg: SimConfig, recorded: list[BatchShape]) -> str:
    """Whether `replay_shapes` rebuilds the shapes the engine recorded (what `recompute` will rely on),
    as a note for the report."""
    try:
        rebuilt = replay_shapes(measured, trace, cfg)
    except ValueError as e:
        return f"replay check failed, this run cannot be recomputed exactly: {e}"
    for j, (a, b) in enumerate(zip(rebuilt, recorded)):
        if (a.prefill, a.num_decode, a.decode_context, a.decode_max_context) != (
            b.prefill,
            b.num_decode,
            b.decode_context,
            b.decode_max_context,
        ):
            return f"replay check failed at iteration {j}: rebuilt {a}, recorded {b}"
    return f"replay check: the {len(rebuilt)} iteration shapes rebuild exactly from the measured run"


def _read_column(path: Path, name: str) -> np.ndarray:
    with open(path, newline="") as f:
        rows = csv.DictReader(f)
        if rows.fieldnames is None or name not in rows.fieldnames:
            raise ValueError(f"{path}: no column {name!r} (columns: {rows.fieldnames})")
        vals = []
        for i, r in enumerate(rows, start=2):
            try:
                vals.append(float(r[name]))
            except (TypeError, ValueError):
                raise ValueError(
                    f"{path}: line {i}: field {name}: expected a number, got {r[name]!r}"
                ) from None
    return np.asarray(vals, dtype=np.float64)


def _check_recorded_mirror(cfg: SimConfig, measured: RunResult, src: str) -> None:
    meta = measured.meta
    conf = meta.get("config") or {}
    want = {"num_kv_blocks": meta.get("num_kv_blocks")}
    for k in ("block_size", "max_num_batched_tokens", "max_num_seqs", "max_model_len"):
        want[k] = conf.get(k)
    want["enable_prefix_caching"] = conf.get("enable_prefix_caching")
    bad = [
        f"{k}: simulator {getattr(cfg, k)!r}, engine {v!r}"
        for k, v in want.items()
        if v is not None and getattr(cfg, k) != v
    ]
    if bad:
        raise ValueError(
            f"{src}: the recorded simulator configuration does not mirror the engine: " + "; ".join(bad)
        )


def _check_profile_for_run(cost: CalibratedCostModel, measured: RunResult) -> None:
    h = cost.profile.header
    meta = measured.meta
    bad = [
        f"{what}: profile {got!r}, measured run {want!r}"
        for what, got, want in (
            ("device", h.device, meta.get("device")),
            ("dtype", h.dtype, meta.get("dtype")),
            ("model", h.model, meta.get("model")),
            ("attention_backend", h.attention_backend, meta.get("attention_backend")),
            ("cuda_graphs", h.cuda_graphs, meta.get("cuda_graphs")),
        )
        if want is not None and got != want
    ]
    if bad:
        raise ValueError(
            f"{cost.profile_path or 'profile'} does not describe the measured engine: " + "; ".join(bad)
        )


def recompute(
    run_dir: str | Path,
    profile: Profile | str | Path | None = None,
    *,
    out_dir: str | Path | None = None,
    trace_path: str | None = None,
    slicing: dict | None = None,
    png: bool | str = "auto",
    target: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> ValidationResult:
    """Re-predict an existing validation report directory with the current cost model, no engine.

    run_dir: a directory `validate` wrote (measured/, predicted/, errors.json, iterations.csv,
        profile.json). profile: fit the cost model to this profile instead of the run's profile.json.
    The measured run is kept; the simulation is redone on the same trace slice (`rebuild_trace`), with
    the simulator configuration recorded in predicted/ (checked against the measured engine's), the
    per-iteration table is rebuilt (`replay_shapes`), and the report is rewritten in out_dir (default:
    run_dir itself) with errors.json holding the replaced numbers under "previous" and the first ones
    under "original".
    """
    run = Path(run_dir)
    say = progress or (lambda _m: None)
    for f in ("measured/summary.json", "predicted/summary.json", "errors.json", "iterations.csv"):
        if not (run / f).is_file():
            raise FileNotFoundError(f"{run / f}: not found; {run} is not a validation report directory")
    measured = RunResult.read(run / "measured")
    old_pred = RunResult.read(run / "predicted")
    try:
        old = json.loads((run / "errors.json").read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{run / 'errors.json'}: line {e.lineno}: not valid JSON ({e.msg})") from None
    cfg_src = f"{run / 'predicted' / 'summary.json'}: meta.config"
    if "config" not in old_pred.meta:
        raise ValueError(f"{cfg_src}: missing (the simulator configuration of the run)")
    cfg = SimConfig.from_dict(dict(old_pred.meta["config"]), cfg_src)
    _check_recorded_mirror(cfg, measured, cfg_src)
    prof = profile if profile is not None else run / "profile.json"
    cost = CalibratedCostModel(profile=prof)
    _check_profile_for_run(cost, measured)
    trace, spec, notes = rebuild_trace(measured, old, trace_path, slicing)
    say(f"{run}: simulating {len(trace)} requests")
    predicted = Simulation(trace, cfg, cost=cost).run()
    measured.meta["name"] = "measured (engine)"
    predicted.meta["name"] = "predicted (simulator)"
    predicted.meta["cost_model_profile"] = cost.describe()
    measured.metrics = compute_metrics(measured)
    predicted.metrics = compute_metrics(predicted)
    say(f"{run}: rebuilding {len(measured.iterations['start'])} iteration shapes")
    shapes = replay_shapes(measured, trace, cfg)
    table = iteration_table(measured, shapes, _read_column(run / "iterations.csv", "execute_s"), cost)
    kept = [n for n in old.get("notes", []) if not n.startswith(("PNG export skipped", "recomputed "))]
    kept = [n for n in kept if n not in cost.notes]
    notes = kept + notes + list(cost.notes)
    notes.append(
        f"recomputed {_dt.datetime.now().isoformat(timespec='seconds')} with the current cost model, "
        f"fitted to {cost.profile_path or 'the given profile'}; the measured run is the original"
    )
    errors = summarize(
        measured, predicted, table, cost, old["mirror"], target if target is not None else old["target"],
        notes, old.get("capacity"),
    )
    errors["trace_spec"] = spec
    errors["time_limit"] = old.get("time_limit", cfg.horizon)
    errors["seed"] = old.get("seed", cfg.seed)
    previous = {k: v for k, v in old.items() if k not in ("previous", "original")}
    errors["previous"] = _previous_summary(previous)
    errors["original"] = old.get("original") or errors["previous"]
    result = ValidationResult(measured, predicted, cfg, cost, errors, table, trace, None, notes=notes)
    out = Path(out_dir) if out_dir is not None else run
    same = out.resolve() == run.resolve()
    write_validation_report(result, out, png=png, write_measured=not same)
    return result


def _previous_summary(errors: dict) -> dict:
    """What a recomputed report keeps of the errors it replaces: the cost model, the headline, every
    metric row's prediction and error, the per-iteration summary."""
    return {
        "cost_model": errors.get("cost_model"),
        "profile_fit_all": (errors.get("profile_fit") or {}).get("all"),
        "headline": errors.get("headline"),
        "metrics": [
            {k: r.get(k) for k in ("metric", "stat", "label", "predicted", "rel_error")}
            for r in errors.get("metrics", [])
        ],
        "iterations": errors.get("iterations"),
    }


# ------------------------------------------------------------------------------------------------
# Report


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; margin-bottom: 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
thead th { background: #f0f0f0; text-align: center; }
tbody th { text-align: left; font-weight: normal; }
td.ok { background: #e8f6e8; } td.bad { background: #fbe5e5; }
tr.headline th { font-weight: bold; }
section { margin-top: 2em; }
pre { background: #f8f8f8; padding: 0.8em; overflow-x: auto; }
"""


def _fmt(v, fmt: str) -> str:
    if v is None:
        return "—"
    if fmt == "d":
        return format(int(v), "d")
    return format(v, fmt)


def _layout(fig: go.Figure, title: str, x: str, y: str) -> go.Figure:
    fig.update_layout(
        title=title,
        xaxis_title=x,
        yaxis_title=y,
        template="plotly_white",
        height=480,
        legend=dict(orientation="h", y=-0.2),
        margin=dict(t=60, b=40),
    )
    return fig


def _thin(n: int, max_points: int = 20000) -> np.ndarray:
    return np.arange(n) if n <= max_points else np.unique(np.linspace(0, n - 1, max_points).astype(np.int64))


def _scatter(
    x_meas: np.ndarray,
    y_pred: np.ndarray,
    title: str,
    unit: str,
    groups: np.ndarray | None = None,
    ids: np.ndarray | None = None,
) -> go.Figure:
    fig = go.Figure()
    ok = np.isfinite(x_meas) & np.isfinite(y_pred)
    kinds = [None] if groups is None else [k for k in ("decode", "prefill", "mixed") if (groups == k).any()]
    for i, k in enumerate(kinds):
        sel = ok if k is None else ok & (groups == k)
        idx = np.flatnonzero(sel)[_thin(int(sel.sum()))]
        text = None if ids is None else [f"request {int(r)}" for r in ids[idx]]
        fig.add_trace(
            go.Scattergl(
                x=x_meas[idx],
                y=y_pred[idx],
                mode="markers",
                name=k or "requests",
                text=text,
                marker=dict(size=5, opacity=0.6, color=("#1f77b4", "#d62728", "#2ca02c")[i]),
            )
        )
    if ok.any():
        lo = float(min(x_meas[ok].min(), y_pred[ok].min()))
        hi = float(max(x_meas[ok].max(), y_pred[ok].max()))
        fig.add_trace(
            go.Scatter(
                x=[lo, hi],
                y=[lo, hi],
                mode="lines",
                name="predicted = measured",
                line=dict(color="#888", dash="dash"),
            )
        )
        if lo > 0:
            fig.update_xaxes(type="log")
            fig.update_yaxes(type="log")
    return _layout(fig, title, f"measured ({unit})", f"predicted ({unit})")


def _iteration_figure(table: dict[str, np.ndarray]) -> go.Figure:
    t0 = float(table["start"].min()) if table["start"].size else 0.0
    idx = _thin(len(table["start"]))
    x = table["start"][idx] - t0
    fig = go.Figure()
    fig.add_trace(
        go.Scattergl(
            x=x,
            y=table["measured_s"][idx] * 1e3,
            mode="markers",
            name="measured",
            marker=dict(size=4, color="#1f77b4", opacity=0.7),
        )
    )
    fig.add_trace(
        go.Scattergl(
            x=x,
            y=table["predicted_s"][idx] * 1e3,
            mode="markers",
            name="predicted",
            marker=dict(size=4, color="#d62728", opacity=0.7),
        )
    )
    return _layout(
        fig,
        "Iteration time over the run: measured vs predicted for the same batch",
        "engine time since first iteration (s)",
        "iteration time (ms)",
    )


def _profile_fit_figure(cost: CalibratedCostModel) -> go.Figure:
    rows = cost.fit_report()["samples"]
    m = np.array([r["measured_s"] for r in rows]) * 1e3
    p = np.array([r["predicted_s"] for r in rows]) * 1e3
    kinds = np.array([r["kind"] for r in rows], dtype=object)
    fig = _scatter(m, p, "Profile fit: step time of every profiled shape, fitted vs measured", "ms", kinds)
    return fig


def build_validation_figures(result: ValidationResult) -> dict[str, go.Figure]:
    pr = per_request(result.measured, result.predicted)
    t = result.iterations
    return {
        "ttft_scatter": _scatter(
            pr["measured_ttft"] * 1e3,
            pr["predicted_ttft"] * 1e3,
            "TTFT per request: predicted vs measured",
            "ms",
            ids=pr["id"],
        ),
        "e2e_scatter": _scatter(
            pr["measured_e2e"] * 1e3,
            pr["predicted_e2e"] * 1e3,
            "E2E latency per request: predicted vs measured",
            "ms",
            ids=pr["id"],
        ),
        "iteration_time": _iteration_figure(t),
        "iteration_scatter": _scatter(
            t["measured_s"] * 1e3,
            t["predicted_s"] * 1e3,
            "Iteration time per measured iteration: predicted vs measured",
            "ms",
            t["kind"],
        ),
        "profile_fit": _profile_fit_figure(result.cost),
    }


def _error_table_html(errors: dict) -> str:
    e = html.escape
    before = _previous_errors(errors)
    body = []
    for r in errors["metrics"]:
        err = "—" if r["rel_error"] is None else f"{r['rel_error']:+.1%}"
        cls = "" if r["within_target"] is None else (" class='ok'" if r["within_target"] else " class='bad'")
        row_cls = " class='headline'" if r["headline"] else ""
        old = ""
        if before is not None:
            b = before.get((r["metric"], r["stat"]))
            old = f"<td>{e('—' if b is None else format(b, '+.1%'))}</td>"
        body.append(
            f"<tr{row_cls}><th>{e(r['label'])}</th><td>{e(_fmt(r['measured'], r['format']))}</td>"
            f"<td>{e(_fmt(r['predicted'], r['format']))}</td><td{cls}>{e(err)}</td>{old}</tr>"
        )
    head = "<th>error before recompute</th>" if before is not None else ""
    return (
        "<table><thead><tr><th>metric</th><th>measured (engine)</th><th>predicted (simulator)</th>"
        f"<th>signed relative error</th>{head}</tr></thead><tbody>" + "".join(body) + "</tbody></table>"
    )


def _summary_table_html(title: str, d: dict[str, dict]) -> str:
    e = html.escape
    rows = []
    for k, s in d.items():
        if not isinstance(s, dict) or "n" not in s:
            continue
        cells = [_fmt(s["n"], "d")] + [
            _fmt(s.get(x), ".1%") for x in ("median_abs_rel_error", "p90_abs_rel_error", "max_abs_rel_error")
        ]
        cells.append("—" if s.get("mean_signed_rel_error") is None else f"{s['mean_signed_rel_error']:+.1%}")
        rows.append(f"<tr><th>{e(k)}</th>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
    return (
        f"<table><thead><tr><th>{e(title)}</th><th>n</th><th>median |err|</th><th>P90 |err|</th>"
        "<th>max |err|</th><th>mean signed err</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _page(result: ValidationResult, figures: dict[str, go.Figure]) -> str:
    e = html.escape
    er = result.errors
    m = result.measured.meta
    cm = result.cost.describe()
    head = er["headline"]
    verdict = (
        "—"
        if head["max_abs_rel_error"] is None
        else f"max |error| on the headline metrics {head['max_abs_rel_error']:.1%} "
        f"(target {er['target']:.0%}): {'all' if head['all_within_target'] else 'not all'} within target"
    )
    mirror_rows = "".join(
        f"<tr><th>{e(k)}</th><td>{e(str(a))}</td><td>{e(str(b))}</td></tr>"
        for k, (a, b) in er["mirror"].items()
    )
    cap = er.get("capacity")
    cap_text = (
        ""
        if not cap
        else (
            f"<p>Load: {cap['load']:.0%} of the capacity measured by the {e(cap['source'])} "
            f"({cap['request_throughput']:.3f} req/s), i.e. {cap['rate']:.3f} req/s.</p>"
        )
    )
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>Validation: {e(str(m.get('trace')))}</title><style>{_CSS}</style>",
        f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script>",
        "</head><body>",
        f"<h1>Simulator vs engine: {e(str(m.get('trace')))}</h1>",
        f"<p>Generated {e(_dt.datetime.now().isoformat(timespec='seconds'))}. {len(result.trace)} requests; "
        f"engine on {e(str(m.get('device')))} ({e(str(m.get('model')))}, {e(str(m.get('dtype')))}); "
        f"simulator with cost model <b>{e(cm['name'])}</b> fitted to the profile of {e(cm['device'])} "
        f"({e(str(cm['profile'] or 'measured on the spot'))}, {e(cm['profile_date'])}).</p>",
        cap_text,
        f"<p><b>{e(verdict)}</b></p>",
        "<p>Signed relative error = (predicted - measured) / measured. Latencies follow vLLM's "
        "serving-benchmark definitions. <a href='side_by_side.html'>Side-by-side run report</a> (CDFs, "
        "throughput, KV use and batch size over time).</p>",
        "<section><h2>Predicted vs measured</h2>",
        _error_table_html(er),
        "</section>",
        "<section><h2>Per request and per iteration</h2>",
        _summary_table_html("per request", er["per_request"]),
        _summary_table_html("per iteration (scheduler + step)", er["iterations"]),
        "</section>",
        "<section><h2>Mirror check</h2><table><thead><tr><th>field</th><th>engine</th><th>simulator</th></tr>"
        f"</thead><tbody>{mirror_rows}</tbody></table></section>",
    ]
    for key, fig in figures.items():
        div = pio.to_html(
            fig, full_html=False, include_plotlyjs=False, div_id=f"fig-{key}", config={"displaylogo": False}
        )
        parts.append(f"<section id='{key}'>{div}</section>")
    notes = er.get("notes") or []
    if notes:
        parts.append(
            "<section><h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul></section>"
        )
    parts.append(f"<section><h2>Profile fit</h2><pre>{e(result.cost.format_fit_report())}</pre></section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def jsonable(v: object) -> object:
    """`v` with numpy scalars and arrays as Python values and NaN/inf as None (undefined), for JSON."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return [jsonable(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Path):
        return str(v)
    return v


def _write_iterations_csv(path: Path, table: dict[str, np.ndarray]) -> None:
    cols = list(table)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for i in range(len(table["start"])):
            w.writerow(
                [repr(float(table[c][i])) if table[c].dtype.kind == "f" else table[c][i] for c in cols]
            )


def write_validation_report(
    result: ValidationResult, out_dir: str | Path, png: bool | str = "auto", write_measured: bool = True
) -> Path:
    """Write the report directory (see the module docstring); returns it. png: True (required),
    False (skip) or 'auto' (when kaleido and a browser are available; a note otherwise).
    write_measured=False leaves an existing measured/ run as it is (a recomputed report)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    do_png = png is True or (png == "auto" and png_export_available())
    if png is True and not png_export_available():
        raise RuntimeError(PNG_HELP)
    if png == "auto" and not do_png:
        result.errors["notes"].append("PNG export skipped: " + PNG_HELP)
    if write_measured:
        result.measured.write(out / "measured")
    result.predicted.write(out / "predicted")
    result.cost.profile.save(out / "profile.json")
    _write_iterations_csv(out / "iterations.csv", result.iterations)
    figures = build_validation_figures(result)
    write_report(
        [result.measured, result.predicted],
        out / "side_by_side.html",
        png_dir=(out / "png" / "side_by_side") if do_png else None,
        title=f"Measured vs predicted: {result.measured.meta.get('trace')}",
    )
    (out / "index.html").write_text(_page(result, figures), encoding="utf-8")
    if do_png:
        png_dir = out / "png"
        png_dir.mkdir(parents=True, exist_ok=True)
        try:
            pio.write_images(
                list(figures.values()), [png_dir / f"{k}.png" for k in figures], width=1100, height=550
            )
        except Exception as e:
            raise RuntimeError(f"PNG export to {png_dir} failed: {e}. {PNG_HELP}") from e
    (out / "errors.json").write_text(json.dumps(jsonable(result.errors), indent=2, allow_nan=False))
    result.out_dir = out
    return out


# ------------------------------------------------------------------------------------------------
# Command line (`sagellm validate`, or `python -m benchmarks.validate`)


def add_validate_args(p: argparse.ArgumentParser) -> None:
    """Trace-slicing flags (shared with `sagellm simulate`) plus the engine, policy and report flags."""
    from sim.cli import _add_trace_args

    _add_trace_args(p)
    p.add_argument("--policy", help="JSON object of policy settings: " + ", ".join(sorted(POLICY_KEYS)))
    p.add_argument(
        "--model",
        default="llama-3.1-8b",
        help="catalog architecture (random weights), Hugging Face directory or .gguf file",
    )
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="auto", help="auto | bf16 | fp16 | fp32")
    p.add_argument("--profile", help="profile file of this device/model/dtype (default: profile on the spot)")
    p.add_argument(
        "--profile-grid",
        choices=("default", "quick"),
        default="default",
        help="grid when profiling on the spot",
    )
    p.add_argument("--scheduler", default=None)
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument("--max-num-seqs", type=int, default=None)
    p.add_argument("--block-size", type=int, default=None)
    p.add_argument("--num-kv-blocks", type=int, default=None)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--gpu-memory-utilization", type=float, default=None)
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument("--no-chunked-prefill", action="store_true")
    p.add_argument("--no-cuda-graphs", action="store_true")
    p.add_argument("--attention-backend", default="auto")
    p.add_argument(
        "--load",
        type=float,
        nargs="+",
        help="replay at these fractions of the measured capacity (e.g. 0.5 0.9: one engine, one report each)",
    )
    p.add_argument("--capacity-from", choices=("engine", "sim"), default="engine")
    p.add_argument("--time-limit", type=float, help="stop the engine replay (and the simulation) here (s)")
    p.add_argument(
        "--target", type=float, default=DEFAULT_TARGET, help="|relative error| target (0.05 = 5%%)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--png", choices=("auto", "yes", "no"), default="auto")
    p.add_argument("--out", help="report directory (default runs/validate; with --recompute: DIR itself)")
    p.add_argument(
        "--recompute",
        nargs="+",
        metavar="DIR",
        help="no engine: re-predict existing report directories with the current cost model (fitted to "
        "--profile if given, else to DIR/profile.json) and rewrite their reports; trace flags, when "
        "given, override the recorded slicing",
    )


def load_policy(path: str | Path) -> dict:
    """A policy file: a JSON object whose keys are among POLICY_KEYS."""
    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: policy file not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: line {e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{p}: expected a JSON object of policy settings")
    unknown = sorted(set(d) - POLICY_KEYS)
    if unknown:
        raise ValueError(
            f"{p}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(POLICY_KEYS))}"
        )
    return d


def main_validate(args: argparse.Namespace | None = None, **kwargs) -> list[ValidationResult]:
    """`sagellm validate`: load and slice the trace, build the engine from the flags (policy file first,
    flags over it), validate, write the report, print the error table.

    Takes a namespace parsed with `add_validate_args` and/or keyword arguments of the same names.
    Several `--load` values run on one engine (one model load), capacity measured once, one report
    directory each (`OUT/load-0.5`, ...). Returns the results in `--load` order.
    """
    from engine.profiler import _namespace

    a = _namespace(add_validate_args, args, kwargs)
    if a.recompute:
        return main_recompute(a)
    from backends.profile import canonical_dtype
    from engine.config import EngineConfig
    from engine.profiler import ProfileGrid
    from sim.cli import _load_trace

    pol = load_policy(a.policy) if a.policy else {}
    for k in POLICY_KEYS:
        v = getattr(a, k, None)
        if v is not None:
            pol[k] = v
    if a.no_prefix_caching:
        pol["enable_prefix_caching"] = False
    if a.no_chunked_prefill:
        pol["enable_chunked_prefill"] = False
    scheduler = pol.pop("scheduler", "fcfs")
    chunked = pol.pop("enable_chunked_prefill", True)
    cfg = EngineConfig(
        model=a.model,
        device=a.device,
        dtype="auto" if a.dtype == "auto" else canonical_dtype(a.dtype),
        cuda_graphs=not a.no_cuda_graphs,
        attention_backend=a.attention_backend,
        seed=a.seed,
        **pol,
    )
    trace = _load_trace(a)
    png = {"auto": "auto", "yes": True, "no": False}[a.png]
    loads: list[float | None] = list(a.load) if a.load else [None]

    def say(m: str) -> None:
        print(m, file=sys.stderr, flush=True)

    results: list[ValidationResult] = []
    engine = None
    profile: Profile | str | None = a.profile
    capacity: dict | None = None
    trace_spec = trace_spec_from_args(a)
    base = Path(a.out or "runs/validate")
    for load in loads:
        out = base if len(loads) == 1 else base / f"load-{load:g}"
        res = validate(
            trace,
            cfg if engine is None else None,
            engine=engine,
            scheduler=scheduler,
            enable_chunked_prefill=chunked,
            profile=profile,
            profile_grid=ProfileGrid.quick() if a.profile_grid == "quick" else ProfileGrid(),
            load=load,
            capacity=capacity,
            capacity_from=a.capacity_from,
            out_dir=out,
            png=png,
            seed=a.seed,
            time_limit=a.time_limit,
            target=a.target,
            progress=say,
            trace_spec=trace_spec,
        )
        results.append(res)
        engine = res.engine
        profile = profile or res.cost.profile  # profiled on the spot once, reused for the other loads
        capacity = res.errors["capacity"]
        print(f"== {res.trace.name}" + ("" if load is None else f" at {load:.0%} of capacity"))
        print(format_errors(res.errors))
        print(f"validation report: {res.out_dir}/index.html")
    return results


def main_recompute(a: argparse.Namespace) -> list[ValidationResult]:
    """`validate --recompute DIR...`: `recompute` each directory (in place, or under --out: the
    directory itself for one, OUT/<path below the directories' common parent> for several) and print
    each new error table next to the errors it replaced."""
    import os

    dirs = [Path(d) for d in a.recompute]
    slicing = {k: getattr(a, k, None) for k in TRACE_SLICE_KEYS if k != "trace"}
    slicing["format"] = None if slicing.get("format") == "auto" else slicing.get("format")
    slicing["skip_bad_rows"] = slicing.get("skip_bad_rows") or None
    common = Path(os.path.commonpath([str(d.resolve()) for d in dirs])) if len(dirs) > 1 else None
    png = {"auto": "auto", "yes": True, "no": False}[a.png]
    results = []
    for d in dirs:
        out = None
        if a.out:
            out = Path(a.out) if common is None else Path(a.out) / d.resolve().relative_to(common)
        res = recompute(
            d,
            a.profile,
            out_dir=out,
            trace_path=a.trace,
            slicing=slicing,
            png=png,
            target=a.target,
            progress=lambda m: print(m, file=sys.stderr, flush=True),
        )
        results.append(res)
        print(f"== {d} (recomputed)")
        print(format_errors(res.errors))
        print(f"validation report: {res.out_dir}/index.html")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.validate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_validate_args(parser)
    main_validate(parser.parse_args())
