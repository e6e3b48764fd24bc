"""Engine speed on one GPU against the hardware's own ceilings, measured in the same run.

Cases (random bf16 weights of a catalog architecture, Llama-3.1-8B by default):
- decode at batch 1 (CUDA graphs), against the HBM roofline: measured copy bandwidth divided by
  the bytes one decode step must read (all weights + the KV of the context);
- offline throughput at batch 64 and 256 with 512-token prompts and 128 output tokens
  (the engine's FCFS scheduler with chunked prefill);
- prefill of 8 x 2048 tokens in one step, in TFLOP/s, against a measured 8192^3 bf16 matmul;
- the greedy pick (argmax over the vocabulary) at 1, 64 and 256 rows: torch.argmax against the
  engine's kernel, in CUDA graphs;
- the same decode and batch-64 cases through `transformers` `generate`, when it is installed;
- the engine's own loop (`generate`: scheduler and bookkeeping included) in each async scheduling
  mode (EngineConfig.async_scheduling: off, graphs, all), back to back in the same run: batch-1
  decode, batch 64 and the Azure requests.

Usage: python -m benchmarks.bench_engine [--model llama-3.1-8b] [--out benchmarks/results/engine_<card>.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from benchmarks.result_file import result_path, write_result
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.model_spec import DecoderSpec
from engine.sampling import SamplingParams
from policies.kv.block_manager import BlockManager
from policies.scheduling.batch import ScheduledBatch
from policies.sequence import Sequence
from sim.config import ASYNC_MODES
from traces.schema import Request


def _sync() -> None:
    torch.cuda.synchronize()


def measure_copy_bandwidth(nbytes: int = 2 << 30, reps: int = 10) -> float:
    """Bytes/s of a device-to-device copy (read + write counted), the practical HBM ceiling."""
    a = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda")
    b = torch.empty_like(a)
    b.copy_(a)
    _sync()
    t = time.perf_counter()
    for _ in range(reps):
        b.copy_(a)
    _sync()
    dt = (time.perf_counter() - t) / reps
    del a, b
    return 2 * nbytes / dt


def measure_matmul_tflops(n: int = 8192, reps: int = 20) -> float:
    a = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    for _ in range(3):
        a @ b
    _sync()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync()
    dt = (time.perf_counter() - t) / reps
    return 2 * n**3 / dt / 1e12


def greedy_pick_us(vocab: int, rows: tuple[int, ...] = (1, 64, 256), calls: int = 10) -> dict:
    """Device time of the greedy pick over [rows, vocab] bf16 logits: torch.argmax against the
    engine's two-stage kernel (engine/triton_argmax.py), each as `calls` back-to-back calls in one
    CUDA graph (a graph of one few-microsecond kernel would time the graph launch)."""
    from engine.cuda_graphs import replay_ms
    from engine.sampling import greedy_ids

    def graph_us(fn) -> float:
        fn()
        _sync()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(calls):
                fn()
        return 1e3 * replay_ms(g, 50) / calls

    out: dict = {}
    for n in rows:
        x = torch.randn((n, vocab), device="cuda").to(torch.bfloat16)
        ids = torch.empty(n, dtype=torch.int64, device="cuda")
        out[str(n)] = {
            "torch_argmax_us": graph_us(lambda x=x, ids=ids: torch.argmax(x, dim=-1, out=ids)),
            "engine_us": graph_us(lambda x=x, ids=ids: greedy_ids(x, ids)),
            "equal": bool(torch.equal(greedy_ids(x, ids).clone(), torch.argmax(x, dim=-1))),
        }
    return out


def _prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, length), generator=g).tolist()


def decode_batch1(eng: LLMEngine, prompt_len: int = 512, steps: int = 256) -> dict:
    """Time pure decode steps of one sequence (graph replay + sampling + Python per step)."""
    runner = eng.runner
    kv = BlockManager(runner.num_blocks, runner.block_size, enable_prefix_caching=False)
    prompt = _prompts(1, prompt_len, eng.spec.vocab_size, 0)[0]
    seq = Sequence(Request(id=0, arrival=0.0, prompt_len=prompt_len, output_len=steps + 1), token_ids=prompt)

    def step(n: int) -> None:
        assert kv.allocate(seq, n)
        tok = runner.execute(ScheduledBatch([seq], [n]))
        seq.num_computed_tokens += n
        seq.token_ids.append(tok[0])
        seq.num_output_tokens += 1

    step(prompt_len)
    for _ in range(8):  # warm-up
        step(1)
    _sync()
    t = time.perf_counter()
    for _ in range(steps):
        step(1)
    dt = time.perf_counter() - t
    ctx = prompt_len + 8 + steps / 2
    out = {
        "tokens_per_s": steps / dt,
        "ms_per_token": 1e3 * dt / steps,
        "mean_context": ctx,
        "cuda_graphs": runner.graphs is not None,
    }
    g = runner.graphs
    if g is not None:  # device time of the step alone (inputs of the last step staged): the rest is host
        graph = g.graphs[1][0]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(50):
            graph.replay()
        end.record()
        end.synchronize()
        out["graph_replay_ms"] = start.elapsed_time(end) / 50
        out["host_overhead_ms"] = out["ms_per_token"] - out["graph_replay_ms"]
    kv.free(seq)
    return out


def decode_batch1_loop(eng: LLMEngine, prompt_len: int = 512, steps: int = 256, reps: int = 3) -> dict:
    """Batch-1 decode through the engine's loop (`generate`): the time of `steps` more tokens,
    i.e. a run of 1 + steps tokens minus a run of 1 (prefill and first token), median of `reps`."""
    prompt = _prompts(1, prompt_len, eng.spec.vocab_size, 0)[0]

    def run(n: int) -> float:
        _sync()
        t = time.perf_counter()
        eng.generate([prompt], SamplingParams(max_tokens=n, ignore_eos=True))
        return time.perf_counter() - t

    run(steps + 1)  # warm-up
    dts = [run(steps + 1) - run(1) for _ in range(reps)]
    dt = float(np.median(dts))
    return {"tokens_per_s": steps / dt, "ms_per_token": 1e3 * dt / steps, "runs_ms_per_token":
            [1e3 * x / steps for x in dts], "mean_context": prompt_len + 1 + steps / 2}  # fmt: skip


def loop_modes(eng: LLMEngine, roofline, azure_trace: str | None) -> dict:
    """The engine's loop in each async scheduling mode (off, graphs, all), case by case back to back."""
    out: dict = {}
    cases = (
        ("decode_batch1", lambda: decode_batch1_loop(eng)),
        ("batch64", lambda: throughput(eng, 64, timed_steps=False)),
        ("azure_1000", lambda: azure_throughput(eng, 1000, azure_trace)),
    )
    for key, fn in cases:
        for mode in ASYNC_MODES:
            eng.config.async_scheduling = mode
            try:
                r = fn()
            finally:
                eng.config.async_scheduling = "off"
            if key == "decode_batch1":
                r["fraction_of_roofline"] = r["tokens_per_s"] / roofline(r["mean_context"])
            out.setdefault(key, {})[mode] = r
        speed = "tokens_per_s" if key == "decode_batch1" else "output_tokens_per_s"
        for mode in ASYNC_MODES[1:]:
            out[key][f"{mode}_over_off"] = out[key][mode][speed] / out[key]["off"][speed]
        print("loop", key, out[key], flush=True)
    return out


