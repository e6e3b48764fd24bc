"""Does KV block placement matter? Steps on consecutive blocks against scattered ones.

A fresh pool hands out consecutive blocks (what the profiler's grid used to time); a pool that has
served many requests hands out blocks scattered over it (`BlockManager.shuffle_free_blocks` stands in
for that). Each shape is one `ModelRunner.execute` call on the same synthetic sequences built on
either pool: decode graphs of 32-256 sequences and one mixed eager step, four alternated rounds of
one untimed and five timed calls, medians (device synchronised around each call).

    python -m benchmarks.bench_kv_placement [--model llama-3.1-8b] [--out FILE]
    (default FILE: benchmarks/results/kv_placement_<card>.json)
"""

from __future__ import annotations

import argparse
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
    *(BatchShape([], b, b * c) for b in (32, 112, 160, 256) for c in (1000, 3000)),
    BatchShape([(1024, 2048)], 128, 128 * 1000),
)
POOLS = ("consecutive", "scattered")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_kv_placement needs a CUDA device")
    cfg = EngineConfig(
        model=a.model,
        device="cuda",
        dtype="bfloat16",
        max_num_batched_tokens=2048,
        max_num_seqs=256,
        max_model_len=32768,
    )
    r = LLMEngine(cfg).runner
    synth = _Synth(r.spec.vocab_size, 0)
    kv = {p: BlockManager(r.num_blocks, r.block_size, enable_prefix_caching=False) for p in POOLS}
    kv["scattered"].shuffle_free_blocks(0)
    times: dict[tuple[int, str], list[float]] = {(i, p): [] for i in range(len(SHAPES)) for p in POOLS}
    for rnd in range(a.rounds):
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
