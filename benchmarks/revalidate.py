"""Recomputing a validation against its measured run, without a GPU (`validate --recompute DIR`).

A validation report directory keeps the engine's measured run; this module re-predicts it with the
current cost model: it rebuilds the very trace slice the engine served (from the slicing recorded in
errors.json, or inferred from the measured run and checked against it request by request), simulates
it with the recorded mirrored configuration, rebuilds every measured iteration's shape by replaying
the measured iteration boundaries through the same `ReplicaCore` the engine ran (checked against the
engine's iteration rows), and rewrites the report with the previous headline errors kept next to the
new ones. That is how a cost-model change is judged against runs already measured; the measured runs
are the test set, never fitted to.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from backends.calibrated import CalibratedCostModel
from backends.cost_model import BatchShape
from benchmarks.validation_errors import (
    iteration_table,
    label_runs,
    repeat_summary,
    repeated_runs,
    summarize,
)
from benchmarks.validation_report import write_validation_report
from benchmarks.validation_sensitivity import add_what_ifs
from sim.config import SimConfig
from sim.results import RunResult
from sim.simulator import Simulation
from traces.schema import Trace

if TYPE_CHECKING:
    from backends.profile import Profile
    from benchmarks.validate import ValidationResult

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


def replay_check(measured: RunResult, trace: Trace, cfg: SimConfig, recorded: list[BatchShape]) -> str:
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


def _read_column(path: Path, name: str, optional: bool = False) -> np.ndarray | None:
    """A numeric column of a CSV file; a missing one is an error, or None when `optional`."""
    with open(path, newline="") as f:
        rows = csv.DictReader(f)
        if rows.fieldnames is None or name not in rows.fieldnames:
            if optional and rows.fieldnames is not None:
                return None
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
    label_runs(measured, predicted, cost)
    say(f"{run}: rebuilding {len(measured.iterations['start'])} iteration shapes")
    shapes = replay_shapes(measured, trace, cfg)
    execute_s = _read_column(run / "iterations.csv", "execute_s")
    launch_s = _read_column(run / "iterations.csv", "launch_s", optional=True)
    table = iteration_table(
        measured, shapes, execute_s, cost, async_scheduling=cfg.async_scheduling, launch_s=launch_s
    )
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
    add_what_ifs(errors, trace, cfg, cost, measured.metrics)
    if old.get("repeats"):
        errors["repeats"] = repeat_summary(repeated_runs(old["repeats"]), predicted.metrics, errors["target"])
    if old.get("gpu"):
        errors["gpu"] = old["gpu"]  # what the card did during the measured run
    errors["trace_spec"] = spec
    errors["time_limit"] = old.get("time_limit", cfg.horizon)
    errors["seed"] = old.get("seed", cfg.seed)
    previous = {k: v for k, v in old.items() if k not in ("previous", "original")}
    errors["previous"] = _previous_summary(previous)
    errors["original"] = old.get("original") or errors["previous"]
    # Imported here: benchmarks.validate imports this module (for its CLI and re-exports).
    from benchmarks.validate import ValidationResult

    result = ValidationResult(measured, predicted, cfg, cost, errors, table, trace, None, notes=notes)
    out = Path(out_dir) if out_dir is not None else run
    same = out.resolve() == run.resolve()
    keep_profile = same and profile is None  # fitted to the run's own profile.json (maybe a link)
    write_validation_report(result, out, png=png, write_measured=not same, write_profile=not keep_profile)
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