def throughput(
    eng: LLMEngine, batch: int, prompt_len: int = 512, out_len: int = 128, timed_steps: bool = True
) -> dict:
    """All `batch` requests submitted at once; every one runs concurrently (max_num_seqs >= batch)
    and the prefill token budget takes many prompts per step."""
    if eng.sched_config.max_num_seqs < batch:
        raise ValueError(f"max_num_seqs={eng.sched_config.max_num_seqs} < batch {batch}")
    prompts = _prompts(batch, prompt_len, eng.spec.vocab_size, batch)
    sp = SamplingParams(max_tokens=out_len, ignore_eos=True)
    # Warm up with the full batch: the first step of a new prefill size compiles and tunes
    # kernels, which once cost the timed batch-64 run 0.7 s (engine_h200.json, notes).
    eng.generate(prompts, SamplingParams(max_tokens=2, ignore_eos=True))
    runner = eng.runner
    steps: list[tuple[int, int, float]] = []  # (sequences, new tokens, seconds) of each step
    execute = runner.execute

    def timed(batch_):  # one step at a time, the loop calls execute
        toks = execute(batch_)
        steps.append((len(batch_.seqs), batch_.num_tokens, runner.last_step_seconds))
        return toks

    if timed_steps:
        runner.execute = timed  # type: ignore[method-assign]
    _sync()
    t = time.perf_counter()
    try:
        outs = eng.generate(prompts, sp)
    finally:
        if timed_steps:
            del runner.execute
    _sync()
    dt = time.perf_counter() - t
    n_out = sum(len(o.output_token_ids) for o in outs)
    assert n_out == batch * out_len
    res = {
        "batch": batch,
        "prompt_len": prompt_len,
        "output_len": out_len,
        "seconds": dt,
        "output_tokens_per_s": n_out / dt,
        "total_tokens_per_s": (n_out + batch * prompt_len) / dt,
    }
    if not timed_steps:
        return res
    return {
        **res,
        # where the time went: steps that computed prompt tokens vs pure decode steps, and the
        # host time between steps (scheduler, bookkeeping) that no step accounts for
        "num_steps": len(steps),
        "prefill_steps_seconds": sum(x for b_, n, x in steps if n > b_),
        "decode_steps": sum(1 for b_, n, _ in steps if n == b_),
        "decode_steps_seconds": sum(x for b_, n, x in steps if n == b_),
        "max_concurrent_seqs": max(b_ for b_, _, _ in steps),
        "outside_steps_seconds": dt - sum(x for _, _, x in steps),
    }


