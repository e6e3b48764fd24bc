"""`sagellm`: the workbench's command line: simulate, replay (real engine), trace, report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sim.config import ASYNC_MODES, SimConfig


def _load_trace(args: argparse.Namespace):
    from traces import transforms
    from traces.loaders import default_trace_path, load_trace

    path = args.trace or default_trace_path()
    trace = load_trace(path, format=args.format, skip_bad_rows=args.skip_bad_rows)
    skipped = trace.meta.get("skipped_rows")
    if skipped:
        print(f"{path}: skipped {skipped['count'] if isinstance(skipped, dict) else skipped} bad row(s)",
              file=sys.stderr)
    if args.window:
        try:
            a, b = (float(x) for x in args.window.split(":"))
        except ValueError:
            raise SystemExit(f"--window: expected START:END in seconds, got {args.window!r}") from None
        trace = transforms.time_window(trace, a, b)
    if args.max_requests:
        trace = transforms.head(trace, args.max_requests)
    if args.cap_total or args.cap_prompt or args.cap_output:
        trace = transforms.cap_lengths(
            trace, max_prompt=args.cap_prompt, max_output=args.cap_output, max_total=args.cap_total
        )
    if args.rate:
        trace = transforms.scale_to_rate(trace, args.rate)
    if len(trace) == 0:
        raise SystemExit(f"{path}: no requests left after slicing")
    return trace


def _add_trace_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", help="trace file (default: the bundled Azure 2023 conversation slice)")
    p.add_argument("--format", default="auto", help="azure|mooncake|burstgpt|csv|jsonl|auto")
    p.add_argument("--skip-bad-rows", action="store_true", help="skip malformed rows and report how many")
    p.add_argument("--window", help="keep arrivals in START:END seconds")
    p.add_argument("--max-requests", type=int, help="keep the first N requests")
    p.add_argument("--rate", type=float, help="time-scale arrivals to this mean rate (req/s)")
    p.add_argument("--cap-prompt", type=int)
    p.add_argument("--cap-output", type=int)
    p.add_argument("--cap-total", type=int, help="cap prompt+output tokens per request")


def _slo(args: argparse.Namespace):
    from benchmarks.metrics import SLO

    ms = [args.slo_ttft_ms, args.slo_tpot_ms, args.slo_e2e_ms]
    if all(v is None for v in ms):
        return None
    return SLO(*(None if v is None else v / 1000.0 for v in ms))


def _add_slo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--slo-ttft-ms", type=float, help="goodput SLO on TTFT (ms)")
    p.add_argument("--slo-tpot-ms", type=float, help="goodput SLO on TPOT (ms)")
    p.add_argument("--slo-e2e-ms", type=float, help="goodput SLO on E2E latency (ms)")


_ASYNC_HELP = (
    "schedule and launch each step while the previous one runs: 'graphs' (the default when given: "
    "CUDA-graph steps only) or 'all' (greedy requests only)"
)
_CONFIG_FLAGS = {
    "model": str, "accelerator": str, "cost_model": str, "profile": str, "dtype": str, "tp": int, "pp": int,
    "num_replicas": int, "router": str, "scheduler": str, "max_num_batched_tokens": int,
    "max_num_seqs": int, "block_size": int, "num_kv_blocks": int, "gpu_memory_utilization": float,
    "max_model_len": int, "seed": int, "horizon": float,
}


def _config(args: argparse.Namespace) -> SimConfig:
    cfg = SimConfig.load(args.config) if args.config else SimConfig()
    d = cfg.to_dict()
    for k in _CONFIG_FLAGS:
        v = getattr(args, k)
        if v is not None:
            d[k] = v
    if args.no_prefix_caching:
        d["enable_prefix_caching"] = False
    if args.no_chunked_prefill:
        d["enable_chunked_prefill"] = False
    if args.no_jump:
        d["jump"] = False
    if args.async_scheduling:
        d["async_scheduling"] = args.async_scheduling
    if args.no_iterations:
        d["record_iterations"] = False
    return SimConfig.from_dict(d, "command line")


def cmd_simulate(args: argparse.Namespace) -> int:
    from sim.simulator import simulate

    cfg = _config(args)
    trace = _load_trace(args)
    result = simulate(trace, cfg)
    wall = result.meta["wall_seconds"]
    return _save_run(result, args, f"simulated {len(trace)} requests in {wall:.2f} s wall "
                                   f"({len(trace) / max(wall, 1e-9):,.0f} req/s)")


def _save_run(result, args: argparse.Namespace, what: str) -> int:
    """Name the run, compute its metrics, write its files (and report), print a summary."""
    from benchmarks.metrics import compute_metrics, format_metrics

    result.meta["name"] = args.name or Path(args.out).name
    result.metrics = compute_metrics(result, _slo(args))
    out = result.write(args.out)
    print(format_metrics(result.metrics))
    print(f"{what}; results in {out}/")
    if args.report:
        from benchmarks.report import write_report

        print(f"report: {write_report([result], args.report, png_dir=args.png)}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Serve a trace on the real engine; the result files match the simulator's."""
    from engine.config import EngineConfig
    from engine.llm_engine import LLMEngine

    trace = _load_trace(args)
    cfg = EngineConfig(
        model=args.model,
        dtype=args.dtype,
        device=args.device,
        block_size=args.block_size,
        gpu_memory_utilization=args.gpu_memory_utilization,
        num_kv_blocks=args.num_kv_blocks,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_num_seqs=args.max_num_seqs,
        max_model_len=args.max_model_len,
        enable_prefix_caching=not args.no_prefix_caching,
        cuda_graphs=not args.no_cuda_graphs,
        async_scheduling=args.async_scheduling or "off",
        seed=args.seed,
    )
    engine = LLMEngine(cfg, scheduler=args.scheduler, enable_chunked_prefill=not args.no_chunked_prefill)
    result = engine.replay(trace, seed=args.seed, time_limit=args.horizon)
    return _save_run(result, args, f"served {len(trace)} requests on {result.meta['device']} "
                                   f"in {result.meta['wall_seconds']:.1f} s")


