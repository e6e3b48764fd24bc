"""Fused elementwise Triton kernels for the CUDA path: residual-add + RMSNorm, rotary embedding,
SiLU-and-multiply, and the paged KV write.

Written out in PyTorch each of these is 5-15 tiny kernels per layer; at batch-1 decode the
launches, not the bytes, dominate them (about 40 launches per layer, ~2.5 ms per Llama-8B step on
an H200, measured). One kernel each brings a layer to about ten launches, the count vLLM's and
nano-vllm's fused ops reach. All arithmetic is float32 with one rounding at the store, so
results match the unfused PyTorch path to within bf16 rounding (tests/test_engine_triton.py).
Imported only on CUDA.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@triton.jit
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr,
    H, stride_xt, stride_xh, stride_rt, stride_ot, stride_oh,
    eps,
    N: tl.constexpr, BLOCK: tl.constexpr, HAS_RES: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    t = row // H
    h = row % H
    offs = tl.arange(0, BLOCK)
    ok = offs < N
    x = tl.load(x_ptr + t * stride_xt + h * stride_xh + offs, mask=ok, other=0.0).to(tl.float32)
    if HAS_RES:  # residual <- x + residual (rounded to the activation dtype, as the unfused add does)
        r = tl.load(res_ptr + t * stride_rt + offs, mask=ok, other=0.0).to(tl.float32)
        x = (x + r).to(res_ptr.dtype.element_ty).to(tl.float32)
        tl.store(res_ptr + t * stride_rt + offs, x.to(res_ptr.dtype.element_ty), mask=ok)
    var = tl.sum(x * x, 0) / N
    w = tl.load(w_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    y = x * tl.rsqrt(var + eps)
    y = y.to(out_ptr.dtype.element_ty).to(tl.float32) * w  # HF order: normalize, cast, then scale
    tl.store(out_ptr + t * stride_ot + h * stride_oh + offs, y.to(out_ptr.dtype.element_ty), mask=ok)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """RMSNorm over the last dim of x ([T, N] or [T, H, N], last dim contiguous).

    With `residual` ([T, N], contiguous) it first does residual += x in place and normalizes that.
    """
    n = x.shape[-1]
    if x.stride(-1) != 1:
        raise ValueError("rms_norm needs a contiguous last dimension")
    three = x.dim() == 3
    t = x.shape[0]
    h = x.shape[1] if three else 1
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    res = residual if residual is not None else x
    _rms_norm_kernel[(t * h,)](
        x, res, weight, out,
        h, x.stride(0), x.stride(1) if three else 0, res.stride(0),
        out.stride(0), out.stride(1) if three else 0,
        eps,
        N=n, BLOCK=_pow2(n), HAS_RES=residual is not None,
        num_warps=4 if n <= 4096 else 8,
    )  # fmt: skip
    return out


@triton.jit
def _rope_kernel(
    q_ptr, k_ptr, pos_ptr, cos_ptr, sin_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_c,
    HQ: tl.constexpr, HK: tl.constexpr, H_PAD: tl.constexpr, HALF: tl.constexpr, HALF_PAD: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0)
    pos = tl.load(pos_ptr + t)
    d = tl.arange(0, HALF_PAD)
    d_ok = d < HALF
    c = tl.load(cos_ptr + pos * stride_c + d, mask=d_ok, other=0.0)[None, :]
    s = tl.load(sin_ptr + pos * stride_c + d, mask=d_ok, other=0.0)[None, :]
    h = tl.arange(0, H_PAD)[:, None]
    # "rotate half" pairing (HF Llama): element i pairs with i + D/2.
    m = (h < HQ) & d_ok[None, :]
    p1 = q_ptr + t * stride_qt + h * stride_qh + d[None, :]
    a = tl.load(p1, mask=m, other=0.0).to(tl.float32)
    b = tl.load(p1 + HALF, mask=m, other=0.0).to(tl.float32)
    tl.store(p1, (a * c - b * s).to(q_ptr.dtype.element_ty), mask=m)
    tl.store(p1 + HALF, (b * c + a * s).to(q_ptr.dtype.element_ty), mask=m)
    m = (h < HK) & d_ok[None, :]
    p1 = k_ptr + t * stride_kt + h * stride_kh + d[None, :]
    a = tl.load(p1, mask=m, other=0.0).to(tl.float32)
    b = tl.load(p1 + HALF, mask=m, other=0.0).to(tl.float32)
    tl.store(p1, (a * c - b * s).to(k_ptr.dtype.element_ty), mask=m)
    tl.store(p1 + HALF, (b * c + a * s).to(k_ptr.dtype.element_ty), mask=m)


def rope_(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> None:
    """Rotate q [T, Hq, D] and k [T, Hk, D] in place; cos/sin are [max_pos, D] float32 tables."""
    t, hq, dim = q.shape
    hk = k.shape[1]
    if q.stride(-1) != 1 or k.stride(-1) != 1:
        raise ValueError("rope_ needs a contiguous last dimension")
    half = dim // 2
    _rope_kernel[(t,)](
        q, k, positions, cos, sin,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos.stride(0),
        HQ=hq, HK=hk, H_PAD=_pow2(max(hq, hk)), HALF=half, HALF_PAD=_pow2(half),
    )  # fmt: skip


@triton.jit
def _silu_mul_kernel(x_ptr, out_ptr, stride_xt, stride_ot, I, BLOCK: tl.constexpr):
    t = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < I
    g = tl.load(x_ptr + t * stride_xt + offs, mask=ok, other=0.0).to(tl.float32)
    u = tl.load(x_ptr + t * stride_xt + I + offs, mask=ok, other=0.0).to(tl.float32)
    y = g / (1.0 + tl.exp(-g)) * u
    tl.store(out_ptr + t * stride_ot + offs, y.to(out_ptr.dtype.element_ty), mask=ok)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """[T, 2I] (gate | up) -> silu(gate) * up, [T, I]."""
    t, two_i = x.shape
    i = two_i // 2
    out = torch.empty((t, i), dtype=x.dtype, device=x.device)
    block = 1024
    _silu_mul_kernel[(t, triton.cdiv(i, block))](x, out, x.stride(0), out.stride(0), i, BLOCK=block)
    return out


@triton.jit
def _store_kv_kernel(
    k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh, stride_cs, stride_ch,
    HK: tl.constexpr, H_PAD: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    h = tl.arange(0, H_PAD)[:, None]
    d = tl.arange(0, D_PAD)[None, :]
    m = (h < HK) & (d < D)
    k = tl.load(k_ptr + t * stride_kt + h * stride_kh + d, mask=m)
    v = tl.load(v_ptr + t * stride_vt + h * stride_vh + d, mask=m)
    tl.store(kc_ptr + slot * stride_cs + h * stride_ch + d, k.to(kc_ptr.dtype.element_ty), mask=m)
    tl.store(vc_ptr + slot * stride_cs + h * stride_ch + d, v.to(vc_ptr.dtype.element_ty), mask=m)


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:  # fmt: skip
    """Write k, v [T, Hk, D] into the pools [blocks, block_size, Hk, D] at flat slots."""
    t, hk, d = k.shape
    if k_cache.stride(1) != hk * d or k_cache.stride(2) != d or v_cache.stride() != k_cache.stride():
        raise ValueError("store_kv needs [blocks, block_size, heads, dim] pools with contiguous tokens")
    _store_kv_kernel[(t,)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1), k_cache.stride(1), k_cache.stride(2),
        HK=hk, H_PAD=_pow2(hk), D=d, D_PAD=_pow2(d),
    )  # fmt: skip


@triton.jit
def _head_rms_norm(a, b, w_ptr, d, d_ok, eps, HALF: tl.constexpr, dt: tl.constexpr):
    """RMSNorm of each head's vector, given as its two halves a and b [heads, HALF] in float32, with
    the rounding of `_rms_norm_kernel` (normalize, cast, scale, cast) so that the rotation sees what
    the unfused norm would have stored."""
    r = tl.rsqrt((tl.sum(a * a, 1) + tl.sum(b * b, 1)) / (2 * HALF) + eps)[:, None]
    wa = tl.load(w_ptr + d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    wb = tl.load(w_ptr + HALF + d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    a = ((a * r).to(dt).to(tl.float32) * wa).to(dt).to(tl.float32)
    b = ((b * r).to(dt).to(tl.float32) * wb).to(dt).to(tl.float32)
    return a, b


@triton.jit
def _rope_store_kernel(
    q_ptr, k_ptr, v_ptr, pos_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr, slot_ptr, qn_ptr, kn_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_c, stride_cs, stride_ch, eps,
    HQ: tl.constexpr, HK: tl.constexpr, H_PAD: tl.constexpr, HALF: tl.constexpr, HALF_PAD: tl.constexpr,
    QK_NORM: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0)
    pos = tl.load(pos_ptr + t)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    d = tl.arange(0, HALF_PAD)
    d_ok = d < HALF
    c = tl.load(cos_ptr + pos * stride_c + d, mask=d_ok, other=0.0)[None, :]
    s = tl.load(sin_ptr + pos * stride_c + d, mask=d_ok, other=0.0)[None, :]
    h = tl.arange(0, H_PAD)[:, None]
    m = (h < HQ) & d_ok[None, :]
    p1 = q_ptr + t * stride_qt + h * stride_qh + d[None, :]
    a = tl.load(p1, mask=m, other=0.0).to(tl.float32)
    b = tl.load(p1 + HALF, mask=m, other=0.0).to(tl.float32)
    if QK_NORM:  # Qwen3: each head's RMSNorm before the rotation
        a, b = _head_rms_norm(a, b, qn_ptr, d, d_ok, eps, HALF, q_ptr.dtype.element_ty)
    tl.store(p1, (a * c - b * s).to(q_ptr.dtype.element_ty), mask=m)
    tl.store(p1 + HALF, (b * c + a * s).to(q_ptr.dtype.element_ty), mask=m)
    # K: rotate (rounded to the activation dtype, as the unfused rope_ does) and write to the pool.
    m = (h < HK) & d_ok[None, :]
    p1 = k_ptr + t * stride_kt + h * stride_kh + d[None, :]
    a = tl.load(p1, mask=m, other=0.0).to(tl.float32)
    b = tl.load(p1 + HALF, mask=m, other=0.0).to(tl.float32)
    if QK_NORM:
        a, b = _head_rms_norm(a, b, kn_ptr, d, d_ok, eps, HALF, k_ptr.dtype.element_ty)
    ka = (a * c - b * s).to(k_ptr.dtype.element_ty)
    kb = (b * c + a * s).to(k_ptr.dtype.element_ty)
    pc = kc_ptr + slot * stride_cs + h * stride_ch + d[None, :]
    tl.store(pc, ka.to(kc_ptr.dtype.element_ty), mask=m)
    tl.store(pc + HALF, kb.to(kc_ptr.dtype.element_ty), mask=m)
    pv = v_ptr + t * stride_vt + h * stride_vh + d[None, :]
    pvc = vc_ptr + slot * stride_cs + h * stride_ch + d[None, :]
    tl.store(pvc, tl.load(pv, mask=m).to(vc_ptr.dtype.element_ty), mask=m)
    tl.store(pvc + HALF, tl.load(pv + HALF, mask=m).to(vc_ptr.dtype.element_ty), mask=m)


def rope_store_kv_(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    qk_norm: tuple[torch.Tensor, torch.Tensor, float] | None = None,
) -> None:
    """rope_ on q (in place) and k, then store_kv of the rotated k and of v: one launch instead of two.

    k itself is left unrotated (only the pool copy is rotated): attention reads keys from the pool.
    qk_norm (q_norm weight, k_norm weight, eps; Qwen3) normalizes each head of q and k first, which
    is otherwise two more launches a layer, and in a decode graph two more kernels of a few
    microseconds each: the data they move is a few kilobytes a token, their latency is the cost.
    """
    t, hq, dim = q.shape
    hk = k.shape[1]
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("rope_store_kv_ needs a contiguous last dimension")
    if k_cache.stride(1) != hk * dim or k_cache.stride(2) != dim or v_cache.stride() != k_cache.stride():
        raise ValueError("rope_store_kv_ needs [blocks, block_size, heads, dim] pools with contiguous tokens")
    half = dim // 2
    qn, kn, eps = qk_norm if qk_norm is not None else (q, q, 0.0)
    _rope_store_kernel[(t,)](
        q, k, v, positions, cos, sin, k_cache, v_cache, slot_mapping, qn, kn,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), cos.stride(0),
        k_cache.stride(1), k_cache.stride(2), eps,
        HQ=hq, HK=hk, H_PAD=_pow2(max(hq, hk)), HALF=half, HALF_PAD=_pow2(half), QK_NORM=qk_norm is not None,
    )  # fmt: skip