def prefill_flops(spec: DecoderSpec, num_params: int, lens: list[int]) -> float:
    """Model FLOPs of one prefill step: 2 * (non-embedding params) per token, causal attention
    (QK^T and PV over the lower triangle), and the LM head for one row per sequence.
    `num_params` counts all parameters (embeddings and LM head included)."""
    per_token = num_params - spec.vocab_size * spec.hidden_size * (1 if spec.tie_word_embeddings else 2)
    tokens = sum(lens)
    dense = 2 * per_token * tokens
    attn = sum(2 * 2 * spec.num_layers * spec.num_heads * spec.head_dim * n * (n + 1) / 2 for n in lens)
    head = 2 * spec.hidden_size * spec.vocab_size * len(lens)
    return dense + attn + head


def throughput_floor(
    spec: DecoderSpec,
    num_params: int,
    step_weight_bytes: float,
    bw: float,
    tflops: float,
    batch: int,
    plen: int,
    olen: int,
) -> dict:
    """Lower bound on the offline throughput run on this card: every prompt's FLOPs at the measured
    matmul rate, plus olen - 1 decode steps that each read all weights and the batch's KV at the
    measured copy bandwidth (no overlap between the two, which is what the FCFS schedule does:
    all prompts are admitted in the first steps)."""
    prefill = prefill_flops(spec, num_params, [plen] * batch) / (tflops * 1e12)
    kv_tok = 2 * spec.num_layers * spec.kv_size * 2
    decode = sum(step_weight_bytes + batch * (plen + i) * kv_tok for i in range(1, olen)) / bw
    return {
        "prefill_seconds": prefill,
        "decode_seconds": decode,
        "seconds": prefill + decode,
        "output_tokens_per_s": batch * olen / (prefill + decode),
    }


def _num_params(eng: LLMEngine) -> int:
    return sum(p.numel() for p in eng.runner.model.parameters())


def prefill_step(eng: LLMEngine, num_seqs: int = 8, length: int = 2048, reps: int = 5) -> dict:
    runner = eng.runner
    times = []
    for r in range(reps + 1):
        kv = BlockManager(runner.num_blocks, runner.block_size, enable_prefix_caching=False)
        seqs = [
            Sequence(Request(id=i, arrival=0.0, prompt_len=length, output_len=1), token_ids=p)
            for i, p in enumerate(_prompts(num_seqs, length, eng.spec.vocab_size, 100 + r))
        ]
        for s in seqs:
            assert kv.allocate(s, length)
        batch = ScheduledBatch(seqs, [length] * num_seqs)
        _sync()
        t = time.perf_counter()
        runner.execute(batch)  # returns after sampling, i.e. after the device finished
        if r:  # the first repetition is warm-up (Triton compilation)
            times.append(time.perf_counter() - t)
    dt = min(times)
    fl = prefill_flops(eng.spec, _num_params(eng), [length] * num_seqs)
    return {
        "num_seqs": num_seqs,
        "length": length,
        "seconds": dt,
        "tflops": fl / dt / 1e12,
        "tokens_per_s": num_seqs * length / dt,
    }


