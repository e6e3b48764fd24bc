"""Analytic (roofline) iteration-time model of a dense transformer on a given accelerator.

Every operator of one forward pass gets time = max(FLOPs / (peak * compute efficiency),
bytes / (memory bandwidth * memory efficiency)) -- the roofline model of Williams, Waterman and
Patterson (CACM 2009) applied per operator, as LLM-Viewer (Yuan et al., 2024, "LLM Inference
Unveiled") and Vidur (Agrawal et al., MLSys 2024) do for LLM serving -- plus communication
terms for tensor parallelism (ring all-reduce, Patarasuk & Yuan 2009) and pipeline sends, plus a
fixed per-iteration CPU overhead. Efficiency factors live in `AnalyticEfficiency`.

Per layer, per device (TP shards heads, MLP columns and the vocabulary; KV heads are replicated
when tp > num_kv_heads, as vLLM does):
  qkv_proj, o_proj, gate_up_proj, down_proj   GEMMs over all T new tokens: weights + activations
  attention (prefill chunks, aggregated)       flops 4*n*(c + (n+1)/2)*heads*head_dim (causal),
                                               bytes KV of (c+n) tokens + q and o of n tokens
  attention (decode)                           flops 4*ctx*heads*head_dim, bytes ctx * KV bytes
                                               per token per layer -- q/o bytes are left out so
                                               that decode attention is linear in the summed
                                               context with zero intercept (see decode_line)
  2 fused residual-add + RMSNorm, SwiGLU, Qwen3 q/k norm   memory-bound elementwise
  2 all-reduces of T*hidden activations when tp > 1
Per forward pass: embedding lookup (+ all-reduce of the vocab-parallel embedding when tp > 1),
final RMSNorm, LM head over one logit row per sequence in the batch (+ logits all-gather when
tp > 1), the send of T*hidden activations to the next stage when pp > 1, and the overhead.

Pipeline simplification: layers are split evenly, a stage runs num_layers/pp layers (fractional
when pp does not divide num_layers), and the embedding, final norm, LM head and the per-iteration
overhead are spread evenly too: each stage carries 1/pp of them, so the pp stage times of one
micro-batch add up to exactly one forward pass and one overhead. Every stage includes a send to
the next stage (the last stage's "send" stands for returning sampled tokens to the first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from backends.accelerators import AcceleratorSpec, get_accelerator
from backends.cost_model import COST_MODELS, BatchShape, OverlapParts, ParallelLayout
from backends.models import ModelArch, get_model

_WEIGHT_BYTES = {"bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}
_KV_BYTES = {"bf16": 2, "fp16": 2, "fp8": 1}
_ACT_BYTES = 2  # hidden states stay in 16-bit even with FP8/INT8 weights (W8A8 quantizes inside the GEMM)


@dataclass(frozen=True)
class AnalyticEfficiency:
    """Fractions of datasheet peaks that kernels reach; defaults are typical, not measured here.

    gemm_compute 0.70   large cuBLAS/CUTLASS BF16 GEMMs reach roughly 70-80% of dense peak.
    gemm_memory 0.80    small-batch GEMMs stream weights at roughly 80% of HBM peak.
    attn_compute 0.50   FlashAttention-2 forward reaches 50-73% of peak on A100 (Dao, 2023).
    attn_memory 0.70    paged decode attention (vLLM, FlashInfer) gathers scattered KV blocks.
    elementwise_memory 0.70   norms and activations, memory-bound kernels.
    allreduce 0.70      NCCL bus bandwidth vs link peak for MB-sized messages (nccl-tests); also
                        used for the logits all-gather and the pipeline send.
    comm_latency_s 10e-6  fixed cost of each collective / point-to-point transfer.
    overhead_s 1e-3     per-iteration CPU work (scheduling, input preparation, sampling, launch
                        gaps) of a CUDA-graph engine such as vLLM; an order of magnitude, to be
                        replaced by the calibrated cost model's fitted intercept.
    """

    gemm_compute: float = 0.70
    gemm_memory: float = 0.80
    attn_compute: float = 0.50
    attn_memory: float = 0.70
    elementwise_memory: float = 0.70
    allreduce: float = 0.70
    comm_latency_s: float = 10e-6
    overhead_s: float = 1e-3

    def __post_init__(self) -> None:
        for f in ("gemm_compute", "gemm_memory", "attn_compute", "attn_memory", "elementwise_memory",
                  "allreduce"):
            v = getattr(self, f)
            if not 0 < v <= 1:
                raise ValueError(f"AnalyticEfficiency.{f} must be in (0, 1], got {v!r}")
        for f in ("comm_latency_s", "overhead_s"):
            v = getattr(self, f)
            if not v >= 0:
                raise ValueError(f"AnalyticEfficiency.{f} must be >= 0 seconds, got {v!r}")


@dataclass(frozen=True)
class OpCost:
    """One operator's cost on one stage of one device, for reports and for checking the fast path.

    `count` is how many times the stage runs it (layers per stage, or 1/pp for per-pass ops);
    `seconds` = count * (max(flops / compute_rate, (weight_bytes + act_bytes) / memory_rate) + fixed_s).
    """

    group: str
    op: str
    count: float
    flops: float
    weight_bytes: float
    act_bytes: float
    compute_rate: float  # effective FLOP/s (inf where the op is treated as memory- or link-bound)
    memory_rate: float  # effective bytes/s of memory or link
    fixed_s: float
    seconds: float

    @property
    def bound(self) -> str:
        if self.flops == 0 and self.weight_bytes + self.act_bytes == 0:
            return "latency"
        t_c = self.flops / self.compute_rate
        t_m = (self.weight_bytes + self.act_bytes) / self.memory_rate
        return "compute" if t_c > t_m else "memory"


def _check_shard(model: ModelArch, layout: ParallelLayout) -> None:
    tp = layout.tp
    if model.num_heads % tp:
        raise ValueError(f"tp={tp} must divide num_heads={model.num_heads} of model {model.name!r}")
    if model.num_kv_heads % tp and tp % model.num_kv_heads:
        raise ValueError(f"tp={tp} and num_kv_heads={model.num_kv_heads} of model {model.name!r}: one must "
                         f"divide the other (KV heads are sharded or replicated whole)")
    if layout.pp > model.num_layers:
        raise ValueError(f"pp={layout.pp} exceeds num_layers={model.num_layers} of model {model.name!r}")


def _kv_heads_per_device(model: ModelArch, tp: int) -> int:
    return max(1, model.num_kv_heads // tp)


@COST_MODELS.register("analytic")
class AnalyticCostModel:
    """Roofline cost model implementing `backends.cost_model.CostModel`.

    `model` and `accelerator` may be catalog names. `dtype` is the weight/GEMM dtype ('bf16',
    'fp16', 'fp8', 'int8'); attention runs in 16-bit; `kv_dtype` is the KV-cache dtype
    (default: 'bf16', or 'fp16' when dtype is 'fp16').
    """

    name = "analytic"

    def __init__(
        self,
        model: ModelArch | str,
        accelerator: AcceleratorSpec | str,
        layout: ParallelLayout | None = None,
        dtype: str = "bf16",
        efficiency: AnalyticEfficiency | None = None,
        kv_dtype: str | None = None,
    ) -> None:
        self.model = get_model(model) if isinstance(model, str) else model
        self.accelerator = get_accelerator(accelerator) if isinstance(accelerator, str) else accelerator
        self.layout = layout if layout is not None else ParallelLayout()
        self.efficiency = efficiency if efficiency is not None else AnalyticEfficiency()
        if dtype not in _WEIGHT_BYTES:
            raise ValueError(f"dtype must be one of {sorted(_WEIGHT_BYTES)}, got {dtype!r}")
        if kv_dtype is None:
            kv_dtype = "fp16" if dtype == "fp16" else "bf16"
        if kv_dtype not in _KV_BYTES:
            raise ValueError(f"kv_dtype must be one of {sorted(_KV_BYTES)}, got {kv_dtype!r}")
        self.dtype = dtype
        self.kv_dtype = kv_dtype
        _check_shard(self.model, self.layout)
        self._precompute()

    # ------------------------------------------------------------------ per-device constants
    def _precompute(self) -> None:
        m, acc, eff = self.model, self.accelerator, self.efficiency
        tp, pp = self.layout.tp, self.layout.pp
        wb, ab, kvb = _WEIGHT_BYTES[self.dtype], _ACT_BYTES, _KV_BYTES[self.kv_dtype]
        h, hd = m.hidden_size, m.head_dim
        heads = m.num_heads // tp
        kvh = _kv_heads_per_device(m, tp)
        q, kv = heads * hd, kvh * hd
        inter = m.intermediate_size / tp
        vocab = m.vocab_size / tp

        self._wb, self._ab = wb, ab
        self._heads, self._q, self._kv, self._inter, self._vocab = heads, q, kv, inter, vocab
        self.layers_per_stage = m.num_layers / pp

        gemm_rate = acc.peak_flops(self.dtype) * eff.gemm_compute
        attn_rate = acc.peak_flops("fp16" if self.dtype == "fp16" else "bf16") * eff.attn_compute
        bw = acc.memory_bw_gbps * 1e9
        link = acc.interconnect_bw_gbps * 1e9 * eff.allreduce
        self._gemm_rate, self._attn_rate = gemm_rate, attn_rate
        self._gemm_mem = bw * eff.gemm_memory
        self._attn_mem = bw * eff.attn_memory
        self._elem_mem = bw * eff.elementwise_memory
        self._link = link
        lat = eff.comm_latency_s

        # GEMMs per device as (weight params incl. bias, multiply-adds per token, input width, output width).
        bias = (q + 2 * kv) if m.attention_bias else 0
        self._gemm_shapes = {
            "qkv_proj": (h * (q + 2 * kv) + bias, h * (q + 2 * kv), h, q + 2 * kv),
            "o_proj": (q * h, q * h, q, h),
            "gate_up_proj": (2 * h * inter, 2 * h * inter, h, 2 * inter),
            "down_proj": (inter * h, inter * h, inter, h),
        }
        # Per-GEMM linear pieces: time(T) = max(T * c, w + T * a)
        g = []
        for params, macs, fan_in, fan_out in self._gemm_shapes.values():
            g.append((2 * macs / gemm_rate, params * wb / self._gemm_mem,
                      (fan_in + fan_out) * ab / self._gemm_mem))
        (self._qkv_c, self._qkv_w, self._qkv_a), (self._o_c, self._o_w, self._o_a), \
            (self._gu_c, self._gu_w, self._gu_a), (self._dn_c, self._dn_w, self._dn_a) = g

        # Elementwise per layer: 2 fused add+RMSNorm (read x and residual, write both), SwiGLU
        # (read gate and up, write product), Qwen3 q/k norm (read and write q and k).
        elem_tok = 2 * 4 * h * ab + 3 * inter * ab
        elem_w = 2 * h * wb
        if m.qk_norm:
            elem_tok += 2 * (q + kv) * ab
            elem_w += 2 * hd * wb

        # Attention per layer.
        self._attn_flops_unit = 4 * heads * hd  # times n*(c+(n+1)/2) for prefill, times ctx for decode
        self._kv_tok_bytes = 2 * kv * kvb  # K and V of one token in one layer on this device
        self._qo_tok_bytes = 2 * q * ab
        self._pf_c = self._attn_flops_unit / attn_rate
        self._pf_kv = self._kv_tok_bytes / self._attn_mem
        self._pf_qo = self._qo_tok_bytes / self._attn_mem
        self._dec_coef = max(self._attn_flops_unit / attn_rate, self._kv_tok_bytes / self._attn_mem)

        # TP all-reduce of T*h activations, ring algorithm: 2(tp-1)/tp of the message per device.
        ar_factor = 2 * (tp - 1) / tp
        ag_factor = (tp - 1) / tp
        self._ar_factor, self._ag_factor = ar_factor, ag_factor
        self._ar_tok = ar_factor * h * ab / link if tp > 1 else 0.0
        self._ar_lat = lat if tp > 1 else 0.0

        L = self.layers_per_stage
        inv_pp = 1.0 / pp
        self._inv_pp = inv_pp
        # Layer-level constant and per-token terms that are pure sums (no max) folded together.
        self._layer_tok = elem_tok / self._elem_mem + 2 * self._ar_tok
        self._layer_const = elem_w / self._elem_mem + 2 * self._ar_lat
        # Per-pass terms, each stage carrying 1/pp of them. LM head: a GEMM over one row per sequence,
        # then (tp > 1) an all-gather of the vocab-sharded logits.
        self._lm_c = 2 * h * vocab / gemm_rate
        self._lm_w = vocab * h * wb / self._gemm_mem
        self._lm_a = (h + vocab) * ab / self._gemm_mem
        self._gather_seq = ag_factor * m.vocab_size * ab / link if tp > 1 else 0.0
        # Embedding: gather T rows, write T rows (+ all-reduce of the vocab-parallel result when tp > 1);
        # final RMSNorm over all T tokens like a layer's fused add+norm.
        pass_tok = (h * wb + h * ab) / self._elem_mem + self._ar_tok + 4 * h * ab / self._elem_mem
        # embedding all-reduce latency, final-norm weight read, logits all-gather latency
        pass_const = self._ar_lat + h * wb / self._elem_mem + self._ar_lat
        self._pass_tok = pass_tok * inv_pp
        self._pass_const = pass_const * inv_pp
        # Pipeline send of T*h activations to the next stage.
        self._send_tok = h * ab / link if pp > 1 else 0.0
        self._send_const = lat if pp > 1 else 0.0
        self._overhead = eff.overhead_s * inv_pp
        self._decode_b = L * self._dec_coef
        # Memos of `_rest`'s pieces that depend on one count only (pure functions of it, so the
        # same floats): the simulator prices ~30k prefill-chunk stages per 10k requests, and
        # these are most of each price.
        self._gemm_memo: dict[int, float] = {}
        self._head_memo: dict[int, float] = {}

    def _gemms(self, t: int) -> float:
        """The four GEMMs of one layer for t tokens (the first terms of `_rest`'s layer sum)."""
        g = self._gemm_memo.get(t)
        if g is None:
            g = self._gemm_memo[t] = (
                max(t * self._qkv_c, self._qkv_w + t * self._qkv_a)
                + max(t * self._o_c, self._o_w + t * self._o_a)
                + max(t * self._gu_c, self._gu_w + t * self._gu_a)
                + max(t * self._dn_c, self._dn_w + t * self._dn_a)
            )
        return g

    def _head(self, s: int) -> float:
        """The LM head and logits gather for s sequences, this stage's share."""
        h = self._head_memo.get(s)
        if h is None:
            h = self._head_memo[s] = (
                max(s * self._lm_c, self._lm_w + s * self._lm_a) + s * self._gather_seq
            ) * self._inv_pp
        return h

    # ------------------------------------------------------------------ CostModel protocol
    def stage_time(self, shape: BatchShape) -> float:
        nd = shape.num_decode
        ctx = shape.decode_context
        if ctx < nd or (nd == 0 and ctx != 0) or nd < 0:
            raise ValueError(f"BatchShape: decode_context ({ctx}) must be >= num_decode ({nd}) and 0 when "
                             f"there are no decode sequences (each decode attends to at least its own token)")
        # Decode attention is the only term that depends on ctx, and it is b * ctx with no intercept,
        # so a pure-decode stage is exactly _rest + b * ctx = a + b * ctx (see decode_line).
        return self._rest(shape.prefill, nd) + self._decode_b * ctx

    def _rest(self, prefill: list[tuple[int, int]], nd: int) -> float:
        """Stage seconds of everything but decode attention."""
        t = nd
        if prefill:
            fl = 0.0
            kvt = 0
            nt = 0
            for n, c in prefill:
                if n < 1 or c < 0:
                    raise ValueError(f"BatchShape.prefill entry ({n}, {c}): expected "
                                     f"(new tokens >= 1, cached tokens >= 0)")
                nt += n
                kvt += c + n
                fl += n * (c + (n + 1) * 0.5)
            t += nt
            s = nd + len(prefill)
            attn = max(fl * self._pf_c, kvt * self._pf_kv + nt * self._pf_qo)
        elif nd == 0:
            return 0.0
        else:
            s = nd
            attn = 0.0
        # Left to right as before: the memoized GEMM sum is the leading part of the layer sum.
        layer = self._gemms(t) + attn + t * self._layer_tok + self._layer_const
        return (
            layer * self.layers_per_stage
            + self._head(s)
            + t * self._pass_tok
            + self._pass_const
            + t * self._send_tok
            + self._send_const
            + self._overhead
        )

    def overlap_parts(self, shape: BatchShape) -> OverlapParts:
        """The whole iteration is device work: this model has no host time to hide."""
        return OverlapParts(0.0, 0.0, self.stage_time(shape), 0.0, True)

    def decode_line(self, num_decode: int) -> tuple[float, float]:
        """(a, b): a pure-decode stage costs a + b * decode_context, bit for bit as `stage_time` computes
        it (both take `a` from `_rest`). An empty batch costs nothing: (0, 0)."""
        if num_decode < 0:
            raise ValueError(f"num_decode must be >= 0, got {num_decode}")
        if num_decode == 0:
            return 0.0, 0.0
        return self._rest([], num_decode), self._decode_b

    # ------------------------------------------------------------------ reports
    def op_table(self, shape: BatchShape) -> list[OpCost]:
        """Per-operator FLOPs, bytes and seconds of one stage, computed directly from the model
        shape (independently of the precomputed coefficients `stage_time` uses)."""
        self.stage_time(shape)  # validates the shape
        m, eff = self.model, self.efficiency
        tp, pp = self.layout.tp, self.layout.pp
        wb, ab = self._wb, self._ab
        h, hd = m.hidden_size, m.head_dim
        q, kv, inter, vocab = self._q, self._kv, self._inter, self._vocab
        L, per_pass = self.layers_per_stage, 1.0 / pp
        inf = math.inf
        t, s = shape.num_tokens, shape.num_seqs
        if t == 0:
            return []
        ops: list[OpCost] = []

        def add(group: str, op: str, count: float, flops: float, wbytes: float, abytes: float,
                crate: float, mrate: float, fixed: float = 0.0) -> None:
            sec = count * (max(flops / crate, (wbytes + abytes) / mrate) + fixed)
            ops.append(OpCost(group, op, count, flops, wbytes, abytes, crate, mrate, fixed, sec))

        for op, (params, macs, fan_in, fan_out) in self._gemm_shapes.items():
            group = "mlp" if op in ("gate_up_proj", "down_proj") else op
            add(group, op, L, 2 * t * macs, params * wb, t * (fan_in + fan_out) * ab,
                self._gemm_rate, self._gemm_mem)

        unit = 4 * self._heads * hd
        if shape.prefill:
            fl = sum(n * (c + (n + 1) / 2) for n, c in shape.prefill) * unit
            kv_read = sum(c + n for n, c in shape.prefill) * self._kv_tok_bytes
            qo = sum(n for n, _ in shape.prefill) * self._qo_tok_bytes
            add("attention_prefill", "attention_prefill", L, fl, 0.0, kv_read + qo,
                self._attn_rate, self._attn_mem)
        if shape.num_decode:
            ctx = shape.decode_context
            add("attention_decode", "attention_decode", L, ctx * unit, 0.0, ctx * self._kv_tok_bytes,
                self._attn_rate, self._attn_mem)

        add("norm_elementwise", "add_rmsnorm_x2", L, 0.0, 2 * h * wb, t * 2 * 4 * h * ab, inf, self._elem_mem)
        add("mlp", "swiglu", L, 0.0, 0.0, t * 3 * inter * ab, inf, self._elem_mem)
        if m.qk_norm:
            add("norm_elementwise", "qk_rmsnorm", L, 0.0, 2 * hd * wb, t * 2 * (q + kv) * ab,
                inf, self._elem_mem)

        lat = eff.comm_latency_s
        if tp > 1:
            msg = t * h * ab
            add("tp_comm", "allreduce_x2", 2 * L, 0.0, 0.0, self._ar_factor * msg, inf, self._link, lat)
            add("tp_comm", "embedding_allreduce", per_pass, 0.0, 0.0, self._ar_factor * msg,
                inf, self._link, lat)
            add("tp_comm", "logits_allgather", per_pass, 0.0, 0.0, self._ag_factor * s * m.vocab_size * ab,
                inf, self._link, lat)

        add("embedding", "embedding", per_pass, 0.0, t * h * wb, t * h * ab, inf, self._elem_mem)
        add("lm_head", "final_norm", per_pass, 0.0, h * wb, t * 4 * h * ab, inf, self._elem_mem)
        add("lm_head", "lm_head", per_pass, 2 * s * h * vocab, vocab * h * wb, s * (h + vocab) * ab,
            self._gemm_rate, self._gemm_mem)
        if pp > 1:
            add("pp_send", "pp_send", 1.0, 0.0, 0.0, t * h * ab, inf, self._link, lat)
        add("overhead", "overhead", 1.0, 0.0, 0.0, 0.0, inf, inf, eff.overhead_s * per_pass)
        return ops

    def breakdown(self, shape: BatchShape) -> dict[str, float]:
        """Seconds per op group for one stage; the values sum to `stage_time(shape)`."""
        out: dict[str, float] = {}
        for op in self.op_table(shape):
            out[op.group] = out.get(op.group, 0.0) + op.seconds
        return out

    # ------------------------------------------------------------------ memory
    def max_kv_blocks(self, block_size: int, gpu_memory_utilization: float = 0.9,
                      dtype_bytes: float | None = None, activation_reserve: float | None = None) -> int:
        """KV blocks one replica of this model/accelerator/layout holds (see `max_kv_blocks`)."""
        return max_kv_blocks(
            self.model, self.accelerator, self.layout, block_size,
            gpu_memory_utilization=gpu_memory_utilization,
            dtype_bytes=_KV_BYTES[self.kv_dtype] if dtype_bytes is None else dtype_bytes,
            weight_dtype_bytes=self._wb,
            activation_reserve=activation_reserve,
        )


def activation_reserve_bytes(model: ModelArch, layout: ParallelLayout, max_num_batched_tokens: int = 8192,
                             max_num_seqs: int = 256, act_bytes: int = _ACT_BYTES) -> float:
    """Peak activation memory per device of a forward pass at the batch limits, as vLLM reserves it
    by profiling a dummy batch: the residual and normed hidden states, the QKV output, the gate/up
    output and SwiGLU product of one layer for every token, plus fp32 logits of every sequence."""
    tp = layout.tp
    kvh = _kv_heads_per_device(model, tp)
    t = max_num_batched_tokens
    per_token = (2 * model.hidden_size + (model.num_heads // tp + 2 * kvh) * model.head_dim
                 + 3 * model.intermediate_size / tp) * act_bytes
    return t * per_token + max_num_seqs * model.vocab_size / tp * 4


def max_kv_blocks(model: ModelArch, accelerator: AcceleratorSpec, layout: ParallelLayout, block_size: int,
                  gpu_memory_utilization: float = 0.9, dtype_bytes: float = 2, weight_dtype_bytes: float = 2,
                  activation_reserve: float | None = None) -> int:
    """How many KV blocks of `block_size` tokens a replica holds.

    Per device: gpu_memory_utilization * memory - weights on that device - activation reserve,
    divided by the KV bytes one block takes on that device. Layers are split over the pp stages
    as vLLM does (the remainder goes to the first stages); the first stage also holds the
    embedding, the last the final norm and LM head (a second copy when tied and pp > 1). The replica
    holds as many blocks as its most constrained stage. `activation_reserve` is bytes per device
    (default `activation_reserve_bytes`). Raises if the weights do not fit.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if not 0 < gpu_memory_utilization <= 1:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    _check_shard(model, layout)
    tp, pp = layout.tp, layout.pp
    kvh = _kv_heads_per_device(model, tp)
    h, hd = model.hidden_size, model.head_dim
    q = model.num_heads // tp * hd
    layer_params = (h * (q + 2 * kvh * hd) + q * h + 3 * h * model.intermediate_size / tp + 2 * h
                    + ((q + 2 * kvh * hd) if model.attention_bias else 0) + (2 * hd if model.qk_norm else 0))
    table = model.vocab_size / tp * h
    reserve = activation_reserve_bytes(model, layout) if activation_reserve is None else activation_reserve
    budget = gpu_memory_utilization * accelerator.memory_bytes
    base, extra = divmod(model.num_layers, pp)
    blocks = None
    for stage in range(pp):
        layers = base + (1 if stage < extra else 0)
        params = layers * layer_params
        if stage == 0:
            params += table
        if stage == pp - 1:
            params += h + (table if (not model.tie_word_embeddings or pp > 1) else 0)
        weights = params * weight_dtype_bytes
        free = budget - weights - reserve
        if free <= 0:
            raise ValueError(
                f"model {model.name!r} does not fit on {accelerator.name} with tp={tp} pp={pp}: "
                f"stage {stage} needs {weights / 2**30:.2f} GiB of weights + {reserve / 2**30:.2f} GiB "
                f"activation reserve per device, but {gpu_memory_utilization:.2f} x "
                f"{accelerator.memory_gb:g} GiB = {budget / 2**30:.2f} GiB is usable"
            )
        per_block = block_size * 2 * layers * kvh * hd * dtype_bytes
        n = int(free // per_block)
        blocks = n if blocks is None else min(blocks, n)
    assert blocks is not None
    return blocks
