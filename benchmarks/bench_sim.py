"""Simulator speed: wall time, simulated requests per second and peak memory.

Cases (each runs in a fresh subprocess so that its peak RSS is its own):
- `vidur`: Llama-2-70B on A100 80GB, TP 2 x PP 2, 4 replicas behind least-outstanding-work
  routing, chunked prefill 512, batch cap 128, lengths resampled from the Azure 2023
  conversation trace (prompt + output capped at 4096), Poisson arrivals at 4 req/s;
  per-request results written, no iteration log, no plots. (The configuration of Vidur's
  published speed figure, so the numbers are comparable.)
- `vidur-tp4`: the same with TP 4 x PP 1 (one stage), for comparison.
- `mooncake`: the full Mooncake conversation trace on one Llama-3.1-8B H100 replica, prefix
  caching on.
- `mooncake-async`: the same with async scheduling (`SimConfig.async_scheduling="graphs"`), which
  the simulator steps one iteration at a time (no decode-run jumps).

    python -m benchmarks.bench_sim                     # all cases, 10k/100k/1M for vidur
    python -m benchmarks.bench_sim --case vidur --n 10000
    python -m benchmarks.bench_sim --json benchmarks/results/sim_speed.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.result_file import write_result

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "traces"


def _azure_lengths():
    from traces.loaders import default_trace_path, load_trace

    p = SHARED / "azure_llm_2023_conv.csv"
    return load_trace(p if p.is_file() else default_trace_path())


def run_case(case: str, n: int) -> dict:
    from sim.config import SimConfig
    from sim.simulator import simulate
    from traces.generators import EmpiricalPairs, synthetic_trace
    from traces.loaders import load_trace
    from traces.transforms import cap_lengths

    if case in ("vidur", "vidur-tp4"):
        src = cap_lengths(_azure_lengths(), max_total=4096)
        pairs = EmpiricalPairs.from_trace(src)
        trace = synthetic_trace(n, 4.0, pairs, seed=0, name=f"azure-conv-poisson4-{n}")
        cfg = SimConfig(
            model="llama-2-70b", accelerator="a100-80gb", num_replicas=4,
            tp=2 if case == "vidur" else 4, pp=2 if case == "vidur" else 1,
            router="least-work", max_num_batched_tokens=512, max_num_seqs=128,
            enable_prefix_caching=False, record_iterations=False,
        )
    elif case in ("mooncake", "mooncake-async"):
        p = SHARED / "mooncake_conversation.jsonl"
        if not p.is_file():
            return {"case": case, "skipped": f"{p} not found"}
        trace = load_trace(p)
        n = len(trace)
        cfg = SimConfig(model="llama-3.1-8b", accelerator="h100-sxm", enable_prefix_caching=True,
                        record_iterations=False,
                        async_scheduling="graphs" if case == "mooncake-async" else "off")
    else:
        raise SystemExit(f"unknown case {case!r}")
    t0 = time.perf_counter()
    result = simulate(trace, cfg)
    sim_wall = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        t1 = time.perf_counter()
        result.write(Path(d) / "run")
        write_wall = time.perf_counter() - t1
    finished = int((result.requests["status"] == "finished").sum())
    return {
        "case": case,
        "requests": n,
        "finished": finished,
        "iterations": result.meta["iterations"],
        "sim_wall_s": round(sim_wall, 3),
        "write_wall_s": round(write_wall, 3),
        "total_wall_s": round(sim_wall + write_wall, 3),
        "sim_requests_per_s": round(n / sim_wall, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "simulated_seconds": round(result.meta["sim_end"], 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=["vidur", "vidur-tp4", "mooncake", "mooncake-async"])
    ap.add_argument("--n", type=int, help="requests (vidur case)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument("--inline", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inline:
        print(json.dumps(run_case(args.case, args.n or 0)))
        return 0
    everything = [
        ("vidur", 10_000), ("vidur", 100_000), ("vidur", 1_000_000), ("mooncake", None),
        ("mooncake-async", None),
    ]
    plan = [(args.case, args.n)] if args.case else everything
    rows = []
    for case, n in plan:
        if case.startswith("vidur") and not n:
            n = 10_000
        cmd = [sys.executable, "-m", "benchmarks.bench_sim", "--inline", "--case", case]
        cmd += ["--n", str(n)] if n else []
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return out.returncode
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row))
    if args.json:
        doc = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                          f"{platform.python_implementation()} {platform.python_version()}", "runs": rows}
        write_result(Path(args.json), doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
