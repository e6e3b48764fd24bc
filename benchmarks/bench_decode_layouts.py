"""Does a decode step's cost depend on how its contexts are spread, at the same total?

The profiler's decode samples used to give every sequence the same context; served batches mix
them. This times the decode CUDA graph of n sequences averaging 1024 or 2048 tokens, laid out three
ways with the same sum: uniform, the profiler's ramp (+-50%, `engine.profiler.spread_decode`) and
log-normal (sigma 0.8, seed 1; its longest context is recorded). Device seconds of the step queued
behind another of its shape (`engine.profiler._back_to_back`, as the profiler's `device_s`), median
of 5 fresh batches.

    python -m benchmarks.bench_decode_layouts [--model llama-3.1-8b] [--out FILE]
    (default FILE: benchmarks/results/decode_layouts_<card>.json)
"""

from __future__ import annotations

import json
import statistics

import numpy as np
import torch

from backends.cost_model import BatchShape
from benchmarks.bench_grid_timing import bench_args, served_engine
from benchmarks.result_file import result_path, write_result
from engine.profiler import _back_to_back, _Synth, build_batch, decode_contexts, release, spread_decode
from policies.kv.block_manager import BlockManager

SIZES = (48, 64, 80, 86, 96, 104, 112, 128, 160, 192, 224)
MEANS = (1024, 2048)
REPEATS = 5


def lognormal(rng: np.random.Generator, n: int, mean: int) -> list[int]:
    """n contexts >= 1 summing to n * mean, log-normally spread (the first takes the rounding)."""
    x = rng.lognormal(0.0, 0.8, n)
    x = np.maximum(1, np.round(x / x.mean() * mean)).astype(int)
    x[0] += n * mean - x.sum()
    if x.min() < 1:
        raise ValueError(f"log-normal layout of {n} x {mean}: a context fell below 1")
    return [int(v) for v in x]


def main(argv: list[str] | None = None) -> int:
    a = bench_args(__doc__, argv)
    r = served_engine(a.model).runner
    kv = BlockManager(r.num_blocks, r.block_size, enable_prefix_caching=False)
    synth = _Synth(r.spec.vocab_size, 0)
    rng = np.random.default_rng(1)

    def device_ms(ctxs: list[int]) -> float:
        shape = BatchShape([], len(ctxs), sum(ctxs), max(ctxs))
        ts = []
        for _ in range(REPEATS):
            batch = build_batch(shape, kv, synth, ctxs)
            try:
                r.execute(batch)  # warm: the same shape just ran, as in serving
                d = _back_to_back(r, batch)
            finally:
                release(batch, kv)
            if d is None:
                raise RuntimeError("no device time: this needs a CUDA device with decode graphs")
            ts.append(d)
        return 1e3 * statistics.median(ts)

    rows = []
    with torch.inference_mode():
        for n in SIZES:
            for mean in MEANS:
                layouts = {
                    "uniform": decode_contexts(BatchShape([], n, n * mean)),
                    "ramp": decode_contexts(spread_decode(n, mean, 0.5)),
                    "lognormal": lognormal(rng, n, mean),
                }
                row: dict = {"n": n, "mean": mean, "lognormal_max": max(layouts["lognormal"])}
                row.update({f"{k}_ms": round(device_ms(v), 3) for k, v in layouts.items()})
                rows.append(row)
                print(json.dumps(row), flush=True)
    card = torch.cuda.get_device_name()
    write_result(
        result_path("decode_layouts", card, a.out),
        {"card": card, "model": a.model, "repeats": REPEATS, "rows": rows},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
