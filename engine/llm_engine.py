"""The real engine: the simulator's replica step (`ReplicaCore`) with a model runner as executor.

`generate` serves a list of prompts to completion (tests, examples); `replay` serves a trace
in real time, on a clock that skips idle gaps, and returns the same `RunResult` the simulator
writes, so a simulated and an executed run of one trace compare column for column. The
scheduler, the block manager and the step bookkeeping are the very objects the simulator
uses; only "how long did the iteration take" comes from a wall clock instead of a cost model.

Both loops run one step at a time (schedule, launch, wait, bookkeeping), or with
`EngineConfig.async_scheduling` one step ahead: step n+1 is scheduled on the state that step n
will leave (`ReplicaCore.advance`: counts moved, PENDING ids, finished-by-length sequences gone)
and launched before step n's ids are back, which are then settled (`ReplicaCore.settle`) while
n+1 runs. An iteration then ends when its ids reach the host, as a client would see them. Under
"graphs" an eager step first collects the step in flight: its launch is Python-bound and blocks
on its input copies, which would hold back that step's tokens.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, replace

import numpy as np

from backends.cost_model import BatchShape
from backends.profile import ServingStep
from engine.config import EngineConfig
from engine.model_runner import Launched, ModelRunner
from engine.sampling import SamplingParams, stop_reason
from engine.tokenizer import Tokenizer, load_tokenizer
from policies.kv.block_manager import BlockManager
from policies.scheduling.base import SCHEDULERS, SchedulerConfig
from policies.sequence import Sequence, Status
from sim.replica_core import ReplicaCore, StepInFlight
from sim.results import RunRecorder, RunResult
from traces.schema import Request, Trace


@dataclass
class GenerationOutput:
    request_id: int
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    finish_reason: str  # "eos" | "stop" | "length" | "rejected: <why>"
    num_cached_tokens: int = 0
    num_preemptions: int = 0
    text: str | None = None


def synthesize_prompt(req: Request, vocab_size: int, seed: int = 0) -> list[int]:
    """Token ids for a trace request that has only lengths (and maybe Mooncake prefix hashes).

    Tokens of trace block k are drawn from a generator seeded by prefix_hashes[k], so requests
    that share a hash prefix share those tokens, and the engine's content-hash prefix cache sees
    the same hits the trace describes; the rest is drawn per request.
    """
    if req.prompt_token_ids is not None:
        if len(req.prompt_token_ids) != req.prompt_len:
            raise ValueError(
                f"request {req.id}: {len(req.prompt_token_ids)} prompt token ids "
                f"but prompt_len={req.prompt_len}"
            )
        return list(req.prompt_token_ids)
    out: list[int] = []
    tb = req.hash_block_tokens
    for h in req.prefix_hashes:
        if len(out) >= req.prompt_len or tb < 1:
            break
        rng = np.random.default_rng([seed, h & 0xFFFFFFFFFFFFFFFF])
        out.extend(rng.integers(0, vocab_size, size=min(tb, req.prompt_len - len(out))).tolist())
    rng = np.random.default_rng([seed, 1 << 40, req.id])
    out.extend(rng.integers(0, vocab_size, size=req.prompt_len - len(out)).tolist())
    return out


def _logged(sh: BatchShape, schedule_s: float, execute_s: float, launch_s: float) -> ServingStep:
    """A step-log record of shape `sh`; its bookkeeping phase (complete_s) is filled in when it ends."""
    return ServingStep(
        tuple(sh.prefill), sh.num_decode, sh.decode_context, sh.decode_max_context,
        schedule_s, execute_s, 0.0, launch_s,
    )  # fmt: skip


class LLMEngine:
    def __init__(
        self, config: EngineConfig, scheduler: str = "fcfs", enable_chunked_prefill: bool = True
    ) -> None:
        from policies.scheduling import fcfs  # noqa: F401  (registers "fcfs")

        self.config = config
        self.runner = ModelRunner(config)
        self.spec = self.runner.spec
        self.kv = BlockManager(self.runner.num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler_name = scheduler
        self.sched_config = SchedulerConfig(
            config.max_num_batched_tokens, config.max_num_seqs, enable_chunked_prefill
        )
        self.scheduler = SCHEDULERS.create(scheduler, self.sched_config)
        self._tokenizer: Tokenizer | None = None

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's own tokenizer (HF tokenizer.json or GGUF vocabulary), loaded on first use."""
        if self._tokenizer is None:
            tok = load_tokenizer(self.runner.source)
            if tok is None:
                raise ValueError(f"model {self.spec.name!r} ({self.runner.source.path}) ships no tokenizer")
            self._tokenizer = tok
        return self._tokenizer

    def generate_text(
        self, prompts: list[str], sampling: SamplingParams | list[SamplingParams]
    ) -> list[GenerationOutput]:
        """`generate` on text: encode with the model's tokenizer, decode the outputs into `.text`."""
        tok = self.tokenizer
        outs = self.generate([tok.encode(p) for p in prompts], sampling)
        for o in outs:
            o.text = tok.decode(o.output_token_ids)
        return outs

    @property
    def max_model_len(self) -> int:
        return self.runner.max_model_len

    def reset_kv(self) -> None:
        """An empty block manager over the same pool (no cached prefixes, no sequences, zeroed
        stats), as a simulated replica starts; the KV tensors keep stale content that no block
        hash points at. Use it between runs, and after a replay cut short by its time limit."""
        kv = self.kv
        self.kv = BlockManager(self.runner.num_blocks, kv.block_size, kv.enable_prefix_caching)

    def _core(self, num_requests: int) -> ReplicaCore:
        return ReplicaCore(0, self.scheduler, self.kv, RunRecorder(num_requests), self.max_model_len)

    def _lag(self) -> int:
        """Steps left in flight after a launch: 1 with async scheduling (greedy requests only)."""
        return 1 if self.config.async_scheduling != "off" and not self.runner.sampling else 0

    def _waits(self, batch) -> bool:
        """Whether `batch` must wait for the step in flight to be collected before it is launched:
        under async scheduling "graphs", an eager step (its Python launch would hold back the
        previous step's ids)."""
        return self.config.async_scheduling == "graphs" and not self.runner.runs_graph(batch)

    # -- offline generation -------------------------------------------------------------------
    def generate(
        self, prompts: list[list[int]], sampling: SamplingParams | list[SamplingParams]
    ) -> list[GenerationOutput]:
        """Serve token-id prompts to completion; outputs in prompt order. Each request stops on
        its own stop ids, on EOS unless it ignores EOS, or at its `max_tokens`."""
        params = sampling if isinstance(sampling, list) else [sampling] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} sampling params")
        eos = tuple(self.spec.eos_token_ids)
        core = self._core(len(prompts))
        seqs: list[Sequence] = []
        runner = self.runner
        runner.sampling.clear()
        for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
            if not prompt:
                raise ValueError(f"prompt {i} is empty")
            if min(prompt) < 0 or max(prompt) >= self.spec.vocab_size:
                bad = next(t for t in prompt if not 0 <= t < self.spec.vocab_size)
                raise ValueError(
                    f"prompt {i}: token id {bad} outside the vocabulary (size {self.spec.vocab_size})"
                )
            req = Request(id=i, arrival=0.0, prompt_len=len(prompt), output_len=p.max_tokens)
            seq = Sequence(req, token_ids=list(prompt))
            seq.stop_token_ids = frozenset(p.stop_token_ids) | frozenset(() if p.ignore_eos else eos)
            if not p.greedy:  # greedy is the runner's default: only the others are looked up
                runner.sampling[i] = p
            seqs.append(seq)
            core.add(seq, 0.0)
        lag = self._lag()
        inflight: deque[tuple[StepInFlight, Launched]] = deque()
        t0 = time.perf_counter()

        def settle_oldest() -> None:
            fl, h = inflight.popleft()
            tokens = runner.collect(h)
            core.settle(fl, time.perf_counter() - t0, tokens)

        while core.has_work or inflight:
            batch = core.schedule(time.perf_counter() - t0) if core.has_work else None
            # Preempted sequences keep their sampled tokens and their generator state (recompute
            # only rebuilds KV), so seeded outputs do not depend on whether preemption happened.
            if batch is None or batch.is_empty:
                if not inflight and not (batch and batch.preempted):
                    raise RuntimeError("scheduler made no progress with work pending (KV pool too small?)")
                if inflight:
                    settle_oldest()
                continue
            start = time.perf_counter() - t0
            if not lag:
                tokens = runner.execute(batch)
                core.complete(batch, start, time.perf_counter() - t0, tokens)
                continue
            if inflight and self._waits(batch):
                settle_oldest()
            h = runner.launch(batch)  # before `advance` moves the counts it stages from
            inflight.append((core.advance(batch, start), h))
            if len(inflight) > lag:
                settle_oldest()
        outs = []
        for seq, p in zip(seqs, params, strict=True):
            prompt_len = seq.request.prompt_len
            gen = seq.token_ids[prompt_len:] if seq.token_ids is not None else []
            if seq.status is Status.REJECTED:
                reason = f"rejected: {seq.reject_reason}"
            else:
                reason = (stop_reason(p, gen[-1], len(gen), eos) if gen else None) or "length"
            outs.append(
                GenerationOutput(
                    seq.id,
                    list(seq.token_ids[:prompt_len]) if seq.token_ids else [],
                    gen,
                    reason,
                    seq.num_cached_tokens,
                    seq.num_preemptions,
                )
            )
            runner.sampler.forget(seq.id)
        runner.sampling.clear()
        return outs

    # -- trace replay -------------------------------------------------------------------------
    def replay(
        self,
        trace: Trace,
        *,
        seed: int = 0,
        time_limit: float | None = None,
        step_log: list[ServingStep] | None = None,
    ) -> RunResult:
        """Serve `trace` against the wall clock (idle gaps skipped), greedy, ignoring EOS so that
        every request produces exactly its trace output length, and return the run's result.

        With `step_log`, each iteration appends its shape and the seconds of its three phases
        (`ServingStep`): the top of the loop (admitting arrivals) and the scheduler's decision, the
        runner's step (with the host time of its launch), and the bookkeeping up to the next loop
        top. Building the record's shape is
        taken out of the engine clock, so logging does not move the timeline. With async scheduling
        the phases overlap: only execute_s is logged, the step's period (from the previous step's
        ids, or its own launch when later, to its own ids), and the other two are 0."""
        core = self._core(len(trace))
        runner = self.runner
        runner.sampling.clear()
        arrivals = trace.arrival
        n = len(trace)
        vocab = self.spec.vocab_size
        # Prompts are built before the clock starts: their cost is the load generator's, not
        # the server's, and no cost model should have to account for it.
        prompts = [synthesize_prompt(trace.request(i), vocab, seed) for i in range(n)]
        lag = self._lag()
        nxt = 0
        skipped = 0.0
        t0 = time.perf_counter()
        iterations = 0
        # the logged step whose bookkeeping phase is still open, and when that phase began
        last: tuple[ServingStep, float] | None = None
        # with async scheduling: each step in flight, and its log record with when it was launched
        inflight: deque[tuple[StepInFlight, Launched, tuple[ServingStep, float] | None]] = deque()
        last_ids = 0.0  # when the last settled step's ids came back (perf_counter)

        def settle_oldest() -> None:
            nonlocal iterations, last_ids
            fl, h, rec = inflight.popleft()
            tokens = runner.collect(h)
            t_ids = time.perf_counter()
            core.settle(fl, t_ids - t0 + skipped, tokens)
            iterations += 1
            if rec is not None:  # its period: from the previous ids (or its own launch) to its ids
                step, t_launch = rec
                step_log.append(replace(step, execute_s=t_ids - max(last_ids, t_launch)))  # type: ignore[union-attr]
            last_ids = t_ids

        while nxt < n or core.has_work or inflight:
            top = time.perf_counter()
            now = top - t0 + skipped
            if last is not None:  # the bookkeeping phase ran until this loop top
                step_log.append(replace(last[0], complete_s=top - last[1]))  # type: ignore[union-attr]
                last = None
            if not core.has_work and not inflight and nxt < n and arrivals[nxt] > now:
                skipped += float(arrivals[nxt]) - now  # nothing to do until the next arrival
                now = float(arrivals[nxt])
            while nxt < n and arrivals[nxt] <= now:
                req = trace.request(nxt)
                core.add(Sequence(req, token_ids=prompts[nxt]), float(arrivals[nxt]))
                nxt += 1
            if time_limit is not None and now > time_limit:
                while inflight:
                    settle_oldest()
                break
            batch = core.schedule(now) if core.has_work else None
            if batch is None or batch.is_empty:
                if inflight:
                    settle_oldest()
                elif batch is not None:
                    if nxt >= n:
                        raise RuntimeError("replay stalled: work pending, nothing schedulable, no arrivals")
                    skipped += max(0.0, float(arrivals[nxt]) - now)
                continue
            if lag and inflight and self._waits(batch):
                settle_oldest()
            if step_log is not None:
                t_s = time.perf_counter()
                sh = core.shape(batch)  # before the step advances the sequences
                t_sh = time.perf_counter()
                skipped -= t_sh - t_s  # the log's own time is not the engine's
            if lag:
                h = runner.launch(batch)
                rec = None  # phases overlap: only the step's period is logged (as execute_s)
                if step_log is not None:
                    rec = (_logged(sh, 0.0, 0.0, runner.last_launch_seconds), t_sh)
                inflight.append((core.advance(batch, now), h, rec))
                if len(inflight) > lag:
                    settle_oldest()
                continue
            t_run = time.perf_counter()
            tokens = runner.execute(batch)
            t_end = time.perf_counter()
            core.complete(batch, now, t_end - t0 + skipped, tokens)
            iterations += 1
            if step_log is not None:
                step = _logged(sh, t_s - top, t_end - t_run, runner.last_launch_seconds)
                if core.has_work or nxt >= n:
                    last = (step, t_end)  # closed at the next loop top
                else:  # idle next: the phase ends with the bookkeeping
                    step_log.append(replace(step, complete_s=time.perf_counter() - t_end))
        if last is not None:
            step_log.append(replace(last[0], complete_s=time.perf_counter() - last[1]))  # type: ignore[union-attr]
        wall = time.perf_counter() - t0
        core.drain_unfinished()
        meta = {
            "kind": "engine",
            "name": f"engine-{self.spec.name}-{runner.device.kind}-{self.scheduler_name}",
            "trace": trace.name,
            "trace_source": trace.source,
            "num_requests": n,
            "config": {
                k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                for k, v in vars(self.config).items()
            },
            "device": runner.device.name,
            "model": self.spec.name,
            "dtype": str(runner.dtype).removeprefix("torch."),
            "attention_backend": runner.backend.name,
            "cuda_graphs": runner.graphs is not None,
            "step_graph_buckets": list(runner.step_graphs.buckets) if runner.step_graphs is not None else [],
            "layout": {"tp": 1, "pp": 1, "replicas": 1},
            "num_kv_blocks": runner.num_blocks,
            "kv_plan": runner.kv_plan.reason,
            "sim_end": time.perf_counter() - t0 + skipped,
            "idle_skipped_seconds": skipped,
            "iterations": iterations,
            "wall_seconds": wall,
            "kv": {
                "evictions": self.kv.stats.evictions,
                "hit_tokens": self.kv.stats.hit_tokens,
                "queried_tokens": self.kv.stats.queried_tokens,
                "peak_used_blocks": self.kv.stats.peak_used_blocks,
            },
        }
        return core.recorder.result(meta, arrivals=trace.arrival)
