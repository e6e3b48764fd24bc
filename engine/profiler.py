"""Measure the engine's step time over a grid of iteration shapes, for the calibrated cost model.

Every sample runs the engine's own step, `ModelRunner.execute` (the input preparation the engine
uses, the forward pass, CUDA-graph replay for pure decodes, LM head and sampling), on a
`ScheduledBatch` of synthetic sequences whose block tables come from a `BlockManager` over the
engine's real KV pool, so the kernels read and write exactly the memory a served batch would.
Times are wall-clock seconds around the call with the device synchronised before and after
(`torch.cuda.synchronize` on CUDA; `time.perf_counter` alone on CPU). Each shape first runs
`warmup` untimed times (absorbing Triton's JIT compilation of new shapes and cuBLAS's algorithm
choice); then `repeats` rounds each time every shape once, in an interleaved order, and a shape's
sample is the median of its rounds. Timing a shape back to back would find its data hot in the
caches; in serving, consecutive steps differ, and on a CPU test model that alone made steps look
about 10% faster than the engine then ran them.

Separately, per shape, the CPU-side work the engine does each iteration is timed on scheduler
state built to produce that batch: `ReplicaCore.schedule` (the policy's decision) and
`ReplicaCore.complete` (bookkeeping), which run outside `execute`, and the eager path's input
preparation (`ModelRunner.prepare`) and the greedy token pick (argmax to the host), which run inside
it (recorded to split the step in reports; decode steps under CUDA graphs stage their inputs in the
graph's own buffers instead). For async scheduling's model, each timed round also records the step's
host launch seconds and, for a graph step, its device seconds when queued right behind another of
its shape, as the loop runs them one step ahead; and, for comparison, the step timed a second time
right after itself (`warm_s`: in serving a step mostly follows one of its own shape).

Last, a serving phase (engine/profile_serving.py) replays a synthetic load ramp through the
engine's own loop and records every iteration's shape and the seconds of its schedule, execute and
complete phases, so the fit sees the engine's CPU phases and step times as they are when it
serves, not only as a tight timing loop finds them.

The default grid (about 225 shapes) covers Llama-3.1-8B-class shapes on one GPU in about two to
three minutes (the analytic model puts one pass over it at ~10 s of H100 time):
prefills from 16 to 8192 new tokens over cached prefixes up to 16k, prompts batched together,
decode batches of 1 to 256 (every CUDA-graph bucket) at contexts from 128 tokens up to what the KV
pool holds, uneven decode batches (one 4k or 16k context among 256-token ones), and mixed
chunked-prefill steps (decodes plus one chunk, up to the token budget). Grid points that exceed
the engine's token budget, sequence cap, max_model_len or KV pool are skipped and listed in the
profile header's notes. `--quick` is a tiny grid for CPU tests.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from backends.cost_model import BatchShape
from backends.profile import OverheadSample, Profile, ProfileHeader, ShapeSample, canonical_dtype
from engine.config import EngineConfig
from engine.telemetry import TelemetryLog, describe, open_gpu_telemetry, summarize
from policies.kv.block_manager import BlockManager
from policies.scheduling.base import SCHEDULERS, SchedulerConfig
from policies.scheduling.batch import ScheduledBatch
from policies.sequence import Sequence
from sim.replica_core import ReplicaCore
from sim.results import RunRecorder
from traces.schema import Request

if TYPE_CHECKING:
    from engine.llm_engine import LLMEngine
    from engine.model_runner import ModelRunner

# torch (and the model runner) are imported inside the functions that run the engine: the CLI builds
# its parser with `add_profile_args`, and `sagellm simulate` must not pay for importing torch.

_NEVER_FINISH = 1 << 30  # output length of synthetic requests: a timed step never finishes one
_DECODE_BATCHES = (
    1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 40, 48, 64, 80, 96, 100, 112, 128, 144, 160, 192, 200, 256
)


@dataclass(frozen=True)
class ProfileGrid:
    """Iteration shapes to measure. Context values are per sequence; prefill chunks are final chunks."""

    # 768 and 1536 let the fit bend between 512 and 2048 (a knot needs two sizes on each side), where
    # the chunks of a 2048-token budget mostly fall
    prefill_tokens: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 768, 1024, 1536, 2048, 4096, 8192)
    prefill_cached: tuple[int, ...] = (0, 1024, 4096, 16384)
    # a step's prefill tokens spread over k prompts (no cached prefix): batched short prompts
    prefill_splits: tuple[int, ...] = (4, 16)
    decode_batch: tuple[int, ...] = _DECODE_BATCHES  # bucket sizes and sizes padded up to one
    decode_context: tuple[int, ...] = (128, 512, 2048, 8192)
    decode_fill_pool: bool = True  # per batch size, also the longest context the KV pool holds
    # Contexts of a decode sample spread linearly from (1 - s) to (1 + s) times the grid's value
    # (see `decode_contexts`), as served batches mix them (the decode steps of an Azure replay had a
    # longest context 1.75x the mean at the median). On an H200 (host X), 2048-token means: a ramp
    # cost 10.70 ms of device time against 9.79 uniform at 80 rows (one wave: the longest program
    # shows), but 12.42 against 12.78 at 96 rows (plausibly: a uniform batch's programs end together,
    # leaving a last wave that runs nearly empty, which a mixed batch's fills). Measured by
    # benchmarks/bench_decode_layouts.py (benchmarks/results/decode_layouts_h200.json).
    decode_spread: float = 0.5
    # uneven decode batches: one sequence at a long context among short ones. The paged-attention
    # launch lasts as long as its longest program, which uniform contexts cannot tell apart from the
    # bulk per-token cost (for a uniform batch the longest context is the sum over n); served batches
    # mix a long prompt with short ones all the time.
    skewed_decode_batch: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
    skewed_decode_short: int = 256
    skewed_decode_long: tuple[int, ...] = (4096, 16384)
    mixed_decode_batch: tuple[int, ...] = (4, 16, 64, 128, 224)
    mixed_decode_context: tuple[int, ...] = (512, 2048)
    mixed_prefill_tokens: tuple[int, ...] = (64, 512, 2048)
    mixed_fill_budget: bool = True  # also the chunk that fills the token budget (what FCFS schedules)
    mixed_prefill_cached: tuple[int, ...] = (0, 4096)
    serving_seconds: float = 60.0  # the serving phase's length, in engine seconds (0: none)

    def __post_init__(self) -> None:
        if not 0.0 <= self.decode_spread < 1.0:
            raise ValueError(
                f"ProfileGrid.decode_spread: expected 0 <= spread < 1 (a fraction of the mean context), "
                f"got {self.decode_spread!r}"
            )

    @classmethod
    def make(cls, quick: bool = False, decode_spread: float | None = None) -> ProfileGrid:
        """The default grid (or the quick one), with the decode samples' spread when given."""
        grid = cls.quick() if quick else cls()
        return grid if decode_spread is None else replace(grid, decode_spread=decode_spread)

    @classmethod
    def quick(cls) -> ProfileGrid:
        """A few dozen tiny shapes: seconds on CPU with a test-sized model."""
        return cls(
            prefill_tokens=(4, 12, 24, 48),
            prefill_cached=(0, 16),
            prefill_splits=(4,),
            decode_batch=(1, 2, 3, 4, 6, 8),
            decode_context=(8, 32),
            decode_fill_pool=False,
            skewed_decode_batch=(4,),
            skewed_decode_short=8,
            skewed_decode_long=(32,),
            mixed_decode_batch=(2, 4),
            mixed_decode_context=(16,),
            mixed_prefill_tokens=(8,),
            mixed_fill_budget=True,
            mixed_prefill_cached=(0, 8),
            serving_seconds=2.0,
        )


