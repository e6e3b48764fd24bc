"""Launch constants of the Triton paged-attention kernel: per-layer kernel time and serving runs (CUDA).

A step waits for the attention launch's longest program, so the key tile width and pipeline depth
(`TritonPagedAttention.launch_config`) matter most where one long context or a long cached prefix
sets the pace. Two measurements, both on Llama-3.1-8B heads (32 query, 8 KV heads of 128):

- `kernel`: each shape of `CASES` under each (BLOCK_N, num_warps, num_stages) of `CONFIGS`, the
  launch (plus the split-KV merge) replayed 10 times per CUDA graph, median of 30 replays, in us per
  call (= per layer); every output is checked against the first config's.
- `serving`: the engine (random bf16 weights, FCFS + chunked prefill 2048, prefix caching) replays
  an Azure conversation slice and a Mooncake slice with the narrow constants everywhere (64 keys,
  2 stages: the kernel's launch before the per-launch choice) and with `launch_config`, alternating,
  `--rounds` times, in one process.
- `mixed`: eager mixed steps (a chunk beside decodes) through the engine's runner, with the
  one-token sequences in a decode-tile launch of their own (`TritonPagedAttention.prepare`) and with
  every sequence in the chunks' launch (the plan before that), alternating, median of 9 per shape.

    python -m benchmarks.bench_attention --mode kernel --out benchmarks/results/attention_sweep_h200.json
    python -m benchmarks.bench_attention --mode serving --azure-trace A.csv --mooncake-trace M.jsonl \\
        --out benchmarks/results/attention_ab_h200.json
    python -m benchmarks.bench_attention --mode mixed --out benchmarks/results/attention_mixed_ab_h200.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import statistics
import time
from collections.abc import Iterator

import torch

from benchmarks.result_file import result_path, write_result

H, KVH, D, PAGE = 32, 8, 128, 16
CASES: dict[str, list[tuple[int, int]]] = {  # (new tokens, context after the step) per sequence
    "dec64x640": [(1, 640)] * 64,
    "dec128x1300": [(1, 1300)] * 128,
    "dec1x16k": [(1, 16384)],
    "dec8x4k": [(1, 4096)] * 8,
    "dec32_uneven": [(1, 4096)] + [(1, 256)] * 31,
    "pf512_c16k": [(512, 16384 + 512)],
    "pf2048": [(2048, 2048)],
    "mixed1800+200x1000": [(1, 1000)] * 200 + [(1800, 1800)],
}
CONFIGS: list[tuple[int, int, int]] = [
    (64, 4, 2), (64, 8, 2), (128, 4, 2), (128, 4, 3), (128, 8, 2), (128, 8, 3),
    (32, 2, 2), (64, 2, 4), (128, 2, 3),
]  # fmt: skip
_KEPT = ("ttft_ms", "tpot_ms", "e2e_ms", "output_throughput")


def _graph_us(fn, reps: int = 30, per_graph: int = 10) -> float:
    """Median microseconds of one `fn()` call, replayed from a CUDA graph (Triton's eager launch
    overhead would otherwise dominate a 30 us kernel)."""
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(per_graph):
            fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / per_graph)
    return statistics.median(times) * 1e3


def kernel_sweep() -> dict:
    from engine.attention import build_metadata
    from engine.triton_attention import TritonPagedAttention

    dev = torch.device("cuda")
    blocks = 1 + sum(-(-ctx // PAGE) for seqs in CASES.values() for _, ctx in seqs)
    kc = torch.randn(blocks, PAGE, KVH, D, device=dev, dtype=torch.bfloat16)
    vc = torch.randn(blocks, PAGE, KVH, D, device=dev, dtype=torch.bfloat16)
    be = TritonPagedAttention(dev, H, KVH)
    res: dict = {"card": torch.cuda.get_device_name(), "unit": "us per call (one layer)", "cases": {}}
    nxt = 1
    for name, seqs in CASES.items():
        tables = []
        for _, ctx in seqs:
            nb = -(-ctx // PAGE)
            tables.append(list(range(nxt, nxt + nb)))
            nxt += nb
        meta = build_metadata([n for n, _ in seqs], [c for _, c in seqs], tables, PAGE, dev)
        q = torch.randn(sum(n for n, _ in seqs), H, D, device=dev, dtype=torch.bfloat16)
        be.prepare(meta)
        ref = None
        rows: dict[str, float | str] = {}
        for cfg in CONFIGS:
            key = "/".join(map(str, cfg))
            try:
                out = be.attend(q, kc, vc, meta, D**-0.5, launch=cfg)
                if ref is None:
                    ref = out.float()
                err = (out.float() - ref).abs().max().item()
                if err > 0.05:
                    rows[key] = f"wrong output (max abs diff {err:.3g})"
                    continue
                call = functools.partial(be.attend, q, kc, vc, meta, D**-0.5, launch=cfg)
                rows[key] = round(_graph_us(call), 1)
            except Exception as e:  # e.g. a tile that does not fit in shared memory
                rows[key] = type(e).__name__
        chosen = be.launch_config(meta.is_decode_only, len(meta.extra["tile_seq"]) * KVH, torch.bfloat16)
        res["cases"][name] = {"splits": meta.num_splits, "launch_config": "/".join(map(str, chosen)),
                              "us": rows}  # fmt: skip
        line = " ".join(f"{k}:{v}" for k, v in rows.items())
        print(f"{name:20s} splits={meta.num_splits:2d} {line}", flush=True)
    return res


@contextlib.contextmanager
def _narrow_launches() -> Iterator[None]:
    """Every launch at 64-key tiles x 2 stages (the kernel's constants before `launch_config`)."""
    from engine.triton_attention import TritonPagedAttention

    chosen = TritonPagedAttention.launch_config
    TritonPagedAttention.launch_config = lambda self, decode, programs, dtype: (64, 4 if decode else 8, 2)
    try:
        yield
    finally:
        TritonPagedAttention.launch_config = chosen


@contextlib.contextmanager
def _one_launch_plan() -> Iterator[None]:
    """Steps with prefill tokens launch every sequence, one-token ones included, in prefill-sized
    tiles of one launch (the plan before decodes got a launch of their own)."""
    from engine.triton_attention import TritonPagedAttention

    two = TritonPagedAttention.prepare

    def one(self, meta) -> None:
        two(self, meta)
        if meta.is_decode_only:
            return
        bq = self.tile_rows(False)[1]
        plan = [(b, q0) for b, n in enumerate(meta.q_lens) for q0 in range(0, n, bq)]
        meta.extra["tile_seq"] = torch.tensor([b for b, _ in plan], dtype=torch.int32, device=self.device)
        meta.extra["tile_q"] = torch.tensor([q for _, q in plan], dtype=torch.int32, device=self.device)
        meta.extra["dtile_seq"] = meta.extra["dtile_seq"][:0]
        meta.extra["dtile_q"] = meta.extra["dtile_q"][:0]

    TritonPagedAttention.prepare = one
    try:
        yield
    finally:
        TritonPagedAttention.prepare = two


MIXED = [  # (chunks (new, cached), decodes, summed decode context, longest decode context or 0)
    ([(1984, 0)], 64, 64 * 512, 0), ([(512, 4096)], 224, 224 * 512, 0), ([(1824, 0)], 224, 224 * 512, 0),
    ([(1824, 4096)], 224, 224 * 512, 0), ([(1920, 0)], 128, 128 * 2048, 0),
    ([(1000, 1000)], 100, 100 * 1000, 0), ([(1500, 0)], 16, 16 * 1000, 0),
    ([(1200, 2048)], 150, 150 * 1100, 9000), ([(2048, 0)], 0, 0, 0), ([(1024, 8192)], 0, 0, 0),
]


def mixed_ab(repeats: int = 9) -> dict:
    from backends.cost_model import BatchShape
    from engine.config import EngineConfig
    from engine.llm_engine import LLMEngine
    from engine.profiler import _Synth, build_batch, release
    from policies.kv.block_manager import BlockManager

    eng = LLMEngine(EngineConfig(
        model="llama-3.1-8b", device="cuda", dtype="bfloat16", max_num_seqs=256,
        max_num_batched_tokens=2048, max_model_len=32768, enable_prefix_caching=False,
        gpu_memory_utilization=0.85,
    ))  # fmt: skip
    r = eng.runner
    kv = BlockManager(r.num_blocks, r.block_size, enable_prefix_caching=False)
    synth = _Synth(eng.spec.vocab_size, 0)
    plans = {"old": _one_launch_plan, "new": contextlib.nullcontext}
    out: dict = {"card": torch.cuda.get_device_name(), "unit": "ms per step (ModelRunner.execute)"}
    out["rows"] = []
    for chunks, nd, ctx, mx in MIXED:
        batch = build_batch(BatchShape(chunks, nd, ctx, mx), kv, synth)
        times: dict[str, list[float]] = {k: [] for k in plans}
        for i in range(2 + repeats):  # two untimed rounds (Triton compiles the new shapes)
            for name, plan in plans.items():
                with plan():
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    r.execute(batch)
                    torch.cuda.synchronize()
                if i >= 2:
                    times[name].append((time.perf_counter() - t0) * 1e3)
        release(batch, kv)
        old, new = statistics.median(times["old"]), statistics.median(times["new"])
        row = {"prefill": chunks, "num_decode": nd, "decode_context": ctx, "decode_max_context": mx}
        out["rows"].append(row | {"old_ms": old, "new_ms": new, "ratio": new / old})
        print(
            f"{str(chunks):16s} nd={nd:3d} ctx={ctx:7d} one launch {old:7.2f} ms, "
            f"two {new:7.2f} ms, x{new / old:.3f}",
            flush=True,
        )
    return out


def serving_ab(azure: str, mooncake: str, rounds: int) -> dict:
    from benchmarks.metrics import compute_metrics
    from engine.config import EngineConfig
    from engine.llm_engine import LLMEngine
    from traces.loaders import load_trace
    from traces.transforms import head, scale_to_rate

    traces = {
        "azure300@17": scale_to_rate(head(load_trace(azure), 300), 17.0),
        "mooncake30@1.1": scale_to_rate(head(load_trace(mooncake), 30), 1.1),
    }
    out: dict = {"card": torch.cuda.get_device_name(), "runs": {}}
    for rnd in range(rounds):
        for variant in ("narrow", "launch_config"):
            ctx = _narrow_launches() if variant == "narrow" else contextlib.nullcontext()
            with ctx:
                eng = LLMEngine(EngineConfig(
                    model="llama-3.1-8b", device="cuda", dtype="bfloat16", max_num_seqs=256,
                    max_num_batched_tokens=2048, max_model_len=32768, enable_prefix_caching=True,
                    gpu_memory_utilization=0.85,
                ))  # fmt: skip
                for tname, tr in traces.items():
                    eng.reset_kv()
                    t0 = time.perf_counter()
                    m = compute_metrics(eng.replay(tr, seed=0))
                    key = f"{tname} {variant} round {rnd}"
                    out["runs"][key] = {k: m[k] for k in _KEPT}
                    ttft, tpot = m["ttft_ms"], m["tpot_ms"]
                    print(
                        f"{key}: TTFT P50 {ttft['p50']:.1f} P90 {ttft['p90']:.1f} ms, "
                        f"TPOT P50 {tpot['p50']:.2f} P90 {tpot['p90']:.2f} ms, "
                        f"E2E P50 {m['e2e_ms']['p50']:.0f} ms ({time.perf_counter() - t0:.0f} s)",
                        flush=True,
                    )
                del eng
                gc.collect()
                torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("kernel", "serving", "mixed"), default="kernel")
    ap.add_argument("--azure-trace", default="../shared/traces/azure_llm_2023_conv.csv")
    ap.add_argument("--mooncake-trace", default="../shared/traces/mooncake_conversation.jsonl")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--out", default=None, help="result JSON (default: benchmarks/results/attention_{sweep,ab}_CARD.json)"
    )
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_attention needs a CUDA device")
    if args.mode == "kernel":
        res = kernel_sweep()
    elif args.mode == "mixed":
        res = mixed_ab()
    else:
        res = serving_ab(args.azure_trace, args.mooncake_trace, args.rounds)
    stem = {"kernel": "attention_sweep", "mixed": "attention_mixed_ab"}.get(args.mode, "attention_ab")
    write_result(result_path(stem, torch.cuda.get_device_name(), args.out), res)


if __name__ == "__main__":
    main()
