"""Split-K matrix-vector products for batch-1 decode, reduced by the kernels that consume them.

At batch 1 a projection streams its weight matrix once, so its speed is the bandwidth the kernel
reaches. In a CUDA graph on an H200, cuBLAS reaches ~4.3 TB/s on Llama-8B's wide gate_up matrix
but only 2.7 TB/s on the 4096 x 4096 o_proj and 3.1 TB/s on qkv (timed over the 32 layers' cold
matrices): too few output tiles to keep 132 SMs' loads in flight. Splitting K gives every
program one [BLOCK_N, BLOCK_K] tile, loaded in a single burst with no loop (the split-K scheme of
Flash-Decoding and of TensorRT-LLM's small-batch GEMV), which fills the chip whatever N is:
3.3 TB/s on o_proj and 3.6 TB/s on qkv, same measurement.

The S partial sums per output ([S, N], float32) are not reduced by a kernel of their own: the
op that follows each projection at batch 1 (residual add + RMSNorm after o/down, SiLU-and-multiply
after gate_up, and after qkv the batch-1 attention kernel of engine/triton_attention.py, which
also rotates and stores the new key) sums them while loading its input, then rounds to
the activation dtype, as the projection's own output would have been. So a split costs no extra
launch. Imported only on CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from engine.cuda_graphs import replay_ms


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclass(frozen=True)
class SplitConfig:
    block_n: int
    block_k: int
    num_warps: int

    @property
    def name(self) -> str:
        return f"split{self.block_n}x{self.block_k}/w{self.num_warps}"


# The last two are the only ones within `tune`'s split cap on Llama-8B's down projection (K = 14,336,
# 7 parts). There, on an H200, 4 rows x 2,048 with 4 warps passed the 32 layers in 0.954 ms against
# 1.014 for cuBLAS and 1.007 for 8 x 2,048 with 8 (bench_engine, `decode_graphs.split_plan` in
# benchmarks/results/engine_h200.json); the whole batch-1 graph gained 0.014 ms (4.398 -> 4.384), as
# the 7-part reduction in the norm after it costs more than reading cuBLAS's output.
CANDIDATES = (
    SplitConfig(16, 1024, 8),
    SplitConfig(8, 1024, 4),
    SplitConfig(16, 512, 4),
    SplitConfig(32, 512, 8),
    SplitConfig(8, 2048, 8),
    SplitConfig(4, 2048, 4),
)


@triton.jit
def _gemv_split_kernel(
    w_ptr, x_ptr, part_ptr, N, K, stride_w,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    kk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    row_ok = rows < N
    k_ok = kk < K
    w = tl.load(
        w_ptr + rows[:, None].to(tl.int64) * stride_w + kk[None, :],
        mask=row_ok[:, None] & k_ok[None, :],
        other=0.0,
    )
    x = tl.load(x_ptr + kk, mask=k_ok, other=0.0).to(tl.float32)
    y = tl.sum(w.to(tl.float32) * x[None, :], 1)
    tl.store(part_ptr + pid_k * N + rows, y, mask=row_ok)


def gemv_split(w: torch.Tensor, x: torch.Tensor, cfg: SplitConfig) -> torch.Tensor:
    """Partial products of w [N, K] and x [1, K]: [S, N] float32 with S = ceil(K / block_k)."""
    n, k = w.shape
    if w.stride(1) != 1 or x.shape != (1, k) or x.stride(1) != 1:
        raise ValueError(
            f"gemv_split needs a row-major [N, K] weight and a [1, {k}] input, got {tuple(x.shape)}"
        )
    s = triton.cdiv(k, cfg.block_k)
    part = torch.empty((s, n), dtype=torch.float32, device=x.device)
    _gemv_split_kernel[(triton.cdiv(n, cfg.block_n), s)](
        w, x, part, n, k, w.stride(0), BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps
    )
    return part


@triton.jit
def _sum_parts(p_ptr, offs, ok, S: tl.constexpr, stride_s):
    acc = tl.load(p_ptr + offs, mask=ok, other=0.0)
    for s in tl.static_range(1, S):
        acc += tl.load(p_ptr + s * stride_s + offs, mask=ok, other=0.0)
    return acc


@triton.jit
def _norm_parts_kernel(
    p_ptr, res_ptr, w_ptr, out_ptr, stride_s, eps,
    N: tl.constexpr, BLOCK: tl.constexpr, S: tl.constexpr,
):  # fmt: skip
    offs = tl.arange(0, BLOCK)
    ok = offs < N
    dt = out_ptr.dtype.element_ty
    x = _sum_parts(p_ptr, offs, ok, S, stride_s).to(dt).to(tl.float32)  # the projection's output
    r = tl.load(res_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    x = (x + r).to(dt).to(tl.float32)
    tl.store(res_ptr + offs, x.to(dt), mask=ok)
    var = tl.sum(x * x, 0) / N
    g = tl.load(w_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    y = (x * tl.rsqrt(var + eps)).to(dt).to(tl.float32) * g
    tl.store(out_ptr + offs, y.to(dt), mask=ok)


def add_rms_norm_parts(
    part: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    """residual [1, N] += sum(part [S, N]) (rounded to residual's dtype), then RMSNorm of it."""
    s, n = part.shape
    if residual.shape != (1, n) or not residual.is_contiguous():
        raise ValueError(
            f"add_rms_norm_parts: residual must be a contiguous [1, {n}], got {tuple(residual.shape)}"
        )
    out = torch.empty_like(residual)
    warps = 4 if s * n <= 8192 else 8 if s * n <= 32768 else 16  # one program: keep its loads in flight
    _norm_parts_kernel[(1,)](
        part, residual, weight, out, part.stride(0), eps, N=n, BLOCK=_pow2(n), S=s, num_warps=warps
    )
    return out


@triton.jit
def _silu_parts_kernel(p_ptr, out_ptr, stride_s, I, BLOCK: tl.constexpr, S: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < I
    dt = out_ptr.dtype.element_ty
    g = _sum_parts(p_ptr, offs, ok, S, stride_s).to(dt).to(tl.float32)
    u = _sum_parts(p_ptr + I, offs, ok, S, stride_s).to(dt).to(tl.float32)
    tl.store(out_ptr + offs, (g / (1.0 + tl.exp(-g)) * u).to(dt), mask=ok)


def silu_and_mul_parts(part: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """silu(gate) * up of the split-K output part [S, 2I] (gate | up); returns [1, I] in `dtype`."""
    s, two_i = part.shape
    i = two_i // 2
    out = torch.empty((1, i), dtype=dtype, device=part.device)
    block = 512
    _silu_parts_kernel[(triton.cdiv(i, block),)](part, out, part.stride(0), i, BLOCK=block, S=s)
    return out


def graph_time_ms(fn, reps: int) -> float:
    """Device time of fn, replayed as a captured CUDA graph: launched eagerly, a Triton kernel's
    Python launch (~40 us) would be timed instead of the kernel; in the decode graph it is gone."""
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return replay_ms(g, reps)


def tune(
    weights: list[torch.Tensor], max_splits: int = 8, reps: int = 3
) -> tuple[SplitConfig, dict[str, float]]:
    """Time cuBLAS and the split candidates (at most `max_splits` parts, so that the consumer's
    reduction stays small) over one pass of all `weights` (one per layer, so each call streams a
    cold matrix, as in a decode step). Returns the fastest split config and ms per pass of each
    (and of cuBLAS under "cublas"): the caller decides whether the split beats cuBLAS."""
    n, k = weights[0].shape
    g = torch.Generator(device=weights[0].device).manual_seed(0)
    x = torch.randn((1, k), generator=g, device=weights[0].device).to(weights[0].dtype)

    def cublas() -> None:
        for w in weights:
            torch.nn.functional.linear(x, w)

    times = {"cublas": graph_time_ms(cublas, reps)}
    fits = [c for c in CANDIDATES if triton.cdiv(k, c.block_k) <= max_splits]
    best: tuple[float, SplitConfig] | None = None
    for cfg in fits or [max(CANDIDATES, key=lambda c: c.block_k)]:

        def run(cfg: SplitConfig = cfg) -> None:
            for w in weights:
                gemv_split(w, x, cfg)

        ms = graph_time_ms(run, reps)
        times[cfg.name] = ms
        if best is None or ms < best[0]:
            best = (ms, cfg)
    assert best is not None
    return best[1], times