@dataclass(frozen=True)
class ShapeLimits:
    """What the profiled engine can run at all: shapes past these never occur in serving."""

    max_num_batched_tokens: int
    max_num_seqs: int
    max_model_len: int
    num_blocks: int
    block_size: int

    def blocks(self, shape: BatchShape) -> int:
        bs = self.block_size
        need = sum(-(-(c + n) // bs) for n, c in shape.prefill)
        for ctx in decode_contexts(shape):
            need += -(-ctx // bs)
        return need

    def why_not(self, shape: BatchShape) -> str | None:
        if shape.num_tokens > self.max_num_batched_tokens:
            return f"{shape.num_tokens} tokens > max_num_batched_tokens {self.max_num_batched_tokens}"
        if shape.num_seqs > self.max_num_seqs:
            return f"{shape.num_seqs} sequences > max_num_seqs {self.max_num_seqs}"
        longest = max([c + n for n, c in shape.prefill] + decode_contexts(shape))
        if longest > self.max_model_len:
            return f"a sequence of {longest} tokens > max_model_len {self.max_model_len}"
        if self.blocks(shape) > self.num_blocks:
            return f"needs {self.blocks(shape)} KV blocks > {self.num_blocks} in the pool"
        return None


def decode_contexts(shape: BatchShape) -> list[int]:
    """Per-sequence contexts of the shape's decodes, the longest first.

    Without `decode_max_context`: the sum spread as evenly as possible. With it: a linear ramp from
    2 x mean - max up to the max (integers, summing exactly, longest and shortest alternating, as
    served batches interleave old and new requests) when that ramp keeps every context >= 1;
    otherwise one sequence at the max and the rest even (one long prompt among short ones). A cost
    model sees only the sum and the max; this is how the profiler lays them out.
    """
    nd, total, mx = shape.num_decode, shape.decode_context, shape.decode_max_context
    if nd == 0:
        return []
    if mx and nd > 1 and 2 * total - mx * nd >= nd:
        return _ramp(nd, total, mx)
    head: list[int] = []
    if mx and nd > 1 and mx * nd > total:
        head, nd, total = [mx], nd - 1, total - mx
    q, r = divmod(total, nd)
    return head + [q + 1] * r + [q] * (nd - r)


def _ramp(nd: int, total: int, mx: int) -> list[int]:
    """`nd` integers summing to `total`, linearly spaced from mx down to 2 * total / nd - mx (exact
    rational steps, rounded down, the remainder added to the largest fractional parts)."""
    step_num, den = 2 * (mx * nd - total), nd * (nd - 1)
    vals = [mx - (-(-step_num * i // den)) for i in range(nd)]
    frac = sorted(range(1, nd), key=lambda i: (-((-step_num * i) % den), i))
    for i in frac[: total - sum(vals)]:
        vals[i] += 1
    vals.sort(reverse=True)
    return [vals[i // 2] if i % 2 == 0 else vals[nd - 1 - i // 2] for i in range(nd)]


def spread_decode(num_decode: int, context: int, spread: float) -> BatchShape:
    """A decode sample of `num_decode` sequences averaging `context` tokens, spread +-`spread` x
    context around it (`decode_contexts`' ramp); even when the spread rounds to nothing."""
    widen = min(round(spread * context), context - 1) if num_decode > 1 else 0
    total = num_decode * context
    return BatchShape([], num_decode, total, context + widen if widen > 0 else 0)


def grid_shapes(grid: ProfileGrid, limits: ShapeLimits) -> tuple[list[BatchShape], list[str]]:
    """Feasible shapes, the three kinds interleaved (so a run cut short by its time budget still
    covers all of them), and a note per skipped grid point."""
    dec: list[BatchShape] = []
    pre: list[BatchShape] = []
    mix: list[BatchShape] = []
    for b in grid.decode_batch:
        ctxs = [c for c in grid.decode_context if c >= 2]
        if grid.decode_fill_pool:
            # the ramp's longest context within max_model_len; a block per sequence for rounding up
            widest = int(limits.max_model_len / (1 + grid.decode_spread)) if b > 1 else limits.max_model_len
            per_seq = min(widest, (limits.num_blocks // max(b, 1) - (b > 1)) * limits.block_size)
            if per_seq >= 2 and per_seq not in ctxs and per_seq > max(ctxs, default=0) // 2:
                ctxs.append(per_seq)
        for c in ctxs:
            dec.append(spread_decode(b, c, grid.decode_spread))
    short = grid.skewed_decode_short
    for b in grid.skewed_decode_batch:
        for long in grid.skewed_decode_long:
            if b > 1 and long > short >= 1:
                dec.append(BatchShape([], b, (b - 1) * short + long, long))
    for t in grid.prefill_tokens:
        for c in grid.prefill_cached:
            pre.append(BatchShape([(t, c)]))
        for k in grid.prefill_splits:
            if k > 1 and t >= k:
                q, r = divmod(t, k)
                pre.append(BatchShape([(q + 1, 0)] * r + [(q, 0)] * (k - r)))
    for b in grid.mixed_decode_batch:
        chunks = list(grid.mixed_prefill_tokens)
        if grid.mixed_fill_budget:
            chunks.append(limits.max_num_batched_tokens - b)
        for ctx in grid.mixed_decode_context:
            for n in chunks:
                if n < 1:
                    continue
                for c in grid.mixed_prefill_cached:
                    mix.append(BatchShape([(n, c)], b, b * ctx))
    shapes: list[BatchShape] = []
    notes: list[str] = []
    seen: set[tuple] = set()
    for i in range(max(len(dec), len(pre), len(mix))):
        for group in (dec, pre, mix):
            if i >= len(group):
                continue
            s = group[i]
            key = (tuple(s.prefill), s.num_decode, s.decode_context, s.decode_max_context)
            if key in seen:
                continue
            seen.add(key)
            why = limits.why_not(s)
            if why is None:
                shapes.append(s)
            else:
                notes.append(f"skipped prefill={s.prefill} decode={s.num_decode}x{s.decode_context}: {why}")
    return shapes, notes


# ------------------------------------------------------------------------------------------------
# Synthetic sequences


class _Synth:
    """Builds sequences that put a shape on the engine: prefill chunks are final chunks (they sample)."""

    def __init__(self, vocab_size: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.vocab = vocab_size
        self.next_id = 0

    def tokens(self, n: int) -> list[int]:
        return self.rng.integers(0, self.vocab, size=n).tolist()

    def _req(self, prompt_len: int) -> Request:
        rid = self.next_id
        self.next_id += 1
        return Request(id=rid, arrival=0.0, prompt_len=prompt_len, output_len=_NEVER_FINISH)

    def prefill(self, n: int, cached: int, toks: list[int] | None = None) -> Sequence:
        """A prompt of cached + n tokens whose first `cached` tokens are already computed."""
        seq = Sequence(
            self._req(cached + n), token_ids=list(toks) if toks is not None else self.tokens(cached + n)
        )
        return seq

    def decode(self, ctx: int, toks: list[int] | None = None) -> Sequence:
        """A sequence that has sampled one token and now computes it: it attends to `ctx` tokens."""
        seq = Sequence(self._req(ctx - 1), token_ids=list(toks) if toks is not None else self.tokens(ctx))
        seq.num_output_tokens = 1
        return seq


def build_batch(
    shape: BatchShape, kv: BlockManager, synth: _Synth, contexts: list[int] | None = None
) -> ScheduledBatch:
    """A ScheduledBatch with this shape, KV blocks allocated from `kv` (free them with `release`).
    `contexts`: the decodes' contexts when not `decode_contexts(shape)`'s layout."""
    seqs: list[Sequence] = []
    counts: list[int] = []
    try:
        for ctx in decode_contexts(shape) if contexts is None else contexts:
            s = synth.decode(ctx)
            seqs.append(s)
            if not kv.allocate(s, ctx):
                raise RuntimeError(f"KV pool too small for {shape}")
            s.num_computed_tokens = ctx - 1
            counts.append(1)
        for n, c in shape.prefill:
            s = synth.prefill(n, c)
            seqs.append(s)
            if not kv.allocate(s, c + n):
                raise RuntimeError(f"KV pool too small for {shape}")
            s.num_computed_tokens = c
            counts.append(n)
    except BaseException:
        release(ScheduledBatch(seqs, counts), kv)
        raise
    return ScheduledBatch(seqs, counts)


def release(batch: ScheduledBatch, kv: BlockManager) -> None:
    for s in batch.seqs:
        kv.free(s)


# ------------------------------------------------------------------------------------------------
# Timing


def _time(
    fn: Callable[[], object],
    sync: Callable[[], None],
    warmup: int,
    repeats: int,
    setup: Callable[[], object] | None = None,
) -> list[float]:
    """Seconds of `fn` per repeat; `setup` (untimed) runs before every call, its result is passed on."""

    def once() -> float:
        arg = setup() if setup is not None else None
        sync()
        t0 = time.perf_counter()
        if setup is None:
            fn()
        else:
            fn(arg)  # type: ignore[call-arg]
        sync()
        return time.perf_counter() - t0

    for _ in range(warmup):
        once()
    return [once() for _ in range(repeats)]


def _telemetry_notes(log: TelemetryLog, what: str) -> list[str]:
    """Profile header notes of what the card did during one phase (a summary, and why sampling
    stopped if it did)."""
    return [describe(summarize(log.samples), what)] + ([log.error] if log.error else [])


def _back_to_back(runner: ModelRunner, batch: ScheduledBatch) -> float | None:
    """Device seconds of a graph step queued behind another of its shape, as async scheduling runs
    them: the events of a step launched onto an idle device timed a batch-1 decode graph ~5% faster
    (4.23 ms, an H200) than the loop's back-to-back period (~4.45 ms). None off CUDA."""
    first = runner.launch(batch)
    runner.time_device = True
    try:
        second = runner.launch(batch)
    finally:
        runner.time_device = False
    runner.collect(first)
    runner.collect(second)
    return runner.last_device_seconds


def _core_for(
    shape: BatchShape, limits: ShapeLimits, scheduler: str, prefix_caching: bool, synth: _Synth, toks: dict
) -> ReplicaCore:
    """Scheduler state that schedules exactly `shape`: decodes and continuing chunks running, fresh
    prompts (no cached prefix) waiting for admission. Token lists are reused across repeats."""
    cfg = SchedulerConfig(limits.max_num_batched_tokens, limits.max_num_seqs, True)
    kv = BlockManager(limits.num_blocks, limits.block_size, prefix_caching)
    core = ReplicaCore(
        0,
        SCHEDULERS.create(scheduler, cfg),
        kv,
        RunRecorder(0, record_iterations=False),
        limits.max_model_len,
    )
    synth.next_id = 0
    for i, ctx in enumerate(decode_contexts(shape)):
        s = synth.decode(ctx, toks.setdefault(("d", i, ctx), synth.tokens(ctx)))
        kv.allocate(s, ctx - 1)
        s.num_computed_tokens = ctx - 1
        core.running.append(s)
    for i, (n, c) in enumerate(shape.prefill):
        s = synth.prefill(n, c, toks.setdefault(("p", i, n, c), synth.tokens(c + n)))
        if c:
            kv.allocate(s, c)
            s.num_computed_tokens = c
            core.running.append(s)
        else:
            core.waiting.append(s)
    return core


def _overhead(
    runner: ModelRunner,
    shape: BatchShape,
    batch: ScheduledBatch,
    limits: ShapeLimits,
    scheduler: str,
    prefix_caching: bool,
    warmup: int,
    repeats: int,
    synth: _Synth,
) -> OverheadSample:
    sync = runner.device.synchronize
    toks: dict = {}

    def fresh() -> ReplicaCore:
        return _core_for(shape, limits, scheduler, prefix_caching, synth, toks)

    sched = _time(lambda core: core.schedule(0.0), lambda: None, warmup, repeats, setup=fresh)

    def scheduled() -> tuple[ReplicaCore, ScheduledBatch, list[int]]:
        core = fresh()
        b = core.schedule(0.0)
        n_sample = sum(
            1 for s, n in zip(b.seqs, b.num_new_tokens) if s.num_computed_tokens + n == s.num_tokens
        )
        return core, b, [0] * n_sample

    comp = _time(
        lambda a: a[0].complete(a[1], 0.0, 1e-3, a[2]), lambda: None, warmup, repeats, setup=scheduled
    )
    core, b, _ = scheduled()
    pf_seqs = sum(
        1
        for s, n in zip(b.seqs, b.num_new_tokens)
        if not (n == 1 and s.num_output_tokens > 0 and s.num_computed_tokens + 1 == s.num_tokens)
    )
    pf_tokens = sum(b.num_new_tokens) - (len(b.seqs) - pf_seqs)
    prep = _time(lambda: runner.prepare(batch), sync, warmup, repeats)
    n_rows = sum(
        1 for s, n in zip(batch.seqs, batch.num_new_tokens) if s.num_computed_tokens + n == s.num_tokens
    )
    import torch

    from engine.sampling import greedy_ids

    # The greedy pick trace replay uses: argmax of the LM head's logits (model dtype) to the host.
    dev = runner.device.torch_device
    logits = torch.randn(max(n_rows, 1), runner.spec.vocab_size, device=dev, dtype=runner.dtype)
    picked = torch.empty(logits.shape[0], dtype=torch.int64, device=dev)
    samp = _time(lambda: greedy_ids(logits, picked).tolist(), sync, warmup, repeats)
    return OverheadSample(
        num_seqs=len(b.seqs),
        num_prefill_seqs=pf_seqs,
        prefill_tokens=pf_tokens,
        decode_tokens=len(b.seqs) - pf_seqs,
        schedule_s=statistics.median(sched),
        complete_s=statistics.median(comp),
        prepare_s=statistics.median(prep),
        sample_s=statistics.median(samp),
        n=repeats,
    )


def software_versions() -> dict[str, str]:
    import torch

    v = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda": str(torch.version.cuda or "none"),
    }
    try:
        import triton

        v["triton"] = str(triton.__version__)
    except ImportError:
        v["triton"] = "none"
    return v


def _spec_dict(runner: ModelRunner) -> dict:
    import json

    return json.loads(json.dumps(asdict(runner.spec)))  # tuples -> lists: what the file will hold


def profile_runner(
    runner: ModelRunner,
    grid: ProfileGrid | None = None,
    *,
    repeats: int = 3,
    warmup: int = 1,
    scheduler: str = "fcfs",
    time_budget_s: float | None = 240.0,
    command: str | None = None,
    progress: Callable[[str], None] | None = None,
    seed: int = 0,
    engine: LLMEngine | None = None,
    serving_seconds: float | None = None,
) -> Profile:
    """Profile an already built runner (the engine's own, so validation need not load the model twice).

    Once `time_budget_s` is spent no further step is timed: shapes keep the repeats they got (the
    header's notes say how many fell short; shapes with none are left out). Given the `engine`
    that owns the runner, the grid is followed by `serving_seconds` (default: the grid's) of its
    real serving loop (engine/profile_serving.py; 0 skips it).
    """
    if engine is not None and engine.runner is not runner:
        raise ValueError("profile_runner: `engine` must be the engine that owns `runner`")
    import torch

    from policies.scheduling import fcfs  # noqa: F401  (registers "fcfs")

    if repeats < 1 or warmup < 0:
        raise ValueError(f"profile needs repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    grid = grid or ProfileGrid()
    cfg = runner.config
    limits = ShapeLimits(
        cfg.max_num_batched_tokens,
        cfg.max_num_seqs,
        runner.max_model_len,
        runner.num_blocks,
        runner.block_size,
    )
    shapes, notes = grid_shapes(grid, limits)
    if not shapes:
        raise ValueError("no grid shape fits this engine's limits: " + "; ".join(notes[:5]))
    notes.insert(0, "grid batches draw KV blocks from a shuffled free list (shuffle_free_blocks)")
    notes.insert(
        0,
        f"decode samples of 2+ sequences: contexts spread linearly over +-{100 * grid.decode_spread:g}% of "
        "the grid's value (engine.profiler.decode_contexts)",
    )
    t_start = time.perf_counter()
    kv = BlockManager(runner.num_blocks, runner.block_size, enable_prefix_caching=False)
    kv.shuffle_free_blocks(seed)  # the grid's KV placed as a long-served pool's is (see there)
    synth = _Synth(runner.spec.vocab_size, seed)
    sync = runner.device.synchronize
    say = progress or (lambda _m: None)

    def spent() -> bool:
        return time_budget_s is not None and time.perf_counter() - t_start > time_budget_s

    times: list[list[float]] = [[] for _ in shapes]
    device: list[list[float]] = [[] for _ in shapes]  # graph steps' device seconds
    launch: list[list[float]] = [[] for _ in shapes]  # launch seconds (host)
    prep: list[list[float]] = [[] for _ in shapes]  # eager steps' input preparation seconds (host)
    warm: list[list[float]] = [[] for _ in shapes]  # wall seconds, timed again right after itself
    overhead: dict[int, OverheadSample] = {}
    with torch.inference_mode():
        # Warm-up, shape by shape: Triton compiles each new specialisation here, cuBLAS picks its
        # algorithms, the allocator grows; the CPU-side overhead of the shape is timed alongside.
        for i, shape in enumerate(shapes):
            if spent():
                break
            batch = build_batch(shape, kv, synth)
            try:
                for _ in range(warmup):
                    runner.execute(batch)
                overhead[i] = _overhead(
                    runner, shape, batch, limits, scheduler, cfg.enable_prefix_caching, warmup, repeats, synth
                )
            finally:
                release(batch, kv)
        # Timed rounds: each round times every shape once, in the interleaved order, so that (as in
        # serving) consecutive steps differ in shape and no step finds its predecessor's data hot.
        reader, why_none = open_gpu_telemetry(runner.device)
        with TelemetryLog(reader) as grid_log:
            for r in range(repeats):
                for i, shape in enumerate(shapes):
                    if i not in overhead or spent():
                        continue
                    batch = build_batch(shape, kv, synth)
                    try:
                        times[i] += _time(lambda b=batch: runner.execute(b), sync, 0, 1)
                        launch[i].append(runner.last_launch_seconds)
                        if runner.last_prepare_seconds is not None:
                            prep[i].append(runner.last_prepare_seconds)
                        # In serving a step mostly follows one of its own shape (the same graph): on
                        # H200 hosts the loop ran batch-1 decode graphs 2-5% under the grid's time.
                        warm[i] += _time(lambda b=batch: runner.execute(b), sync, 0, 1)
                        if runner.runs_graph(batch) and (d := _back_to_back(runner, batch)) is not None:
                            device[i].append(d)
                    finally:
                        release(batch, kv)
                say(
                    f"round {r + 1}/{repeats}: {sum(1 for t in times if len(t) > r)} of {len(shapes)} "
                    "shapes timed"
                )
        gpu_notes = _telemetry_notes(grid_log, "the grid's timed rounds") if reader else [why_none]
    samples: list[ShapeSample] = []
    over: list[OverheadSample] = []
    for i, shape in enumerate(shapes):
        if not times[i]:
            continue
        samples.append(
            ShapeSample(
                tuple(shape.prefill),
                shape.num_decode,
                shape.decode_context,
                tuple(times[i]),
                statistics.median(times[i]),
                shape.decode_max_context,
                statistics.median(device[i]) if device[i] else None,
                statistics.median(launch[i]) if launch[i] else None,
                statistics.median(warm[i]),
                statistics.median(prep[i]) if prep[i] else None,
            )
        )
        over.append(overhead[i])
    short = sum(1 for t in times if len(t) < repeats)
    if short:
        notes.append(
            f"time budget {time_budget_s:g} s spent: {short} of {len(shapes)} shapes got fewer than "
            f"{repeats} timed repeats ({len(shapes) - len(samples)} none, and are left out)"
        )
        say(notes[-1])
    serving = []
    if serving_seconds is None:
        serving_seconds = grid.serving_seconds
    if engine is not None and serving_seconds > 0 and samples:
        from engine.profile_serving import profile_serving

        say(f"serving phase: {serving_seconds:g} s of the engine's loop under a synthetic load ramp")
        with TelemetryLog(reader) as serving_log:
            serving, note = profile_serving(engine, samples, serving_seconds, seed)
        notes.append(note)
        say(note)
        if reader:
            gpu_notes += _telemetry_notes(serving_log, "the serving phase")
    notes += [n for n in gpu_notes if n]
    graphs = runner.graphs
    header = ProfileHeader(
        device=runner.device.name,
        device_kind=runner.device.kind,
        model=runner.spec.name or runner.spec.family,
        model_config=_spec_dict(runner),
        dtype=canonical_dtype(str(runner.dtype)),
        tp=1,
        pp=1,
        block_size=runner.block_size,
        num_kv_blocks=runner.num_blocks,
        max_num_batched_tokens=cfg.max_num_batched_tokens,
        max_num_seqs=cfg.max_num_seqs,
        max_model_len=runner.max_model_len,
        enable_prefix_caching=cfg.enable_prefix_caching,
        attention_backend=runner.backend.name,
        cuda_graphs=graphs is not None,
        graph_buckets=tuple(graphs.buckets) if graphs is not None else (),
        step_graph_buckets=tuple(runner.step_graphs.buckets) if runner.step_graphs is not None else (),
        warmup=warmup,
        repeats=repeats,
        software=software_versions(),
        date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        command=command if command is not None else " ".join(shlex.quote(a) for a in sys.argv),
        wall_seconds=time.perf_counter() - t_start,
        notes=tuple(notes),
    )
    return Profile(header, samples, over, serving)


def profile_engine(
    engine_config: EngineConfig,
    grid: ProfileGrid | None = None,
    *,
    repeats: int = 3,
    warmup: int = 1,
    **kwargs,
) -> Profile:
    """Build the engine from `engine_config` and profile it over `grid` (default `ProfileGrid()`;
    see `profile_runner`)."""
    from engine.llm_engine import LLMEngine

    engine = LLMEngine(engine_config, scheduler=kwargs.get("scheduler", "fcfs"))
    return profile_runner(
        engine.runner,
        grid or ProfileGrid(),
        repeats=repeats,
        warmup=warmup,
        engine=engine,
        **kwargs,
    )


# ------------------------------------------------------------------------------------------------
# Command line (`sagellm profile`, or `python -m engine.profiler`)


def add_profile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="llama-3.1-8b",
        help="catalog architecture (random weights), Hugging Face directory or .gguf file",
    )
    p.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu | npu")
    p.add_argument("--dtype", default="auto", help="auto | bf16 | fp16 | fp32")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (the engine runs tp=1)")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--num-kv-blocks", type=int, default=None)
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument("--no-cuda-graphs", action="store_true")
    p.add_argument("--attention-backend", default="auto", help="auto | triton | torch")
    p.add_argument("--quick", action="store_true", help="tiny grid (CPU tests, smoke runs)")
    add_decode_spread_arg(p)
    p.add_argument("--repeats", type=int, default=3, help="timed rounds over all shapes (the median is kept)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per shape first (JIT, allocator)")
    p.add_argument("--time-budget", type=float, default=240.0, help="stop timing after this many seconds (s)")
    p.add_argument(
        "--serving-seconds",
        type=float,
        default=None,
        help="then this long a replay of a synthetic load ramp through the engine's loop (0: skip; "
        "default 60, 2 with --quick)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out",
        default=None,
        help="profile file (default backends/profiles/<model>_<device>_<dtype>_tp<N>.json)",
    )


def add_decode_spread_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--decode-spread",
        type=float,
        default=None,
        help="decode samples' contexts spread +-this fraction of the grid's value (default "
        f"{ProfileGrid.decode_spread}; 0: every sequence the same context, as profiles before it)",
    )


def engine_config_from_args(a: argparse.Namespace) -> EngineConfig:
    if a.tp != 1:
        raise ValueError(
            f"--tp {a.tp}: the engine runs one device (tp=1); a tp>1 profile needs a tp>1 engine"
        )
    dtype = "auto" if a.dtype == "auto" else canonical_dtype(a.dtype)
    return EngineConfig(
        model=a.model,
        dtype=dtype,
        device=a.device,
        block_size=a.block_size,
        gpu_memory_utilization=a.gpu_memory_utilization,
        num_kv_blocks=a.num_kv_blocks,
        max_num_batched_tokens=a.max_num_batched_tokens,
        max_num_seqs=a.max_num_seqs,
        max_model_len=a.max_model_len,
        enable_prefix_caching=not a.no_prefix_caching,
        cuda_graphs=not a.no_cuda_graphs,
        attention_backend=a.attention_backend,
        seed=a.seed,
    )


def slug(text: str) -> str:
    out = "".join(ch.lower() if ch.isalnum() or ch in ".-" else "-" for ch in text)
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-")


def default_profile_path(profile: Profile, root: str | Path = "backends/profiles") -> Path:
    h = profile.header
    dev = slug(h.device.split("(")[0]) if h.device_kind == "cpu" else slug(h.device)
    return Path(root) / f"{slug(Path(h.model).name)}_{dev}_{h.dtype}_tp{h.tp}.json"


def _namespace(
    add_args: Callable[[argparse.ArgumentParser], None], args: argparse.Namespace | None, kwargs: dict
) -> argparse.Namespace:
    """Parser defaults, overridden by `args` (a parsed namespace) and then by keyword arguments."""
    p = argparse.ArgumentParser(add_help=False)
    add_args(p)
    ns = p.parse_args([])
    if args is not None:
        for k, v in vars(args).items():
            setattr(ns, k, v)
    known = set(vars(p.parse_args([])))
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for k, v in kwargs.items():
        setattr(ns, k, v)
    return ns


def main_profile(args: argparse.Namespace | None = None, **kwargs) -> Path:
    """`sagellm profile`: build the engine, profile it, write the profile, print the fit quality.

    Takes a namespace parsed with `add_profile_args` and/or keyword arguments of the same names
    (`main_profile(model="llama-3.1-8b", device="cuda", out="p.json")`). Returns the file written.
    """
    a = _namespace(add_profile_args, args, kwargs)
    cfg = engine_config_from_args(a)
    cmd = " ".join(shlex.quote(x) for x in sys.argv)
    prof = profile_engine(
        cfg,
        ProfileGrid.make(a.quick, a.decode_spread),
        repeats=a.repeats,
        warmup=a.warmup,
        time_budget_s=a.time_budget,
        command=cmd,
        seed=a.seed,
        serving_seconds=a.serving_seconds,
        progress=lambda m: print(m, file=sys.stderr, flush=True),
    )
    out = Path(a.out) if a.out else default_profile_path(prof)
    prof.save(out)
    from backends.calibrated import CalibratedCostModel

    print(CalibratedCostModel(profile=prof).format_fit_report())
    print(
        f"profile: {out} ({len(prof.samples)} shapes, {prof.header.wall_seconds:.1f} s "
        f"on {prof.header.device})"
    )
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m engine.profiler",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_profile_args(parser)
    main_profile(parser.parse_args())
