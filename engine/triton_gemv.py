"""Matrix-vector kernels for batch-1 decode, with the op before each projection fused in.

At batch 1 every projection is a GEMV that streams its weight matrix once, and the elementwise
op in front of it (residual add + RMSNorm before qkv, gate_up and the LM head; SiLU-and-multiply
before down) is a separate launch of a few microseconds whose data is only a few kilobytes. On
Llama-3.1-8B those launches cost about a tenth of a decode step (measured on an H200), so, as
TensorRT-LLM and gpt-fast's fused decode kernels do, each GEMV program recomputes the input
vector it needs from the raw activations (they sit in L2): the norm's sum of squares over the
whole hidden vector, then the normalized or SiLU-gated slice of each K tile. The rounding
matches the unfused path (engine/triton_ops.py) exactly: the residual sum and the normalized
vector are rounded to the activation dtype where the unfused kernels store them.

Launch shapes are tuned on the model's own weights (`tune`), cycling through all layers so
that the matrices come from HBM as in a real step, not from L2. Measured on an H200 this path
was slower than cuBLAS plus separate norm kernels (5.0 vs 4.7 ms a Llama-8B step), so the engine
uses it only when asked (EngineConfig.decode_gemv="fused"). Imported only on CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from engine.triton_splitk import graph_time_ms  # graph-replay timing (eager Triton launches time the CPU)

PLAIN, NORM, SILU = 0, 1, 2


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@triton.jit
def _gemv_kernel(
    w_ptr, x_ptr, res_ptr, g_ptr, b_ptr, out_ptr, res_out_ptr,
    N, K, stride_w, eps,
    MODE: tl.constexpr, HAS_RES: tl.constexpr, HAS_BIAS: tl.constexpr,
    K_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    dt = out_ptr.dtype.element_ty
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    rstd = 0.0
    if MODE == 1:  # RMSNorm statistics of h = x (+ residual) over the whole vector
        offs = tl.arange(0, K_PAD)
        ok = offs < K
        h = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        if HAS_RES:
            h = (h + tl.load(res_ptr + offs, mask=ok, other=0.0).to(tl.float32)).to(dt).to(tl.float32)
            tl.store(res_out_ptr + offs, h.to(dt), mask=ok & (pid == 0))  # the new residual stream
        rstd = tl.rsqrt(tl.sum(h * h, 0) / K + eps)
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        k_ok = kk < K
        if MODE == 0:
            xv = tl.load(x_ptr + kk, mask=k_ok, other=0.0).to(tl.float32)
        elif MODE == 1:
            xv = tl.load(x_ptr + kk, mask=k_ok, other=0.0).to(tl.float32)
            if HAS_RES:
                xv = (xv + tl.load(res_ptr + kk, mask=k_ok, other=0.0).to(tl.float32)).to(dt).to(tl.float32)
            gw = tl.load(g_ptr + kk, mask=k_ok, other=0.0).to(tl.float32)
            xv = ((xv * rstd).to(dt).to(tl.float32) * gw).to(dt).to(tl.float32)  # HF order
        else:
            gt = tl.load(x_ptr + kk, mask=k_ok, other=0.0).to(tl.float32)
            up = tl.load(x_ptr + K + kk, mask=k_ok, other=0.0).to(tl.float32)
            xv = (gt / (1.0 + tl.exp(-gt)) * up).to(dt).to(tl.float32)
        w = tl.load(
            w_ptr + rows[:, None].to(tl.int64) * stride_w + kk[None, :],
            mask=row_ok[:, None] & k_ok[None, :],
            other=0.0,
        )
        acc += w.to(tl.float32) * xv[None, :]
    y = tl.sum(acc, 1)
    if HAS_BIAS:
        y += tl.load(b_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows, y.to(dt), mask=row_ok)


@dataclass(frozen=True)
class GemvConfig:
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


# Candidates tried by `tune`; the first is the untuned default. Small BLOCK_N keeps enough
# programs in flight for the 4096-row projections of 8B-class models on 132 SMs.
CANDIDATES = (
    GemvConfig(8, 512, 4, 3),
    GemvConfig(16, 256, 4, 3),
    GemvConfig(16, 512, 8, 3),
    GemvConfig(4, 1024, 4, 3),
    GemvConfig(32, 256, 8, 2),
)
_chosen: dict[tuple[int, int, int], GemvConfig] = {}  # (N, K, mode) -> tuned shape


def gemv(
    w: torch.Tensor,
    x: torch.Tensor,
    *,
    mode: int = PLAIN,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    norm_weight: torch.Tensor | None = None,
    eps: float = 0.0,
    res_out: torch.Tensor | None = None,
    config: GemvConfig | None = None,
) -> torch.Tensor:
    """y[1, N] = w[N, K] @ f(x), with f by `mode`:

    PLAIN: x [1, K]; NORM: rmsnorm(x + residual) * norm_weight, x [1, K], and when `residual` is
    given the sum is also written to `res_out` [1, K]; SILU: silu(x[:, :K]) * x[:, K:], x [1, 2K].
    """
    n, k = w.shape
    if w.stride(1) != 1 or x.stride(-1) != 1 or x.shape[0] != 1:
        raise ValueError("gemv needs a row-major weight and one contiguous input row")
    want = 2 * k if mode == SILU else k
    if x.shape[-1] != want:
        raise ValueError(f"gemv: input has {x.shape[-1]} columns, expected {want}")
    if mode == NORM and norm_weight is None:
        raise ValueError("gemv(mode=NORM) needs norm_weight")
    has_res = mode == NORM and residual is not None
    if has_res and res_out is None:
        raise ValueError("gemv(mode=NORM, residual=...) needs res_out for the new residual")
    cfg = config or _chosen.get((n, k, mode), CANDIDATES[0])
    out = torch.empty((1, n), dtype=x.dtype, device=x.device)
    _gemv_kernel[(triton.cdiv(n, cfg.block_n),)](
        w, x,
        residual if has_res else x,
        norm_weight if norm_weight is not None else x,
        bias if bias is not None else x,
        out,
        res_out if has_res else out,
        n, k, w.stride(0), eps,
        MODE=mode, HAS_RES=has_res, HAS_BIAS=bias is not None,
        K_PAD=_pow2(k), BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return out


def tune(weights: list[torch.Tensor], mode: int, has_res: bool, reps: int = 3) -> dict[str, float]:
    """Pick the fastest candidate for this shape, timing one pass over all `weights` (one per
    layer, so each call streams a cold matrix as a decode step does). Returns ms per pass for
    each candidate and for cuBLAS (F.linear on the same vector), for the benchmark record."""
    w0 = weights[0]
    n, k = w0.shape
    dev, dt = w0.device, w0.dtype
    g = torch.Generator(device=dev).manual_seed(0)
    xk = 2 * k if mode == SILU else k
    x = torch.randn((1, xk), generator=g, device=dev).to(dt)
    res = torch.randn((1, k), generator=g, device=dev).to(dt) if has_res else None
    gw = torch.ones(k, device=dev, dtype=dt) if mode == NORM else None
    res_out = torch.empty((1, k), device=dev, dtype=dt) if has_res else None
    times: dict[str, float] = {}
    best: tuple[float, GemvConfig] | None = None
    for cfg in CANDIDATES:

        def run(cfg: GemvConfig = cfg) -> None:
            for w in weights:
                gemv(w, x, mode=mode, residual=res, norm_weight=gw, eps=1e-5, res_out=res_out, config=cfg)

        ms = graph_time_ms(run, reps)
        times[f"{cfg.block_n}x{cfg.block_k}/w{cfg.num_warps}s{cfg.num_stages}"] = ms
        if best is None or ms < best[0]:
            best = (ms, cfg)
    xin = x[:, :k]

    def cublas() -> None:
        for w in weights:
            torch.nn.functional.linear(xin, w)

    times["cublas"] = graph_time_ms(cublas, reps)
    assert best is not None
    _chosen[(n, k, mode)] = best[1]
    return times
