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
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from backends.calibrated import CalibratedCostModel
from backends.cost_model import BatchShape
from backends.profile import MODEL_SHAPE_FIELDS, Profile, ServingStep
from benchmarks.metrics import compute_metrics
from benchmarks.report import PNG_HELP, png_export_available

# Error rows, offline recomputation and the report live in their own modules; their public names are
# re-exported here (`__all__`), so `from benchmarks.validate import ...` keeps working for all of them.
from benchmarks.revalidate import (
    TRACE_SLICE_KEYS,
    rebuild_trace,
    recompute,
    replay_check,
    replay_shapes,
    trace_spec_from_args,
)
from benchmarks.validation_errors import (
    DEFAULT_TARGET,
    HEADLINE,
    LATENCY_KEYS,
    LATENCY_STATS,
    SCALAR_ROWS,
    error_rows,
    format_errors,
    iteration_errors,
    iteration_table,
    label_runs,
    per_request,
    rel_error,
    repeat_summary,
    summarize,
)
from benchmarks.validation_report import build_validation_figures, jsonable, write_validation_report
from benchmarks.validation_sensitivity import (
    add_what_ifs,
    capacity_burst,
    capacity_record,
    simulated_capacity,
)
from sim.config import ASYNC_MODES, SimConfig
from sim.results import RunResult
from sim.simulator import Simulation
from traces.schema import Trace

if TYPE_CHECKING:  # the engine needs torch; importing this module does not
    from engine.config import EngineConfig
    from engine.llm_engine import LLMEngine
    from engine.model_runner import ModelRunner
    from engine.profiler import ProfileGrid

__all__ = [
    "DEFAULT_TARGET",
    "HEADLINE",
    "LATENCY_KEYS",
    "LATENCY_STATS",
    "OVERRIDABLE",
    "POLICY_KEYS",
    "SCALAR_ROWS",
    "TRACE_SLICE_KEYS",
    "ValidationResult",
    "add_validate_args",
    "build_validation_figures",
    "error_rows",
    "format_errors",
    "iteration_errors",
    "iteration_table",
    "jsonable",
    "label_runs",
    "load_policy",
    "main_recompute",
    "main_validate",
    "measure_capacity",
    "mirror_sim_config",
    "mirror_table",
    "per_request",
    "profile_mismatches",
    "rebuild_trace",
    "recompute",
    "rel_error",
    "replay_check",
    "replay_shapes",
    "summarize",
    "trace_spec_from_args",
    "validate",
    "warm_up",
    "write_validation_report",
]

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
        "async_scheduling",
    }
)
_SHORT_DTYPE = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


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
        async_scheduling=engine.config.async_scheduling,
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
        "async_scheduling": [engine.config.async_scheduling, cfg.async_scheduling],
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
        ("step_graph_buckets", h.step_graph_buckets, tuple(r.step_graphs.buckets) if r.step_graphs else ()),
    ):
        if got != want:
            errors.append(f"{what}: profile {got!r}, engine {want!r}")
    for f in MODEL_SHAPE_FIELDS:
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


def warm_up(runner: ModelRunner, shapes: list[BatchShape] | None = None, rounds: int = 1) -> None:
    """Run every shape (default: a few of each kind) before a measured replay, so that Triton's JIT
    compilation of each kernel specialisation and cuBLAS's heuristics are not billed to the first
    requests. Given a profile, pass its grid shapes: they cover the specialisations serving meets, as
    the profiler's own warm-up did before it timed them. Uses its own block manager over the
    runner's pool: the engine's block manager (and prefix cache) stays untouched."""
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
    if shapes is None:
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
# Capacity (to run at a given fraction of it)


