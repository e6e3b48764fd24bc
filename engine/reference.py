"""A dense, non-paged forward pass written straight from the model definitions: the test oracle.

It shares no code with `engine/model.py` or `engine/attention.py` on purpose: it reads the
Hugging Face-named state dict, runs one sequence at a time with a plain causal mask over the
whole prefix, and recomputes everything each call (no KV cache). Slow, obvious, and
independent, which is what an oracle for the paged, packed, chunked engine should be.
"""

from __future__ import annotations

import math

import torch

from engine.model_spec import DecoderSpec


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return w * (xf / torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _inv_freq(spec: DecoderSpec) -> torch.Tensor:
    d = spec.head_dim
    inv = 1.0 / (spec.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    s = spec.rope_scaling
    if s is None:
        return inv
    # Llama 3.1 scaling, written per frequency as in Meta's reference `apply_scaling`.
    out = []
    old = s.original_max_position_embeddings
    for f in inv.tolist():
        wl = 2 * math.pi / f
        if wl < old / s.high_freq_factor:
            out.append(f)
        elif wl > old / s.low_freq_factor:
            out.append(f / s.factor)
        else:
            sm = (old / wl - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
            out.append((1 - sm) * f / s.factor + sm * f)
    return torch.tensor(out, dtype=torch.float32)


def _rope(x: torch.Tensor, pos: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """x [L, heads, D]: rotate pairs (i, i + D/2) by angle pos * inv[i]."""
    ang = pos.float()[:, None] * inv[None, :].to(pos.device)  # [L, D/2]
    cos, sin = ang.cos().to(x.dtype)[:, None, :], ang.sin().to(x.dtype)[:, None, :]
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)


@torch.no_grad()
def dense_logits(spec: DecoderSpec, sd: dict[str, torch.Tensor], token_ids: list[int]) -> torch.Tensor:
    """Logits [len(token_ids), vocab] of one sequence, computed from scratch."""
    dev = sd["model.embed_tokens.weight"].device
    ids = torch.tensor(token_ids, dtype=torch.long, device=dev)
    n = len(token_ids)
    pos = torch.arange(n, device=dev)
    inv = _inv_freq(spec)
    eps = spec.rms_norm_eps
    h, kvh, d = spec.num_heads, spec.num_kv_heads, spec.head_dim
    x = sd["model.embed_tokens.weight"][ids]
    mask = torch.ones(n, n, dtype=torch.bool, device=dev).tril()
    for i in range(spec.num_layers):
        p = f"model.layers.{i}."
        y = _rms(x, sd[p + "input_layernorm.weight"], eps)
        proj = {}
        for name in ("q", "k", "v"):
            w = sd[p + f"self_attn.{name}_proj.weight"]
            bias = sd.get(p + f"self_attn.{name}_proj.bias")
            proj[name] = y @ w.T + (bias if bias is not None else 0)
        q = proj["q"].view(n, h, d)
        k = proj["k"].view(n, kvh, d)
        v = proj["v"].view(n, kvh, d)
        if spec.qk_norm:
            q = _rms(q, sd[p + "self_attn.q_norm.weight"], eps)
            k = _rms(k, sd[p + "self_attn.k_norm.weight"], eps)
        q, k = _rope(q, pos, inv), _rope(k, pos, inv)
        rep = h // kvh
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) / math.sqrt(d)
        scores = scores.masked_fill(~mask, float("-inf"))
        att = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v.float()).to(x.dtype)
        x = x + att.reshape(n, h * d) @ sd[p + "self_attn.o_proj.weight"].T
        y = _rms(x, sd[p + "post_attention_layernorm.weight"], eps)
        gate = y @ sd[p + "mlp.gate_proj.weight"].T
        up = y @ sd[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ sd[p + "mlp.down_proj.weight"].T
    x = _rms(x, sd["model.norm.weight"], eps)
    head = (
        sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
        if not spec.tie_word_embeddings
        else sd["model.embed_tokens.weight"]
    )
    return x @ head.T


@torch.no_grad()
def dense_greedy(
    spec: DecoderSpec, sd: dict[str, torch.Tensor], prompt: list[int], max_new: int
) -> list[int]:
    """Greedy continuation of `prompt` by recomputing the whole sequence each step."""
    ids = list(prompt)
    for _ in range(max_new):
        ids.append(int(dense_logits(spec, sd, ids)[-1].argmax()))
    return ids[len(prompt) :]
