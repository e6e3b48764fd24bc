"""Does KV block placement matter? Steps on consecutive blocks against scattered ones.

A fresh pool hands out consecutive blocks (what the profiler's grid used to time); a pool that has
served many requests hands out blocks scattered over it (`BlockManager.shuffle_free_blocks` stands in
for that). The engine is the validation runs' configuration (`bench_grid_timing.served_engine`). Each
shape is one `ModelRunner.execute` call on the same synthetic sequences built on either pool: decode
graphs of 32-256 sequences and one mixed eager step, four alternated rounds of one untimed and
five timed calls, medians (device synchronised around each call).

    python -m benchmarks.bench_kv_placement [--model llama-3.1-8b] [--out FILE]
    (default FILE: benchmarks/results/kv_placement_<card>.json)
"""

from __future__ import annotations

import statistics
import time

import torch

from backends.cost_model import BatchShape
from benchmarks.bench_grid_timing import bench_args, served_engine
from benchmarks.result_file import result_path, write_result
from engine.profiler import _Synth, build_batch, release
from policies.kv.block_manager import BlockManager

SHAPES = (
    *(BatchShape([], b, b * c) for b in (32, 112, 160, 256) for c in (1000, 3000)),
    BatchShape([(1024, 2048)], 128, 128 * 1000),
)
POOLS = ("consecutive", "scattered")
ROUNDS = 4


def main(argv: list[str] | None = None) -> int:
    a = bench_args(__doc__, argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_kv_placement needs a CUDA device")
    r = served_engine(a.model).runner
    synth = _Synth(r.spec.vocab_size, 0)
    kv = {p: BlockManager(r.num_blocks, r.block_size, enable_prefix_caching=False) for p in POOLS}
    kv["scattered"].shuffle_free_blocks(0)
    times: dict[tuple[int, str], list[float]] = {(i, p): [] for i in range(len(SHAPES)) for p in POOLS}
    for rnd in range(ROUNDS):
        for i, shape in enumerate(SHAPES):
            for pool in POOLS if rnd % 2 == 0 else POOLS[::-1]:
                batch = build_batch(shape, kv[pool], synth)
                try:
                    r.execute(batch)
                    for _ in range(5):
                        torch.cuda.synchronize()
                        t = time.perf_counter()
                        r.execute(batch)
                        times[i, pool].append(time.perf_counter() - t)
                finally:
                    release(batch, kv[pool])
    rows = []
    for i, shape in enumerate(SHAPES):
        ms = {p: statistics.median(times[i, p]) * 1e3 for p in POOLS}
        row = {
            "prefill": [list(p) for p in shape.prefill],
            "num_decode": shape.num_decode,
            "decode_context": shape.decode_context,
            "consecutive_ms": ms["consecutive"],
            "scattered_ms": ms["scattered"],
            "ratio": ms["scattered"] / ms["consecutive"],
        }
        rows.append(row)
        print(
            f"{shape.num_decode:3d} decodes of {shape.decode_context // shape.num_decode:5d} tokens, prefill "
            f"{shape.prefill}: {ms['consecutive']:7.3f} -> {ms['scattered']:7.3f} ms ({row['ratio']:.3f}x)",
            flush=True,
        )
    card = torch.cuda.get_device_name()
    doc = {"card": card, "model": a.model, "dtype": "bfloat16", "num_kv_blocks": r.num_blocks, "steps": rows}
    write_result(result_path("kv_placement", card, a.out), doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