def measure_capacity(
    engine: LLMEngine, trace: Trace, cfg: SimConfig, cost: CalibratedCostModel, source: str, seed: int = 0
) -> dict:
    """Request throughput with every request of the slice arriving at once.

    source 'engine': served for real (then the engine's block manager is replaced by a fresh
    one, so the validation run starts from an empty prefix cache as the simulator does);
    'sim': simulated with the calibrated model (fast, but it is the model's own estimate).
    """
    if source == "sim":
        return simulated_capacity(trace, cfg, cost)
    if source != "engine":
        raise ValueError(f"capacity source must be 'engine' or 'sim', got {source!r}")
    res = engine.replay(capacity_burst(trace), seed=seed)
    engine.reset_kv()
    return capacity_record(res, "engine")


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
    repeats: int = 1,
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
    repeats: serve the slice this many times (KV reset in between); the first run is the one compared
        in detail, and errors["repeats"] gives every run's headline figures, their spread and the
        prediction against the median run (`repeat_summary`).
    """
    from engine.llm_engine import LLMEngine
    from engine.profiler import ProfileGrid, profile_runner
    from engine.telemetry import TelemetryLog, open_gpu_telemetry

    say = progress or (lambda _m: None)
    notes: list[str] = []
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats!r}")
    if png not in (True, False, "auto"):
        raise ValueError(f"png must be True, False or 'auto', got {png!r}")
    if png is True and out_dir is not None and not png_export_available():
        raise RuntimeError(PNG_HELP)  # before anything slow runs
    if engine is None:
        if engine_config is None:
            raise ValueError("validate needs an engine_config or an engine")
        engine = LLMEngine(engine_config, scheduler=scheduler, enable_chunked_prefill=enable_chunked_prefill)
    else:
        engine.reset_kv()  # a previous run's prefix cache must not serve this one
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
            engine=engine,
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
        warm_up(engine.runner, [x.shape for x in prof.samples])
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
    steps: list[ServingStep] = []
    reader, why_none = open_gpu_telemetry(engine.runner.device)
    with TelemetryLog(reader) as gpu_log:  # clocks and power cap: the run's own, beside the profile's
        t_replay = time.perf_counter()
        measured = engine.replay(trace, seed=seed, time_limit=time_limit, step_log=steps)
    if why_none:
        notes.append(why_none)
    say("simulating")
    predicted = Simulation(trace, cfg, cost=cost).run()
    label_runs(measured, predicted, cost)
    if len(steps) != len(measured.iterations["start"]):
        raise RuntimeError(
            f"engine logged {len(measured.iterations['start'])} iterations but {len(steps)} steps "
            "were executed"
        )
    shapes = [t.shape for t in steps]
    execute_s = np.asarray([t.execute_s for t in steps])
    launch_s = np.asarray([np.nan if t.launch_s is None else t.launch_s for t in steps], dtype=np.float64)
    table = iteration_table(
        measured, shapes, execute_s, cost, async_scheduling=cfg.async_scheduling, launch_s=launch_s
    )
    notes.append(replay_check(measured, trace, cfg, shapes))
    mirror = mirror_table(engine, cfg)
    bad = [k for k, (a, b) in mirror.items() if a != b]
    if bad:
        raise AssertionError(f"simulated replica does not mirror the engine in: {', '.join(bad)}")
    errors = summarize(measured, predicted, table, cost, mirror, target, notes, capacity)
    add_what_ifs(errors, trace, cfg, cost, measured.metrics)
    if reader is not None:
        errors["gpu"] = gpu_log.record(t_replay)
    if repeats > 1:
        runs = [measured.metrics]
        for i in range(1, repeats):
            say(f"engine replay {i + 1} of {repeats}")
            engine.reset_kv()
            runs.append(compute_metrics(engine.replay(trace, seed=seed, time_limit=time_limit)))
        errors["repeats"] = repeat_summary(runs, predicted.metrics, target)
    errors["trace_spec"] = trace_spec
    errors["time_limit"] = time_limit
    errors["seed"] = seed
    result = ValidationResult(measured, predicted, cfg, cost, errors, table, trace, engine, notes=notes)
    if out_dir is not None:
        write_validation_report(result, out_dir, png=png)
        say(f"report: {result.out_dir}/index.html")
    return result


# ------------------------------------------------------------------------------------------------
# Command line (`sagellm validate`, or `python -m benchmarks.validate`)


def add_validate_args(p: argparse.ArgumentParser) -> None:
    """Trace-slicing flags (shared with `sagellm simulate`) plus the engine, policy and report flags."""
    from engine.profiler import add_decode_spread_arg
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
    add_decode_spread_arg(p)
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
    p.add_argument(
        "--async-scheduling",
        nargs="?",
        const="graphs",
        choices=ASYNC_MODES,
        help="engine and simulator schedule each step while the previous one runs: 'graphs' (the "
        "default when given: CUDA-graph steps only) or 'all'",
    )
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
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="serve each slice this many times and report the measured spread (the first run is compared)",
    )
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
            profile_grid=ProfileGrid.make(a.profile_grid == "quick", a.decode_spread),
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
            repeats=a.repeats,
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