def cmd_trace_stats(args: argparse.Namespace) -> int:
    from traces.loaders import load_trace
    from traces.stats import format_stats, plot_stats, trace_stats

    trace = load_trace(args.file, format=args.format, skip_bad_rows=args.skip_bad_rows)
    print(format_stats(trace_stats(trace)))
    if args.plot:
        print(f"plot: {plot_stats(trace, args.plot)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from benchmarks.report import main_report

    print(f"report: {main_report(args.runs, args.out, args.png, _slo(args))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sagellm", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="replay a trace in the simulator")
    _add_trace_args(s)
    s.add_argument("--config", help="JSON file of SimConfig fields (flags override it)")
    for k, t in _CONFIG_FLAGS.items():
        s.add_argument("--" + k.replace("_", "-"), type=t, default=None)
    s.add_argument("--no-prefix-caching", action="store_true")
    s.add_argument("--no-chunked-prefill", action="store_true")
    s.add_argument("--no-jump", action="store_true", help="step every iteration (same timeline, slower)")
    s.add_argument("--async-scheduling", nargs="?", const="graphs", choices=ASYNC_MODES, help=_ASYNC_HELP)
    s.add_argument("--no-iterations", action="store_true", help="do not record per-iteration rows")
    s.add_argument("--out", default="runs/sim", help="run directory to write")
    s.add_argument("--name", help="run name in reports (default: the --out folder name)")
    s.add_argument("--report", help="also write an HTML report here")
    s.add_argument("--png", help="with --report: also export PNGs into this folder")
    _add_slo_args(s)
    s.set_defaults(func=cmd_simulate)

    e = sub.add_parser("replay", help="serve a trace on the real engine (same result files as simulate)")
    e.add_argument("--engine", action="store_true", help="(the default and only executor: the real engine)")
    _add_trace_args(e)
    e.add_argument("--model", default="llama-3.1-8b",
                   help="Hugging Face model directory, .gguf file, or catalog name (random weights)")
    e.add_argument("--device", default="cuda", help="cuda | cpu | npu")
    e.add_argument("--dtype", default="auto")
    e.add_argument("--scheduler", default="fcfs")
    e.add_argument("--block-size", type=int, default=16)
    e.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    e.add_argument("--num-kv-blocks", type=int, help="explicit KV pool size (default: from free memory)")
    e.add_argument("--max-num-batched-tokens", type=int, default=2048)
    e.add_argument("--max-num-seqs", type=int, default=256)
    e.add_argument("--max-model-len", type=int)
    e.add_argument("--no-prefix-caching", action="store_true")
    e.add_argument("--no-chunked-prefill", action="store_true")
    e.add_argument("--no-cuda-graphs", action="store_true")
    e.add_argument("--async-scheduling", nargs="?", const="graphs", choices=ASYNC_MODES, help=_ASYNC_HELP)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--horizon", type=float, help="stop serving after this many seconds of trace time")
    e.add_argument("--out", default="runs/engine")
    e.add_argument("--name")
    e.add_argument("--report")
    e.add_argument("--png")
    _add_slo_args(e)
    e.set_defaults(func=cmd_replay)

    t = sub.add_parser("trace", help="trace tools")
    tsub = t.add_subparsers(dest="trace_command", required=True)
    ts = tsub.add_parser("stats", help="arrival rate, length percentiles, prefix sharing")
    ts.add_argument("file")
    ts.add_argument("--format", default="auto")
    ts.add_argument("--skip-bad-rows", action="store_true")
    ts.add_argument("--plot", help="write an HTML plot of the trace here")
    ts.set_defaults(func=cmd_trace_stats)

    from benchmarks.validate import add_validate_args, main_validate
    from engine.profiler import add_profile_args, main_profile

    pf = sub.add_parser("profile", help="time the real engine over a grid of iteration shapes")
    add_profile_args(pf)
    pf.set_defaults(func=lambda a: (main_profile(a), 0)[1])
    va = sub.add_parser("validate", help="replay a trace on the engine and in the simulator; compare")
    add_validate_args(va)
    va.set_defaults(func=lambda a: (main_validate(a), 0)[1])

    r = sub.add_parser("report", help="HTML report comparing one or more run directories")
    r.add_argument("runs", nargs="+")
    r.add_argument("-o", "--out", default="report.html")
    r.add_argument("--png", help="also export PNGs into this folder")
    _add_slo_args(r)
    r.set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"sagellm: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
