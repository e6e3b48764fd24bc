"""The executor of the replica step: ScheduledBatch in, one sampled token per finishing sequence out.

For each scheduled sequence it computes tokens token_ids[c : c + n] (c = num_computed_tokens)
at positions c .. c + n - 1, writing their K/V into the blocks of the sequence's table and
attending causally over positions 0 .. c + n - 1; a sequence whose computed count reaches
its token count this step gets one sampled token. Bookkeeping (advancing counts, appending
tokens, freeing KV) stays with the caller's `ReplicaCore`, so the simulator and the engine
share one scheduler, one block manager and one notion of a step.

A step is `launch`ed (inputs staged, device work queued, its greedy ids copied back into one of
two pinned buffers behind an event) and later `collect`ed (wait on the event, read the ids);
`execute` is the two back to back. Between them the caller may schedule and launch the next step
(the engine's overlapped loop, as in vLLM's async scheduling and SGLang's overlap scheduler): the
ids sampled by the step in flight stay in the device buffer `sampled`, and the next step's
inputs name their rows there for the ids the host has not seen yet (PENDING).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from engine.attention import AttentionBackend, AttentionMetadata, TorchPagedAttention, build_metadata
from engine.config import EngineConfig
from engine.cuda_graphs import decode_buckets, pending_source
from engine.device import Device, get_device
from engine.kv_cache import KVCache, KVPlan, plan_num_blocks
from engine.model import DecoderModel
from engine.model_spec import DecoderSpec
from engine.sampling import Sampler, SamplingParams, greedy_ids
from engine.weights import WeightSource, load_into, resolve_source
from policies.scheduling.batch import ScheduledBatch
from policies.sequence import PENDING, Sequence

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_ACTIVATION_MARGIN = 256 * 2**20  # cuBLAS workspaces, allocator slack, graph pools


@dataclass
class StepInputs:
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    meta: AttentionMetadata
    sample_rows: list[int]  # row of each sampling sequence's last token, in batch order
    sample_seqs: list[Sequence]
    # sample_rows on the device, copied before the forward pass is queued: a copy from pageable
    # memory waits for the stream, and made after the forward it would hold `launch` until the
    # step's device work is done (so the host could not schedule the next step meanwhile)
    sample_index: torch.Tensor | None = None


@dataclass
class Launched:
    """A step whose device work is queued; its greedy ids arrive in output slot `slot`."""

    n: int  # ids copied back (rows 0 .. n-1 of the runner's `sampled`)
    slot: int
    seqs: list[Sequence]  # the sequences that sample, in batch order
    rows: list[int] | None  # their rows among the n (None: all of them, in order)
    logits: torch.Tensor | None  # the step's logits rows (rows index them too); valid until the next launch
    t0: float  # when the launch began (perf_counter)
    timed: bool = False  # device time recorded (`ModelRunner.time_device`, graph steps)


def make_backend(name: str, device: Device, spec: DecoderSpec) -> AttentionBackend:
    if name == "auto":
        name = "triton" if device.supports_triton else "torch"
    if name == "torch":
        return TorchPagedAttention()
    if name == "triton":
        if not device.supports_triton:
            raise RuntimeError(
                f"attention_backend='triton' needs CUDA with triton installed; device is {device.kind}"
            )
        from engine.triton_attention import TritonPagedAttention

        return TritonPagedAttention(device.torch_device, spec.num_heads, spec.num_kv_heads)
    raise ValueError(f"unknown attention backend {name!r}")


def build_model(
    spec_source: WeightSource,
    max_positions: int,
    backend: AttentionBackend,
    dtype: torch.dtype,
    device: torch.device,
    seed: int,
) -> DecoderModel:
    """Construct on the meta device (no wasted init), materialize, then load or randomize weights."""
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = DecoderModel(spec_source.spec, max_positions, backend)
    finally:
        torch.set_default_dtype(prev)
    model.to_empty(device=device)
    model.rotary.rebuild_(device)
    if spec_source.tensors is None:
        model.init_random_(seed)
    else:
        load_into(model, spec_source.tensors(), spec_source.path)
    model.eval()
    return model


class ModelRunner:
    """Owns the model, its KV pools, the sampler and (on CUDA) the decode and small-step graphs."""

    def __init__(self, config: EngineConfig, source: WeightSource | None = None) -> None:
        self.config = config
        self.device = get_device(config.device)
        self.source = source or resolve_source(config.model)
        self.spec = self.source.spec
        self.dtype = self.device.default_dtype if config.dtype == "auto" else _DTYPES[config.dtype]
        self.block_size = config.block_size
        self.max_model_len = config.max_model_len or min(self.spec.max_position_embeddings, 32768)
        if config.seed is not None:
            torch.manual_seed(config.seed)
        self.backend = make_backend(config.attention_backend, self.device, self.spec)
        dev = self.device.torch_device
        self.model = build_model(self.source, self.max_model_len, self.backend, self.dtype, dev, config.seed)
        if self.backend.name == "triton":
            self.model.use_fused_ops(True)
        self.weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        activation = self._profile_activation_bytes() if self.device.kind == "cuda" else 0
        self.kv_plan: KVPlan = plan_num_blocks(
            self.spec,
            self.device,
            self.dtype,
            self.block_size,
            num_kv_blocks=config.num_kv_blocks,
            gpu_memory_utilization=config.gpu_memory_utilization,
            cpu_kv_fraction=config.cpu_kv_fraction,
            activation_bytes=activation,
        )
        self.kv = KVCache(self.spec, self.kv_plan.num_blocks, self.block_size, self.dtype, dev)
        self.model.bind_kv_cache(self.kv.k, self.kv.v)
        self.sampler = Sampler(dev, config.seed)
        # Greedy ids of the last launched steps, on the device (every path writes rows 0 .. n-1),
        # and two pinned host slots they are copied back to, each behind its own event.
        nrows = max(decode_buckets(config.max_num_seqs)[-1], config.max_num_seqs)
        self.sampled = torch.zeros(nrows, dtype=torch.int64, device=dev)
        cuda = self.device.kind == "cuda"
        self._out = [torch.empty(nrows, dtype=torch.int64, pin_memory=cuda) for _ in range(2)]
        self._events = [torch.cuda.Event() for _ in range(2)] if cuda else None
        self._slot = 0
        self._sources: dict[int, int] = {}  # request id -> its row of `sampled` in the last launch
        # With time_device (CUDA), graph steps are timed on the device too, from after their inputs
        # are staged to after their ids are copied back (`last_device_seconds`; None for eager steps,
        # whose device timeline waits on Python's launches): what a step costs when the host runs ahead.
        self.time_device = False
        self.last_device_seconds: float | None = None
        self.last_launch_seconds = 0.0  # host seconds of the last `launch` call
        # host seconds of the last eager launch's input preparation (None after a graph step): it
        # runs before the step's first kernel is queued, so the device waits for all of it
        self.last_prepare_seconds: float | None = None
        self._timers = (
            [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(2)]
            if cuda
            else None
        )
        # request id -> params of requests that do not decode greedily (absent = greedy, the
        # common case, which then costs no lookup work per step)
        self.sampling: dict[int, SamplingParams] = {}
        self.graphs = None
        if config.cuda_graphs and self.device.supports_graphs and self.backend.name == "triton":
            from engine.cuda_graphs import DecodeGraphs

            self.graphs = DecodeGraphs(
                self.model,
                self.kv,
                self.backend,
                self.max_model_len,
                max_batch=config.max_num_seqs,
                gemv=config.decode_gemv,
                sampled=self.sampled,
            )
        self.step_graphs = None
        limit = min(config.step_graph_tokens, config.max_num_batched_tokens)
        if self.graphs is not None and limit > 0:
            from engine.step_graphs import StepGraphs

            self.step_graphs = StepGraphs(
                self.model, self.kv, self.backend, self.max_model_len, limit, config.max_num_seqs,
                sampled=self.sampled,
            )
        self.last_step_seconds = 0.0

    @property
    def num_blocks(self) -> int:
        """Usable KV blocks: give the block manager (and the simulator mirroring it) exactly this."""
        return self.kv.num_blocks

    # -- inputs ------------------------------------------------------------------------------
    def prepare(self, batch: ScheduledBatch, sources: dict[int, int] | None = None) -> StepInputs:
        """Eager inputs; a PENDING id (a sequence's last) is taken from row sources[its id] of
        `sampled` on the device (see the module docstring)."""
        ids: list[int] = []
        pending: list[tuple[int, int]] = []  # (token row, row of `sampled`)
        pos: list[int] = []
        q_lens: list[int] = []
        ctx: list[int] = []
        tables: list[list[int]] = []
        rows: list[int] = []
        sample_seqs: list[Sequence] = []
        for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
            c = seq.num_computed_tokens
            toks = seq.token_ids
            if toks is None:
                raise ValueError(f"sequence {seq.id} has no token ids; the engine computes real tokens")
            if len(toks) != seq.num_tokens:
                raise ValueError(f"sequence {seq.id}: {len(toks)} token ids but num_tokens={seq.num_tokens}")
            if n < 1 or c + n > seq.num_tokens:
                raise ValueError(f"sequence {seq.id}: cannot compute {n} tokens from {c} of {seq.num_tokens}")
            if c + n > self.max_model_len:
                raise ValueError(
                    f"sequence {seq.id}: {c + n} tokens exceed max_model_len={self.max_model_len}"
                )
            ids.extend(toks[c : c + n])
            if c + n == len(toks) and toks[-1] == PENDING:
                ids[-1] = 0
                pending.append((len(ids) - 1, pending_source(seq, sources)))
            pos.extend(range(c, c + n))
            q_lens.append(n)
            ctx.append(c + n)
            tables.append(seq.block_table)
            if c + n == seq.num_tokens:
                rows.append(len(ids) - 1)
                sample_seqs.append(seq)
        dev = self.device.torch_device
        meta = build_metadata(q_lens, ctx, tables, self.block_size, dev, pad_block=self.kv.scratch_block)
        input_ids = torch.tensor(ids, dtype=torch.int64, device=dev)
        if pending:
            at, src = zip(*pending, strict=True)
            idx = torch.tensor(src, dtype=torch.int64, device=dev)
            input_ids[torch.tensor(at, dtype=torch.int64, device=dev)] = self.sampled.index_select(0, idx)
        return StepInputs(
            input_ids=input_ids,
            positions=torch.tensor(pos, dtype=torch.int64, device=dev),
            meta=meta,
            sample_rows=rows,
            sample_seqs=sample_seqs,
            sample_index=torch.tensor(rows, dtype=torch.int64, device=dev) if rows else None,
        )

    # -- one step ----------------------------------------------------------------------------
    @torch.inference_mode()
    def forward_hidden(self, inp: StepInputs) -> torch.Tensor:
        """Eager forward pass (any step shape); returns final hidden states [T, hidden]."""
        self.backend.prepare(inp.meta)
        return self.model(inp.input_ids, inp.positions, inp.meta)

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> list[int]:
        """Run one scheduled step; returns the sampled tokens of finishing sequences, in batch order."""
        return self.collect(self.launch(batch))

    def runs_graph(self, batch: ScheduledBatch) -> bool:
        """Whether `launch` replays a CUDA graph for this step (decode or step graph), else eager."""
        g, sg = self.graphs, self.step_graphs
        if g is not None and g.accepts(batch.num_new_tokens):
            return True
        return sg is not None and sg.bucket(batch) is not None

    @torch.inference_mode()
    def launch(self, batch: ScheduledBatch) -> Launched:
        """Stage and queue one step (decode graph, step graph or eager) without waiting for it.
        Its inputs may hold PENDING ids of the previous launch only: `collect` every launch but
        the last before launching again."""
        t0 = time.perf_counter()
        rows: list[int] | None = None
        logits: torch.Tensor | None = None
        g = self.graphs
        sg = self.step_graphs
        slot = self._slot ^ 1
        timed = self.time_device and self._timers is not None
        self.last_prepare_seconds = None
        if batch.is_empty:
            seqs: list[Sequence] = []
            timed = False
        elif g is not None and g.accepts(batch.num_new_tokens):
            size, rows = g.load(batch.seqs, self._sources)
            if timed:
                self._timers[slot][0].record()
            g.graphs[size][0].replay()
            seqs = batch.seqs if rows is None else [batch.seqs[i] for i in rows]
            logits = g.logits(size)
        elif sg is not None and (t := sg.bucket(batch)) is not None:
            _, seqs = sg.load(batch, t, self._sources)
            if timed:
                self._timers[slot][0].record()
            sg.graphs[t][0].replay()
            logits = sg.logits(t)
        else:
            timed = False
            inp = self.prepare(batch, self._sources)
            self.last_prepare_seconds = time.perf_counter() - t0
            hidden = self.forward_hidden(inp)
            seqs = inp.sample_seqs
            if seqs:
                logits = self.model.compute_logits(hidden.index_select(0, inp.sample_index))
                greedy_ids(logits, self.sampled[: len(seqs)])
        n = len(seqs) if rows is None else len(batch.seqs)
        self._slot = slot
        if n:
            self._out[slot][:n].copy_(self.sampled[:n], non_blocking=True)
        if timed:
            self._timers[slot][1].record()
        if self._events is not None:
            self._events[slot].record()
        self._sources = {s.id: i for i, s in enumerate(seqs)} if rows is None else {
            s.id: r for s, r in zip(seqs, rows, strict=True)
        }
        self.last_launch_seconds = time.perf_counter() - t0
        return Launched(n, slot, seqs, rows, logits, t0, timed)

    def collect(self, step: Launched) -> list[int]:
        """Wait for a launched step and return its sampled ids (requests that do not decode
        greedily redraw theirs from the step's logits: only a step collected before the next
        launch still has them)."""
        if self._events is not None:
            self._events[step.slot].synchronize()
        else:
            self.device.synchronize()
        tokens = self._out[step.slot][: step.n].tolist()
        rows = step.rows
        if rows is not None:
            tokens = [tokens[i] for i in rows]
        if self.sampling and step.seqs:
            assert step.logits is not None
            self._resample(tokens, step.seqs, step.logits, rows)
        self.last_step_seconds = time.perf_counter() - step.t0
        if step.timed:
            start, end = self._timers[step.slot]
            self.last_device_seconds = start.elapsed_time(end) / 1e3
        else:
            self.last_device_seconds = None
        return tokens

    def _resample(
        self, tokens: list[int], seqs: list[Sequence], logits: torch.Tensor, rows: list[int] | None
    ) -> None:
        """Redraw, from a step's logits, the tokens of the sequences that do not decode greedily
        (`rows[j]` is sequence j's row of `logits`; None: row j)."""
        special = [(j, p) for j, s in enumerate(seqs) if (p := self.sampling.get(s.id)) and not p.greedy]
        if not special:
            return
        at = [rows[j] if rows is not None else j for j, _ in special]
        sel = torch.tensor(at, dtype=torch.int64, device=self.device.torch_device)
        drawn = self.sampler.sample(
            logits.index_select(0, sel).float(), [p for _, p in special], [seqs[j].id for j, _ in special]
        )
        for (j, _), tok in zip(special, drawn, strict=True):
            tokens[j] = tok

    @torch.inference_mode()
    def logits_of(self, batch: ScheduledBatch) -> torch.Tensor:
        """Logits of every computed token of the step ([T, vocab], float32), for tests."""
        g = self.graphs
        if g is not None and g.accepts(batch.num_new_tokens):
            b = len(batch.seqs)
            size, _ = g.load(batch.seqs)
            g.graphs[size][0].replay()  # as `launch` does; the logits are what a test reads
            return g.logits(size)[:b].to(torch.float32, copy=True)
        inp = self.prepare(batch)
        hidden = self.forward_hidden(inp)
        return self.model.compute_logits(hidden).float()

    # -- memory sizing ---------------------------------------------------------------------
    def _profile_activation_bytes(self) -> int:
        """Peak extra memory of the largest step: run max_num_batched_tokens tokens once
        against a throw-away KV pool just big enough, as vLLM's profile run does."""
        cfg = self.config
        total = cfg.max_num_batched_tokens
        lens: list[int] = []
        while sum(lens) < total:
            lens.append(min(self.max_model_len, total - sum(lens)))
        bs = self.block_size
        nblocks = sum(-(-n // bs) for n in lens)
        dev = self.device.torch_device
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        tmp = KVCache(self.spec, nblocks, bs, self.dtype, dev)
        self.model.bind_kv_cache(tmp.k, tmp.v)
        tables: list[list[int]] = []
        nxt = 0
        for n in lens:
            k = -(-n // bs)
            tables.append(list(range(nxt, nxt + k)))
            nxt += k
        meta = build_metadata(lens, lens, tables, bs, dev, pad_block=tmp.scratch_block)
        ids = torch.zeros(total, dtype=torch.int64, device=dev)
        pos = torch.cat([torch.arange(n, device=dev) for n in lens])
        with torch.inference_mode():
            self.backend.prepare(meta)
            hidden = self.model(ids, pos, meta)
            rows = hidden[: min(cfg.max_num_seqs, total)]
            self.model.compute_logits(rows).float().softmax(-1)
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) - base - tmp.nbytes
        del tmp, hidden, rows, meta
        for layer in self.model.layers:
            layer.self_attn.k_cache = layer.self_attn.v_cache = None
        self.device.empty_cache()
        return int(peak) + _ACTIVATION_MARGIN
