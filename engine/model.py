"""Decoder-only transformer for the Llama and Qwen2/Qwen3 families over a packed token batch.

The layer math follows the Hugging Face reference implementations (pre-norm RMSNorm, rotary
embeddings in the "rotate half" layout, grouped-query attention, SwiGLU MLP), so weights load
by name. As in nano-vllm, all tokens of a step are flattened into one [T, hidden] tensor:
every projection and MLP is one GEMM over the whole step whatever mix of prefills, chunks
and decodes it holds, and only attention looks at sequence boundaries (via the metadata).
q/k/v and gate/up are stored merged so each is a single GEMM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.attention import AttentionBackend, AttentionMetadata
from engine.model_spec import DecoderSpec


@dataclass
class Partials:
    """Split-K partial sums [S, N] (float32) of a one-token projection (engine/triton_splitk.py),
    left for the kernel that consumes the projection to reduce; `dtype` is the activation dtype
    the sum stands for."""

    data: torch.Tensor
    dtype: torch.dtype


def _project(lin: nn.Linear, x: torch.Tensor, meta: AttentionMetadata | None) -> torch.Tensor | Partials:
    """lin(x), or split-K partials in batch-1 graphs whose plan gave this projection a split."""
    cfg = getattr(lin, "split_cfg", None)
    if cfg is not None and meta is not None and meta.split_gemv and x.shape[0] == 1 and lin.bias is None:
        from engine.triton_splitk import gemv_split

        return Partials(gemv_split(lin.weight, x, cfg), x.dtype)
    return lin(x)


class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019), computed in float32 and cast back as HF Llama does.

    `add_forward` is the residual-stream form (vLLM's fused_add_rms_norm): residual += x, then
    normalize the sum, which on CUDA is one fused kernel instead of an add plus a norm.
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.fused = False  # set on CUDA: use engine.triton_ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            from engine.triton_ops import rms_norm

            return rms_norm(x, self.weight, self.eps)
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(dtype)

    def add_forward(
        self, x: torch.Tensor | Partials, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual); the fused path updates `residual` in place."""
        if isinstance(x, Partials):
            from engine.triton_splitk import add_rms_norm_parts

            return add_rms_norm_parts(x.data, residual, self.weight, self.eps), residual
        if self.fused:
            from engine.triton_ops import rms_norm

            return rms_norm(x, self.weight, self.eps, residual), residual
        residual = x + residual
        return self.forward(residual), residual


