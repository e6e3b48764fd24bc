"""Small steps with prefill tokens: eager execution against the step graphs (engine/step_graphs.py).

Each shape is one `ModelRunner.execute` call on synthetic sequences (the profiler's `build_batch`),
timed with the device synchronised before and after: 3 untimed calls, then the median of 15, once
with the runner's step graphs and once with them switched off (eager), on the same engine.

    python -m benchmarks.bench_step_graphs [--model llama-3.1-8b] [--step-graph-tokens N] [--out FILE]
    (default N: EngineConfig's; default FILE: benchmarks/results/step_graphs_<card>.json)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from backends.cost_model import BatchShape
from benchmarks.result_file import result_path, write_result
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.profiler import _Synth, build_batch, release
from policies.kv.block_manager import BlockManager

SHAPES = (
    BatchShape([(16, 0)]),
    BatchShape([(100, 0)], 8, 8 * 1000),
    BatchShape([(256, 2048)], 16, 16 * 1500),
    BatchShape([(500, 0)], 32, 32 * 800),
    BatchShape([(600, 0)], 64, 64 * 1000),
    BatchShape([(640, 4096)], 128, 128 * 600),
    BatchShape([(1000, 0)], 8, 8 * 800),
    BatchShape([(1400, 0)], 200, 200 * 700),  # past the largest bucket (1,024 tokens by default): eager
)


def time_step(runner, batch, reps: int = 15) -> float:
    for _ in range(3):
        runner.execute(batch)
    ts = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        runner.execute(batch)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--step-graph-tokens", type=int, default=EngineConfig.step_graph_tokens)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    cfg = EngineConfig(
        model=a.model,
        device="cuda",
        dtype="bfloat16",
        max_num_batched_tokens=2048,
        max_model_len=32768,
        step_graph_tokens=a.step_graph_tokens,
    )
    t0 = time.perf_counter()
    eng = LLMEngine(cfg)
    build_s = time.perf_counter() - t0
    r = eng.runner
    sg = r.step_graphs
    if sg is None:
        raise SystemExit("the engine captured no step graphs (needs CUDA, Triton attention, cuda_graphs)")
    kv = BlockManager(r.num_blocks, r.block_size, enable_prefix_caching=False)
    synth = _Synth(r.spec.vocab_size, 0)
    rows = []
    for shape in SHAPES:
        batch = build_batch(shape, kv, synth)
        try:
            res = {}
            for mode in ("graph", "eager"):
                r.step_graphs = sg if mode == "graph" else None
                res[mode] = time_step(r, batch)
        finally:
            r.step_graphs = sg
            release(batch, kv)
        row = {
            "prefill": [list(p) for p in shape.prefill],
            "num_decode": shape.num_decode,
            "decode_context": shape.decode_context,
            "bucket": sg.bucket(batch),
            "graph_ms": res["graph"] * 1e3,
            "eager_ms": res["eager"] * 1e3,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    card = torch.cuda.get_device_name()
    doc = {
        "card": card,
        "model": a.model,
        "dtype": "bfloat16",
        "step_graph_tokens": a.step_graph_tokens,
        "buckets": sg.buckets,
        "bucket_replay_ms": {str(k): v for k, v in sg.replay_ms.items()},  # padding inputs, at capture
        "engine_build_s": build_s,
        "steps": rows,
    }
    write_result(result_path("step_graphs", card, a.out), doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
