"""Does the profile grid's way of timing a step change what it measures?

The profiler (engine/profiler.py) times each shape once per round, right after building its batch:
the host spends milliseconds on that with the device idle. In serving, a step follows the previous
one within tens of microseconds. This times the same `ModelRunner.execute` call four ways, median of
7 rounds with the shapes interleaved as the grid does:

- grid: build the batch, synchronise, time one call, release (the profiler's way);
- warm: as grid, with one untimed call of the same batch right before the timed one;
- back_to_back: 8 calls in a row, each timed, median of the last 7;
- after_idle: as grid, with 20 ms of host sleep (device idle) before the timed call.

Each mode also reports the host seconds of the timed call's launch (`ModelRunner.launch`: staging
and the graph replay's or Python's kernel launches), to tell host time from device time: on two
H200 hosts the grid's launch of a batch-1 decode graph took 0.17-0.39 ms, while the serving loop's
steps ran within 0.1 ms of their device time.

    python -m benchmarks.bench_grid_timing [--model llama-3.1-8b] [--out FILE]
    (default FILE: benchmarks/results/grid_timing_<card>.json)
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
from engine.profiler import _Synth, _time, build_batch, release
from policies.kv.block_manager import BlockManager

SHAPES = tuple(
    BatchShape([], n, n * c, c)
    for n, c in ((1, 512), (6, 1024), (12, 1024), (24, 1024), (40, 1024), (64, 1024))
)
SHAPES += (BatchShape([(1024, 0)], 16, 16 * 1024, 1024), BatchShape([(200, 0)], 8, 8 * 1024, 1024))
ROUNDS = 7


def bench_args(doc: str, argv: list[str] | None) -> argparse.Namespace:
    """--model and --out, as the step-timing benchmarks take them."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--out", default=None)
    return ap.parse_args(argv)


def served_engine(model: str) -> LLMEngine:
    """The engine in the configuration the README's H200 validation runs serve with, on CUDA."""
    return LLMEngine(
        EngineConfig(
            model=model,
            device="cuda",
            dtype="bfloat16",
            max_num_seqs=256,
            max_num_batched_tokens=2048,
            max_model_len=32768,
            gpu_memory_utilization=0.85,
        )  # fmt: skip
    )


def main(argv: list[str] | None = None) -> int:
    a = bench_args(__doc__, argv)
    r = served_engine(a.model).runner
    kv = BlockManager(r.num_blocks, r.block_size, enable_prefix_caching=False)
    synth = _Synth(r.spec.vocab_size, 0)
    sync = torch.cuda.synchronize

    modes = ("grid", "warm", "back_to_back", "after_idle")
    ts: dict[str, list[list[float]]] = {m: [[] for _ in SHAPES] for m in modes}
    launch: dict[str, list[list[float]]] = {m: [[] for _ in SHAPES] for m in modes}

    def timed(batch, mode: str, i: int, warmup: int = 0, repeats: int = 1) -> None:
        # the profiler's own timer: synchronise, time the call, synchronise
        def call() -> None:
            r.execute(batch)
            launch[mode][i].append(r.last_launch_seconds)

        ts[mode][i] += _time(call, sync, warmup, repeats)
        del launch[mode][i][: len(launch[mode][i]) - len(ts[mode][i])]  # the warm-up calls'

    for _ in range(ROUNDS):
        for mode in ("grid", "warm", "after_idle"):
            for i, shape in enumerate(SHAPES):
                batch = build_batch(shape, kv, synth)
                try:
                    if mode == "warm":
                        r.execute(batch)
                    elif mode == "after_idle":
                        sync()
                        time.sleep(0.02)
                    timed(batch, mode, i)
                finally:
                    release(batch, kv)
    for i, shape in enumerate(SHAPES):
        batch = build_batch(shape, kv, synth)
        try:
            timed(batch, "back_to_back", i, warmup=1, repeats=ROUNDS)
        finally:
            release(batch, kv)
    rows = []
    for i, shape in enumerate(SHAPES):
        row: dict = {
            "prefill": [list(p) for p in shape.prefill],
            "num_decode": shape.num_decode,
            "decode_context": shape.decode_context,
        }
        row.update({f"{m}_ms": 1e3 * statistics.median(ts[m][i]) for m in modes})
        row.update({f"{m}_launch_ms": 1e3 * statistics.median(launch[m][i]) for m in modes})
        rows.append(row)
        print(json.dumps(row), flush=True)
    card = torch.cuda.get_device_name()
    write_result(
        result_path("grid_timing", card, a.out),
        {"card": card, "model": a.model, "rounds": ROUNDS, "steps": rows},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