def rope_inv_freq(spec: DecoderSpec) -> torch.Tensor:
    """Inverse rotary frequencies (RoFormer, Su et al. 2021), float32 as HF computes them.

    With Llama-3.1 scaling (Meta's Llama 3.1 release), wavelengths shorter than
    original_len / high_freq_factor are kept, those longer than original_len / low_freq_factor
    are divided by `factor`, and the band between interpolates linearly in original_len / wavelength.
    """
    d = spec.head_dim
    inv = 1.0 / (spec.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    s = spec.rope_scaling
    if s is None:
        return inv
    old = s.original_max_position_embeddings
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old / s.low_freq_factor, inv / s.factor, inv)
    smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    blended = (1 - smooth) * scaled / s.factor + smooth * scaled
    mid = (wavelen >= old / s.high_freq_factor) & (wavelen <= old / s.low_freq_factor)
    return torch.where(mid, blended, scaled)


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables indexed by absolute position (float32, cast at use)."""

    def __init__(self, spec: DecoderSpec, max_positions: int) -> None:
        super().__init__()
        self.spec = spec
        self.max_positions = max_positions
        self.fused = False
        cos, sin = self._tables(torch.get_default_device())
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        inv = rope_inv_freq(self.spec)
        t = torch.arange(self.max_positions, dtype=torch.int64).float()
        emb = torch.outer(t, inv)
        emb = torch.cat((emb, emb), dim=-1).to(device)
        return emb.cos(), emb.sin()

    def rebuild_(self, device: torch.device) -> None:
        """Recompute the tables on `device` (after the model was built on the meta device)."""
        self.cos, self.sin = self._tables(device)

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fused:  # in place on the q/k views, one kernel for both
            from engine.triton_ops import rope_

            rope_(q, k, positions, self.cos, self.sin)
            return q, k
        cos = self.cos[positions].to(q.dtype)[:, None, :]
        sin = self.sin[positions].to(q.dtype)[:, None, :]
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, spec: DecoderSpec, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.num_heads = spec.num_heads
        self.num_kv_heads = spec.num_kv_heads
        self.head_dim = spec.head_dim
        self.q_size = spec.q_size
        self.kv_size = spec.kv_size
        self.scale = spec.head_dim**-0.5
        self.qkv_proj = nn.Linear(spec.hidden_size, spec.q_size + 2 * spec.kv_size, bias=spec.qkv_bias)
        self.o_proj = nn.Linear(spec.q_size, spec.hidden_size, bias=False)
        self.q_norm = RMSNorm(spec.head_dim, spec.rms_norm_eps) if spec.qk_norm else None
        self.k_norm = RMSNorm(spec.head_dim, spec.rms_norm_eps) if spec.qk_norm else None
        self.rotary = rotary
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata, backend: AttentionBackend
    ) -> torch.Tensor | Partials:
        o = self.attend_qkv(positions, _project(self.qkv_proj, x, meta), meta, backend)
        return _project(self.o_proj, o, meta)

    def attend_qkv(
        self,
        positions: torch.Tensor,
        qkv: torch.Tensor | Partials,
        meta: AttentionMetadata,
        backend: AttentionBackend,
    ) -> torch.Tensor:
        """Attention output [T, q_size] from the merged projection [T, q + 2 kv]: QK-norm, rotary,
        KV write and attention (the part between the qkv and o projections)."""
        if self.k_cache is None or self.v_cache is None:
            raise RuntimeError("attention layer has no KV cache bound; call DecoderModel.bind_kv_cache first")
        if isinstance(qkv, Partials):  # one token, split-K qkv: one kernel sums, rotates, stores, attends
            o = backend.decode_one_from_parts(  # type: ignore[attr-defined]
                qkv.data, self.num_heads, self.head_dim, positions, self.rotary.cos, self.rotary.sin,
                self.k_cache, self.v_cache, meta, self.scale, qkv.dtype,
            )  # fmt: skip
            return o.reshape(1, self.q_size)
        t = qkv.shape[0]
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(t, self.num_heads, self.head_dim)
        k = k.view(t, self.num_kv_heads, self.head_dim)
        v = v.view(t, self.num_kv_heads, self.head_dim)
        qk_norm = self.q_norm is not None and self.k_norm is not None  # Qwen3: per-head RMSNorm before rope
        if self.rotary.fused and backend.name == "triton":
            # One kernel (QK-norm,) rotates q and k and writes k/v to the pool (engine/triton_ops.py).
            from engine.triton_ops import rope_store_kv_

            norms = (self.q_norm.weight, self.k_norm.weight, self.q_norm.eps) if qk_norm else None
            rope_store_kv_(
                q, k, v, positions, self.rotary.cos, self.rotary.sin, self.k_cache, self.v_cache,
                meta.slot_mapping, norms,
            )  # fmt: skip
            o = backend.attend(q, self.k_cache, self.v_cache, meta, self.scale)  # type: ignore[attr-defined]
        else:
            if qk_norm:
                q = self.q_norm(q)
                k = self.k_norm(k)
            q, k = self.rotary(positions, q, k)
            o = backend.forward(q, k, v, self.k_cache, self.v_cache, meta, self.scale)
        return o.reshape(t, self.q_size)


class MLP(nn.Module):
    """SwiGLU feed-forward (Shazeer 2020): down(silu(gate(x)) * up(x)), gate and up in one GEMM."""

    def __init__(self, spec: DecoderSpec) -> None:
        super().__init__()
        self.intermediate = spec.intermediate_size
        self.fused = False
        self.gate_up_proj = nn.Linear(spec.hidden_size, 2 * spec.intermediate_size, bias=False)
        self.down_proj = nn.Linear(spec.intermediate_size, spec.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, meta: AttentionMetadata | None = None) -> torch.Tensor | Partials:
        gu = _project(self.gate_up_proj, x, meta)
        if isinstance(gu, Partials):
            from engine.triton_splitk import silu_and_mul_parts

            return _project(self.down_proj, silu_and_mul_parts(gu.data, gu.dtype), meta)
        if self.fused:
            from engine.triton_ops import silu_and_mul

            return _project(self.down_proj, silu_and_mul(gu), meta)
        gate, up = gu.split([self.intermediate, self.intermediate], dim=-1)
        return _project(self.down_proj, F.silu(gate) * up, meta)


class DecoderLayer(nn.Module):
    def __init__(self, spec: DecoderSpec, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.self_attn = Attention(spec, rotary)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.mlp = MLP(spec)

    def forward(
        self,
        positions: torch.Tensor,
        x: torch.Tensor | Partials,
        residual: torch.Tensor | None,
        meta: AttentionMetadata,
        backend: AttentionBackend,
    ) -> tuple[torch.Tensor | Partials, torch.Tensor]:
        """Pre-norm block in residual-stream form: takes and returns (branch output, residual)."""
        if residual is None:
            assert isinstance(x, torch.Tensor)  # the first layer's input is the embedding
            residual = x
            h = self.input_layernorm(x)
        else:
            h, residual = self.input_layernorm.add_forward(x, residual)
        h = self.self_attn(positions, h, meta, backend)
        h, residual = self.post_attention_layernorm.add_forward(h, residual)
        return self.mlp(h, meta), residual


class DecoderModel(nn.Module):
    """The whole decoder; `forward` returns final hidden states, `compute_logits` the vocab scores."""

    def __init__(self, spec: DecoderSpec, max_positions: int, backend: AttentionBackend) -> None:
        super().__init__()
        self.spec = spec
        self.backend = backend
        self.rotary = RotaryEmbedding(spec, max_positions)
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(spec, self.rotary) for _ in range(spec.num_layers))
        self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.lm_head = (
            None if spec.tie_word_embeddings else nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        )

    def bind_kv_cache(self, k_pool: torch.Tensor, v_pool: torch.Tensor) -> None:
        """Give layer i the views k_pool[i], v_pool[i] ([num_blocks, block_size, kv_heads, head_dim])."""
        if k_pool.shape[0] != len(self.layers) or v_pool.shape[0] != len(self.layers):
            raise ValueError(f"KV pools have {k_pool.shape[0]} layers, model has {len(self.layers)}")
        for i, layer in enumerate(self.layers):
            layer.self_attn.k_cache = k_pool[i]
            layer.self_attn.v_cache = v_pool[i]

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        if positions.numel() and int(meta.max_context_len) > self.rotary.max_positions:
            raise ValueError(
                f"context of {meta.max_context_len} tokens exceeds the rotary table "
                f"of {self.rotary.max_positions}"
            )
        x: torch.Tensor | Partials = self.embed_tokens(input_ids)
        residual: torch.Tensor | None = None
        for layer in self.layers:
            x, residual = layer(positions, x, residual, meta, self.backend)
        if residual is None:
            assert isinstance(x, torch.Tensor)
            return self.norm(x)
        return self.norm.add_forward(x, residual)[0]

    @torch.no_grad()
    def decode_logits_gemv(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        """Logits [1, vocab] of a one-token step through the fused GEMV kernels of
        engine/triton_gemv.py: each norm and the SiLU-and-multiply run inside the projection
        that consumes them, so a layer is six launches (CUDA, batch-1 decode graphs)."""
        from engine.triton_gemv import NORM, PLAIN, SILU, gemv

        if input_ids.shape[0] != 1:
            raise ValueError(f"decode_logits_gemv computes one token, got {input_ids.shape[0]}")
        x = self.embed_tokens(input_ids)
        residual: torch.Tensor | None = None
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            ln = layer.input_layernorm
            new_res = torch.empty_like(x) if residual is not None else None
            qkv = gemv(
                attn.qkv_proj.weight, x, mode=NORM, bias=attn.qkv_proj.bias, residual=residual,
                norm_weight=ln.weight, eps=ln.eps, res_out=new_res,
            )  # fmt: skip
            residual = x if new_res is None else new_res
            h = gemv(attn.o_proj.weight, attn.attend_qkv(positions, qkv, meta, self.backend), mode=PLAIN)
            ln = layer.post_attention_layernorm
            new_res = torch.empty_like(x)
            gu = gemv(
                mlp.gate_up_proj.weight, h, mode=NORM, residual=residual, norm_weight=ln.weight,
                eps=ln.eps, res_out=new_res,
            )  # fmt: skip
            residual = new_res
            x = gemv(mlp.down_proj.weight, gu, mode=SILU)
        head = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        new_res = torch.empty_like(x) if residual is not None else None
        return gemv(
            head, x, mode=NORM, residual=residual, norm_weight=self.norm.weight, eps=self.norm.eps,
            res_out=new_res,
        )  # fmt: skip

    def tune_decode_gemv(self) -> dict[str, dict[str, float]]:
        """Choose launch shapes of the batch-1 GEMVs on this model's weights (see triton_gemv.tune);
        returns the measured ms per pass over all layers, per projection and candidate."""
        from engine.triton_gemv import NORM, PLAIN, SILU, tune

        head = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        layers = list(self.layers)
        return {
            "qkv": tune([m.self_attn.qkv_proj.weight for m in layers], NORM, True),
            "o": tune([m.self_attn.o_proj.weight for m in layers], PLAIN, False),
            "gate_up": tune([m.mlp.gate_up_proj.weight for m in layers], NORM, True),
            "down": tune([m.mlp.down_proj.weight for m in layers], SILU, False),
            "lm_head": tune([head], NORM, True),
        }

    def _split_kinds(self) -> dict[str, list[nn.Linear]]:
        layers = list(self.layers)
        kinds: dict[str, list[nn.Linear]] = {}
        if not self.spec.qk_norm and not self.spec.qkv_bias:  # the batch-1 attention kernel does neither
            kinds["qkv"] = [m.self_attn.qkv_proj for m in layers]
        kinds["o"] = [m.self_attn.o_proj for m in layers]
        kinds["gate_up"] = [m.mlp.gate_up_proj for m in layers]
        kinds["down"] = [m.mlp.down_proj for m in layers]
        return kinds

    def plan_decode_split(self, force: bool = False) -> dict:
        """Choose, per projection kind, between cuBLAS and the split-K kernel of
        engine/triton_splitk.py for batch-1 steps, timed on this model's weights (see its `tune`).
        `force` takes the best split even where cuBLAS is faster (tests). Returns the timings and
        choices per kind; `apply_decode_split` then marks the Linear modules."""
        from engine.triton_splitk import tune

        self._split_plan: dict = {}
        report: dict = {}
        for kind, mods in self._split_kinds().items():
            cfg, times = tune([m.weight for m in mods])
            use = force or times[cfg.name] < times["cublas"]
            self._split_plan[kind] = cfg if use else None
            report[kind] = {"chosen": cfg.name if use else "cublas", "ms_per_pass": times}
        return report

    def apply_decode_split(self, kinds: tuple[str, ...] | None = None) -> None:
        """Give the planned split configs to the Linear modules of `kinds` (all planned kinds when
        None) and clear the others; `_project` uses them in steps whose metadata says split_gemv."""
        plan = getattr(self, "_split_plan", {})
        for kind, mods in self._split_kinds().items():
            cfg = plan.get(kind) if kinds is None or kind in kinds else None
            for m in mods:
                m.split_cfg = cfg  # type: ignore[assignment]

    def use_fused_ops(self, on: bool = True) -> None:
        """Route norms, rotary and SiLU-mul through the Triton kernels of engine/triton_ops.py (CUDA)."""
        for m in self.modules():
            if isinstance(m, (RMSNorm, RotaryEmbedding, MLP)):
                m.fused = on

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        w = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, w)

    @torch.no_grad()
    def init_random_(self, seed: int, std: float = 0.02) -> None:
        """Random weights for timing runs: N(0, std) matrices, unit norms, zero biases."""
        g = torch.Generator(device=self.embed_tokens.weight.device).manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.normal_(0.0, std, generator=g)