def transformers_baseline(spec_name: str, batch64: bool = True) -> dict:
    try:
        import transformers
    except ImportError:
        return {"skipped": "transformers not installed"}
    from backends.models import get_model

    cfg = transformers.AutoConfig.for_model(**get_model(spec_name).to_hf_config())
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(cfg)
    finally:
        torch.set_default_dtype(prev)
    model = model.to_empty(device="cuda").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
        for m in model.modules():  # to_empty left the rotary buffers uninitialized: rebuild them
            if hasattr(m, "inv_freq"):
                fresh = type(m)(config=m.config, device="cuda")
                for name, buf in fresh.named_buffers(recurse=False):
                    getattr(m, name).copy_(buf)
    out: dict = {"version": transformers.__version__}
    vocab = cfg.vocab_size

    def gen(batch: int, plen: int, new: int) -> float:
        ids = torch.tensor(_prompts(batch, plen, vocab, 7), device="cuda")
        kw = dict(
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
        )
        model.generate(
            ids[:, :16],
            **{
                **kw,
                "attention_mask": torch.ones_like(ids[:, :16]),
                "max_new_tokens": 4,
                "min_new_tokens": 4,
            },
        )
        _sync()
        t = time.perf_counter()
        with torch.no_grad():
            res = model.generate(ids, **kw)
        _sync()
        assert res.shape[1] == plen + new
        return time.perf_counter() - t

    dt = gen(1, 512, 128)
    out["decode_batch1_tokens_per_s_incl_prefill"] = 128 / dt
    if batch64:
        dt = gen(64, 512, 128)
        out["batch64_512in_128out"] = {"seconds": dt, "output_tokens_per_s": 64 * 128 / dt}
    return out


def azure_throughput(eng: LLMEngine, n: int = 1000, path: str | None = None, seed: int = 0) -> dict:
    """`n` requests with (prompt, output) lengths from the Azure 2023 conversation trace, all
    submitted at once (EOS ignored, so each produces its trace output length). The first `n`
    rows of the trace at `path`, or pairs resampled from the bundled slice when none is given."""
    from traces.generators import EmpiricalPairs
    from traces.loaders import default_trace_path, load_trace

    trace = load_trace(path or default_trace_path())
    if len(trace) >= n:
        prompt_len, output_len = trace.prompt_len[:n], trace.output_len[:n]
        source = f"first {n} rows of {trace.name}"
    else:
        rng = np.random.default_rng(seed)
        prompt_len, output_len = EmpiricalPairs.from_trace(trace).sample_pairs(n, rng)
        source = f"{n} (prompt, output) pairs resampled from {trace.name}"
    cap = eng.max_model_len
    prompt_len = np.minimum(prompt_len, cap - 1)
    output_len = np.minimum(output_len, cap - prompt_len)
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, eng.spec.vocab_size, int(p)).tolist() for p in prompt_len]
    outs_expected = int(output_len.sum())
    eng.generate(prompts[:2], SamplingParams(max_tokens=2, ignore_eos=True))  # warm-up
    params = [SamplingParams(max_tokens=int(o), ignore_eos=True) for o in output_len]
    _sync()
    t = time.perf_counter()
    outs = eng.generate(prompts, params)
    _sync()
    dt = time.perf_counter() - t
    n_out = sum(len(o.output_token_ids) for o in outs)
    assert n_out == outs_expected, (n_out, outs_expected)
    return {
        "requests": n,
        "lengths": source,
        "prompt_tokens": int(prompt_len.sum()),
        "output_tokens": n_out,
        "seconds": dt,
        "output_tokens_per_s": n_out / dt,
        "total_tokens_per_s": (n_out + int(prompt_len.sum())) / dt,
        "requests_per_s": n / dt,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3.1-8b", help="catalog architecture (random bf16 weights)")
    ap.add_argument("--out", default=None, help="result JSON (default benchmarks/results/engine_<card>.json)")
    ap.add_argument("--no-transformers", action="store_true")
    ap.add_argument("--max-model-len", type=int, default=20480)
    ap.add_argument("--azure-trace", help="Azure 2023 conversation CSV for the 1,000-request case "
                    "(default: lengths resampled from the bundled slice)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_engine needs a CUDA device")
    card = torch.cuda.get_device_name()
    res: dict = {
        "card": card,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "model": args.model,
        "dtype": "bfloat16",
        "weights": "random N(0, 0.02)",
    }
    try:
        import triton

        res["triton"] = triton.__version__
    except ImportError:
        pass
    res["hbm_copy_GBps"] = measure_copy_bandwidth() / 1e9
    res["matmul_8192_bf16_tflops"] = measure_matmul_tflops()
    print(json.dumps(res, indent=1), flush=True)

    t = time.perf_counter()
    eng = LLMEngine(
        EngineConfig(
            model=args.model,
            device="cuda",
            dtype="bfloat16",
            max_num_seqs=256,
            max_num_batched_tokens=16384,
            max_model_len=args.max_model_len,
            enable_prefix_caching=False,
            gpu_memory_utilization=0.85,
        )
    )
    r = eng.runner
    res["engine_setup_seconds"] = time.perf_counter() - t
    res["num_kv_blocks"] = r.num_blocks
    res["kv_plan"] = r.kv_plan.reason
    res["weight_GB"] = r.weight_bytes / 1e9
    if r.graphs is not None:
        res["decode_graphs"] = {"buckets": r.graphs.buckets, **r.graphs.info}
    print("engine ready", res["engine_setup_seconds"], r.num_blocks, flush=True)

    # Bytes one decode step reads: every weight but the input embedding table (one row of it is
    # gathered; a tied table is read whole as the LM head), plus the K and V of the context.
    spec = eng.spec
    emb = 0 if spec.tie_word_embeddings else spec.vocab_size * spec.hidden_size * 2
    step_weight_bytes = r.weight_bytes - emb
    res["decode_weight_bytes_per_step_GB"] = step_weight_bytes / 1e9

    def roofline(ctx: float) -> float:
        """Decode tokens/s at batch 1 if a step took its bytes (weights, K and V) at copy speed."""
        return res["hbm_copy_GBps"] * 1e9 / (step_weight_bytes + 2 * spec.num_layers * spec.kv_size * 2 * ctx)

    for key, plen in (("decode_batch1", 512), ("decode_batch1_ctx16k", 16384)):
        d = decode_batch1(eng, prompt_len=plen)
        roof = roofline(d["mean_context"])
        d["hbm_roofline_tokens_per_s"] = roof
        d["fraction_of_roofline"] = d["tokens_per_s"] / roof
        res[key] = d
        print("decode", plen, d, flush=True)

    res["greedy_pick"] = greedy_pick_us(spec.vocab_size)
    print("greedy pick", res["greedy_pick"], flush=True)
    res["prefill_8x2048"] = p = prefill_step(eng)
    p["fraction_of_matmul"] = p["tflops"] / res["matmul_8192_bf16_tflops"]
    print("prefill", p, flush=True)

    res["throughput"] = [throughput(eng, b) for b in (64, 256)]
    for t in res["throughput"]:
        t["floor"] = throughput_floor(
            spec,
            _num_params(eng),
            step_weight_bytes,
            res["hbm_copy_GBps"] * 1e9,
            res["matmul_8192_bf16_tflops"],
            t["batch"],
            t["prompt_len"],
            t["output_len"],
        )
    print("throughput", res["throughput"], flush=True)
    res["azure_1000"] = azure_throughput(eng, 1000, args.azure_trace)
    print("azure 1000", res["azure_1000"], flush=True)
    res["engine_loop"] = loop_modes(eng, roofline, args.azure_trace)
    del eng, r
    torch.cuda.empty_cache()

    if not args.no_transformers:
        try:
            res["transformers"] = transformers_baseline(args.model)
            torch.cuda.empty_cache()
        except Exception as e:  # a baseline failure must not lose the engine numbers
            res["transformers"] = {"error": f"{type(e).__name__}: {e}"}
        print("transformers", res["transformers"], flush=True)
        base = res["transformers"].get("batch64_512in_128out", {}).get("output_tokens_per_s")
        if base:
            t64 = next(t for t in res["throughput"] if t["batch"] == 64)
            res["batch64_speedup_vs_transformers"] = t64["output_tokens_per_s"] / base
            res["batch64_floor_speedup_vs_transformers"] = t64["floor"]["output_tokens_per_s"] / base

    write_result(result_path("engine", card, args.out), res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
