"""Calibrated cost model: iteration time as physically shaped terms fitted to a measured profile.

The analytic model (`backends/analytic.py`) predicts from datasheet peaks and assumed
efficiencies; this one predicts from what `engine/profiler.py` measured on the device itself.
It follows the approach of Vidur (Agrawal et al., MLSys 2024), which profiles operators on the
target GPU and fits a model to interpolate between measured shapes, but fits one whole engine step
per iteration, because what the simulator needs is the step time the engine actually exhibits
(kernel launches, CUDA-graph padding and Python input preparation included). Every coefficient is
fitted from the profile alone (non-negative, on relative error, so a 5 ms decode step weighs as
much as a 500 ms prefill).

Decode steps ("decode" group: pure decodes, and with CUDA graphs any step in which every sequence
computes one token, since the decode graph runs those whole; see `as_decode`). With n sequences
run as B rows (n padded to its CUDA-graph bucket, or n without graphs), summed attended context
ctx and longest single context max_ctx:

    execute = A[B] + seq * n + u + v - g[B] * min(u, v)
    u = b[B] * ctx,  v = longest[W(B)] * max_ctx / S[B]

  A[B], b[B]   a line per row count B, fitted from the profile's samples of that B and interpolated
               linearly in B between profiled ones. Per-B lines, not one slope: the measured cost per
               context token falls from ~50 ns at batch 1 to ~33 ns at batch 64 on an H200 and jumps
               with wave quantisation past it; one shared slope left the profile's own decode
               samples up to 28% off. The grid times full buckets; a served step of n < B
               sequences reads the KV of its n sequences only (padded rows read none), so where
               the bucket below launches alike its b is taken between that bucket's and B's, by n
               (`_between`).
  longest      the paged-attention kernel's critical path. The Triton decode kernel
               (engine/triton_attention.py) runs one program per (sequence, KV head, split) and
               splits the key range S ways only while the grid would leave SMs idle (Flash-Decoding,
               Dao et al. 2023); a step lasts until its longest program ends, so a batch with one
               30k-token context and eight 5k ones costs about what its 30k one alone does, not
               what 70k evenly spread tokens do. Uniform profile contexts already pin this term:
               for uniform batches max_ctx = ctx / n, and n * b(n) * S[B] is constant (~1.5 us
               per token on an H200) exactly where the kernel is critical-path bound (n <= 48).
  S[B]         the kernel's split count for the graph of B rows (worst-case context, as captured;
               `triton_decode_splits` mirrors the kernel's heuristic), which depends on the device's
               SM count. The profile header does not record it: it comes from the datasheet table
               `_SM_COUNTS` by device name, else it is chosen among all SM counts as the one whose
               split plan fits the decode samples best (reported with the SM range giving that plan;
               rows profiled at two batch sizes identify it, noisily). The torch attention backend and
               CPU devices have no such kernel: no longest term there.
  W(B)         the launch's key-tile width for B rows (`triton_decode_tile`): 128-key tiles below two
               programs per SM, 64-key ones above; one longest coefficient per width, since the
               wide tile's deeper pipeline reads a long context ~1.7x faster per key.
  g[B]         how much of the smaller of u and v hides under the larger, for the split launches
               (S[B] > 1: one wave of programs, where the longest program runs while the others
               stream the bulk of the KV); 0 for the others. g = 0 is the plain sum, which
               counts twice a batch with several long contexts: on Mooncake conversations, steps
               of 9-16 sequences came out 8-12% slow. One g, chosen on a grid of [0, 1] with the
               rest refitted at each point (`_fit_overlap`); the H200 profiles in the repository
               pick 0.65-0.95.

  Where the profile has both graph steps' device times and the serving loop's launches, the decode
  samples fitted are device time plus the loop's host line (`_as_served`), not the grid's wall: the
  grid's host part of a graph step ran 0.2 ms over the loop's on an H200 (`_fit_graph_host`).

  Each context grows by one token per iteration, so ctx grows by n and max_ctx by 1: a steady
  decode stretch costs a closed function of the iteration index, a + u + v - g * min(u, v) with
  u and v linear in it, which is what `decode_line` returns and what `stage_time` computes for
  such a batch (the simulator's jump over steady decode stretches relies on this identity, bit
  for bit).

Eager steps ("prefill" group: prefill-only and mixed batches). Python launches the eager forward
kernel by kernel while the GPU runs them, so the step takes as long as the slower of the two, after
the inputs are built (the device has nothing queued until then):

    execute = prep + max(cpu, gpu)
    prep = prep_fixed + prep_seq * S + prep_ctx * context tokens    fitted on its own to the
                                                  profile's measured preparation (`prep_s`; 0 for
                                                  profiles without it, whose fits absorb it)
    cpu = cpu_fixed + cpu_seq * S                 launches and input preparation (S sequences)
    gpu = fixed + token * T + token>k * max(0, T - k)    GEMMs of the T new tokens: weight-bound,
                                                  then compute-bound past the roofline knee
          + prefill_attn * sum n * (c + (n + 1) / 2)     causal attention FLOPs per chunk
          + decode_ctx * ctx                      KV the decodes' attention reads in bulk
          + longest * max (c + n)                 the chunks' attention launch's longest program
                                                  (a chunk's last tile reads its prefix and itself)
          + v - g * min(u, v)                     the decodes' launch: an eager step's one-token
                                                  sequences run in a launch of their own, unsplit,
                                                  with decode-sized tiles, after the chunks'. Its
                                                  longest program v = longest[W(n)] * max_ctx takes
                                                  the decode group's coefficient (not fitted: even
                                                  grid contexts cannot tell it from decode_ctx);
                                                  where the launch is one wave (n * kv_heads <= SMs)
                                                  it hides g (the decode group's) of the smaller of
                                                  v and u = decode_ctx * ctx
  A sum instead of the max charged the ~15 ms of Python launch time of a small eager step on top of
  the GPU time of a large one and so misplaced the attention terms. With the torch attention
  backend (one call per sequence) the last two terms are prefill_kv * sum (c + n); on a CPU device
  the two parts share the cores and add up.

CPU work outside the step (scheduler decision, bookkeeping) is fixed + seq * S + prefill_seq * P +
prefill_token * prefill tokens, and for the bookkeeping also hashed tokens (a block is hashed once,
when it fills, i.e. per new token). When the profile has a serving phase (`Profile.serving`: the
engine's own loop under a synthetic load ramp), both are fitted to the loop's measured phases by
least squares on the seconds themselves, so that their sum over a run is right (a relative fit would
discount the occasional slow iteration, e.g. a garbage collection, which a run still pays). Decode
steps are fitted to the grid alone. The serving phase's workload gives each group of requests one
shared system prompt, so its decode batches read much of their KV from blocks that many sequences
share (likely from L2): on an H200 profile its decode steps of 64-256 sequences ran 14-17% faster
than the grid fit, while the validation runs' decode steps, over contexts of their own, ran as the
grid measured them or 1-3% faster. Fitted together, the serving steps lowered the decode terms, and
the eager scale below, measured against mixed steps whose decode launches had become too cheap, rose
(1.017 to 1.040), making eager steps 1-4% slow (over twelve validation runs on three hosts, the
largest headline error fell from 6.8% to 5.5% on average, within 5% from 4 runs to 6, with the grid
alone). Eager steps are also fitted to the grid alone, then scaled by one factor, the median
measured / fitted ratio of the serving phase's steps with prefill tokens (`eager_scale`), because in
the loop they run a few percent slower than in isolation, and letting that bend the shape terms
misplaced the chunk-size dependence; step-graph replays keep the grid's time (`_fit_eager_scale`).
Older profiles without a serving phase fit the CPU work to the overhead
records, timed in a tight loop, which on a busy host finds it several times cheaper than the loop
pays; their scheduler state starts with unhashed contexts, so their bookkeeping hashes every full
block of every context once, and the fit charges that per-token cost per new token.

Limits: the model reproduces the profiled configuration only (tp/pp, dtype, block size, CUDA-graph
buckets, max_model_len); shapes beyond the profiled grid are extrapolated from the nearest profiled
ones.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares, nnls

from backends.accelerators import AcceleratorSpec
from backends.cost_model import COST_MODELS, BatchShape, OverlapParts, ParallelLayout
from backends.models import ModelArch, get_model
from backends.profile import MODEL_SHAPE_FIELDS, OverheadSample, Profile, ShapeSample, canonical_dtype

PREFILL_KNOT_LADDER: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
_MIN_SIDE = 2  # distinct profiled sizes needed on each side of a knot to identify its slope change
# Launch constants of the Triton decode kernel's split-KV heuristic (engine/triton_attention.py,
# TritonPagedAttention.num_splits): its key granularity (split_block) and the largest split count.
SPLIT_BLOCK_N = 64
SPLIT_MAX = 32
# An eager grid sample whose launch after its preparation is at least this share of its time (less
# the preparation) is launch-bound: the fit report counts them (`_fit_eager_launch`).
LAUNCH_BOUND = 0.9
# The serving phase's eager steps that set the loop's factor when input preparation is modelled
# (`_fit_eager_scale`): fewer than this many sequences, if there are at least this many steps.
FEW_SEQS = 64
FEW_SEQS_MIN_STEPS = 10
SM_CANDIDATES = range(1, 1025)  # SM counts tried when the device is not in _SM_COUNTS
# Streaming multiprocessors per device, from NVIDIA's architecture whitepapers and datasheets (GH100:
# 132 on H100 SXM5 / NVL and H200, 114 on H100 PCIe; GA100: 108; GV100: 80; AD102: 142 on L40S, 128 on
# RTX 4090; AD104: 58 on L4; GA102: 72 on A10). Keyed by lower-case substrings of
# torch.cuda.get_device_name(); first match wins, so the more specific names come first.
_SM_COUNTS: tuple[tuple[str, int], ...] = (
    ("h100 pcie", 114),
    ("h100", 132),
    ("h200", 132),
    ("a100", 108),
    ("a800", 108),
    ("v100", 80),
    ("l40s", 142),
    ("rtx 4090", 128),
    ("l4", 58),
    ("a10", 72),
)


def datasheet_sm_count(device: str) -> int | None:
    """SM count of a CUDA device by its name, or None when it is not in the table."""
    name = device.lower()
    for key, sms in _SM_COUNTS:
        if re.search(rf"(^|[^a-z0-9]){re.escape(key)}($|[^a-z0-9])", name):
            return sms
    return None
_GPU_BASE = ("fixed", "token")
_CPU_TERMS = ("cpu_fixed", "cpu_seq")
_SCHEDULE_TERMS = ("fixed", "seq", "prefill_seq", "prefill_token")
_COMPLETE_TERMS = (*_SCHEDULE_TERMS, "hashed_token")


def triton_decode_tile(rows: int, kv_heads: int, num_sms: int, dtype: str) -> int:
    """Key-tile width of the Triton decode launch for `rows` rows (a mirror of
    `TritonPagedAttention.launch_config`): 128-key tiles with a deeper pipeline while the
    (sequence, KV head) grid is under two programs per SM, 64-key tiles from there and in float32.
    The longest program's cost per key differs between the two by up to ~1.7x (a 4k decode among 31
    short ones: 86 vs 148 us a layer on an H200), so each width gets its own `longest` coefficient."""
    if dtype == "float32" or rows * kv_heads >= 2 * num_sms:
        return 64
    return 128


def triton_decode_splits(rows: int, kv_heads: int, num_sms: int, max_context: int) -> int:
    """Split-KV parts the Triton decode kernel launches for `rows` sequences (a mirror of
    `TritonPagedAttention.num_splits`): split only while the (sequence, KV head) grid would leave
    SMs idle and contexts are long enough, aiming at two programs per SM, at most SPLIT_MAX."""
    programs = rows * kv_heads
    if programs >= num_sms or max_context <= 2 * SPLIT_BLOCK_N:
        return 1
    by_sms = -(-2 * num_sms // programs)
    by_len = -(-max_context // (2 * SPLIT_BLOCK_N))
    return max(1, min(by_sms, by_len, SPLIT_MAX))


@dataclass(frozen=True)
class TermFit:
    """One fitted model: coefficient per named term, and how well it reproduces its samples."""

    terms: tuple[str, ...]
    coef: tuple[float, ...]
    knots: tuple[int, ...]
    measured: tuple[float, ...]
    predicted: tuple[float, ...]

    @property
    def rel_errors(self) -> np.ndarray:
        m = np.asarray(self.measured)
        return (np.asarray(self.predicted) - m) / m

    def summary(self) -> dict:
        e = np.abs(self.rel_errors)
        return {
            "n": len(self.measured),
            "terms": dict(zip(self.terms, self.coef)),
            "knots": list(self.knots),
            "abs_rel_error": {
                "median": float(np.median(e)) if e.size else None,
                "p90": float(np.percentile(e, 90)) if e.size else None,
                "max": float(e.max()) if e.size else None,
            },
        }


def _col_scale(A: np.ndarray) -> np.ndarray:
    s = np.abs(A).max(axis=0) if A.size else np.ones(A.shape[1])
    s[s == 0] = 1.0
    return s


def _nnls_relative(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """argmin_{c >= 0} sum(((X c - y) / y)^2), with columns scaled for conditioning."""
    A = X / np.maximum(y, 1e-12)[:, None]
    scale = _col_scale(A)
    c, _ = nnls(A / scale, np.ones(len(y)), maxiter=50 * X.shape[1])
    return c / scale


def _nnls_absolute(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """argmin_{c >= 0} sum((X c - y)^2), with columns scaled for conditioning."""
    scale = _col_scale(X)
    c, _ = nnls(X / scale, y, maxiter=50 * X.shape[1])
    return c / scale


OVERLAP_GRID = tuple(i / 20 for i in range(21))


def _decode_time(a: float, b: float, c: float, g: float, ctx: int, mx: int) -> float:
    """a + u + v - g * min(u, v), u = b * ctx, v = c * mx: the order `CostModel.decode_line` promises
    and the simulator's jump repeats (the g term only when g is nonzero)."""
    u = b * ctx
    v = c * mx
    t = a + u + v
    if g:
        t = t - g * min(u, v)
    return t


def _fit_overlap(
    X: np.ndarray, y: np.ndarray, bulk: slice, longest: slice, rows: np.ndarray
) -> tuple[np.ndarray, float]:
    """Decode coefficients and the overlap g in [0, 1] of the bulk term u (X[:, bulk] coefs) and the
    longest-program term v (X[:, longest]) in the rows marked `rows`: there the step costs
    u + v - g * min(u, v), the rest additive. g = 1 is max(u, v): a one-wave split launch whose
    longest program runs while the others stream the bulk of the KV; g = 0 is the plain sum. g is
    chosen on a grid, each point fitted by alternating which of u and v is the smaller (given
    that, the model is linear: the smaller term's columns scaled by 1 - g), keeping the best fit
    seen on relative error."""

    def predict(coef: np.ndarray, g: float) -> np.ndarray:
        u = X[:, bulk] @ coef[bulk]
        v = X[:, longest] @ coef[longest]
        return X @ coef - np.where(rows, g * np.minimum(u, v), 0.0)

    def sse(coef: np.ndarray, g: float) -> float:
        return float(np.sum((predict(coef, g) / y - 1.0) ** 2))

    start = _nnls_relative(X, y)
    best = (sse(start, 0.0), 0.0, start)
    for g in OVERLAP_GRID[1:]:
        coef, seen = start, None
        for _ in range(12):
            u_small = (X[:, bulk] @ coef[bulk]) < (X[:, longest] @ coef[longest])
            if seen is not None and np.array_equal(u_small, seen):
                break
            seen = u_small
            Xr = X.copy()
            Xr[rows & u_small, bulk] *= 1.0 - g
            Xr[rows & ~u_small, longest] *= 1.0 - g
            coef = _nnls_relative(Xr, y)
            e = sse(coef, g)
            if e < best[0] * (1 - 1e-9):
                best = (e, g, coef)
    return best[2], best[1]


def _fit_slower_of_two(
    G: np.ndarray, C: np.ndarray, y: np.ndarray, off: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(g, c) >= 0 minimising sum(((max(G g + off, C c) - y) / y)^2): two affine models of which the
    slower one sets each sample (GPU work and the CPU launching it, overlapped); `off` is GPU time
    known beforehand (default none).

    Started from three points (all GPU; CPU floor on the fastest samples and GPU on the rest; the
    alternating assignment fit from there) and refined by bounded least squares with the exact
    piecewise Jacobian; the best end point wins. Deterministic."""
    w = 1.0 / y
    Gs, Cs = G * w[:, None], C * w[:, None]
    sg, sc = _col_scale(Gs), _col_scale(Cs)
    Gs, Cs = Gs / sg, Cs / sc
    ng, nc = G.shape[1], C.shape[1]
    ones = np.ones(len(y))
    offs = np.zeros(len(y)) if off is None else off * w
    rest = ones - offs  # what the GPU terms have to make up

    def nn(A: np.ndarray, sel: np.ndarray, target: np.ndarray) -> np.ndarray:
        if sel.sum() == 0:
            return np.zeros(A.shape[1])
        return nnls(A[sel], target[sel], maxiter=50 * A.shape[1])[0]

    def fun(p: np.ndarray) -> np.ndarray:
        return np.maximum(Gs @ p[:ng] + offs, Cs @ p[ng:]) - 1.0

    def jac(p: np.ndarray) -> np.ndarray:
        gpu = Gs @ p[:ng] + offs >= Cs @ p[ng:]
        J = np.zeros((len(y), ng + nc))
        J[gpu, :ng] = Gs[gpu]
        J[~gpu, ng:] = Cs[~gpu]
        return J

    all_rows = np.ones(len(y), dtype=bool)
    starts = [np.concatenate([nn(Gs, all_rows, rest), np.zeros(nc)])]
    floor = y <= np.quantile(y, 0.25)
    p = np.concatenate([nn(Gs, ~floor if (~floor).sum() >= ng else all_rows, rest), nn(Cs, floor, ones)])
    starts.append(p.copy())
    for _ in range(30):  # alternating assignment (the classic max-affine fit)
        gpu = Gs @ p[:ng] + offs >= Cs @ p[ng:]
        q = np.concatenate([nn(Gs, gpu, rest), nn(Cs, ~gpu, ones)])
        if np.allclose(q, p, rtol=1e-12, atol=1e-15):
            break
        p = q
    starts.append(p)
    best: tuple[float, np.ndarray] | None = None
    for p0 in starts:
        cost0 = float(np.sum(fun(p0) ** 2))
        r = least_squares(
            fun, p0, jac=jac, bounds=(0.0, np.inf), method="trf", xtol=1e-13, ftol=1e-13, gtol=1e-13,
            max_nfev=500 * (ng + nc),
        )
        p1 = np.maximum(r.x, 0.0)
        cost1 = float(np.sum(fun(p1) ** 2))
        cand = (cost1, p1) if cost1 <= cost0 else (cost0, p0)
        if best is None or cand[0] < best[0]:
            best = cand
    assert best is not None
    p = best[1]
    return p[:ng] / sg, p[ng:] / sc


def _knots(values: list[int], ladder: tuple[int, ...], budget: int) -> tuple[int, ...]:
    """Ladder knots with at least _MIN_SIDE distinct sizes at or below and above them, at most `budget`."""
    v = np.unique(np.asarray(values))
    ks = [k for k in ladder if (v <= k).sum() >= _MIN_SIDE and (v > k).sum() >= _MIN_SIDE]
    while len(ks) > max(budget, 0):
        ks.pop(len(ks) // 2)  # thin out evenly, keeping the extremes
    return tuple(ks)


def _even_max(num_decode: int, decode_context: int) -> int:
    """The longest context of `num_decode` decodes whose contexts sum to `decode_context`, spread as
    evenly as possible (what a shape without `decode_max_context` stands for)."""
    return -(-decode_context // num_decode) if num_decode else 0


def _decode_max(shape: BatchShape) -> int:
    return shape.decode_max_context or _even_max(shape.num_decode, shape.decode_context)


def _gpu_row(
    shape: BatchShape, knots: tuple[int, ...], one_launch: bool, padded: int | None = None
) -> list[float]:
    """Device-side regressors of an eager step. `one_launch`: the Triton kernel, which runs the
    chunks' attention in one launch and the one-token sequences' in a second one with decode-sized
    tiles, each lasting as long as its longest program (a chunk's last tile walks its prefix and
    itself; a decode its context); otherwise (the reference path, one call per sequence) each
    chunk's KV read adds up. `padded`: the token count the step's GEMMs run at (a step graph's
    bucket), when not its own."""
    t = shape.num_decode
    attn = 0.0
    longest = 0
    kv = 0
    for n, c in shape.prefill:
        t += n
        attn += n * (c + (n + 1) * 0.5)
        kv += c + n
        if c + n > longest:
            longest = c + n
    if padded is not None:
        t = padded
    return [
        1.0,
        float(t),
        *(float(max(0, t - k)) for k in knots),
        attn,
        float(shape.decode_context),
        float(longest if one_launch else kv),
    ]


def _cpu_row(shape: BatchShape, graphed: bool = False) -> list[float]:
    """Launch-side regressors; a step replayed from a graph launches nothing from Python."""
    return [0.0, 0.0] if graphed else [1.0, float(shape.num_seqs)]


def _context_tokens(shape: BatchShape) -> int:
    """Tokens the step's block tables cover: every decode's context, every prefill's prefix and chunk."""
    return shape.decode_context + sum(n + c for n, c in shape.prefill)


def _new_tokens(shape: BatchShape) -> int:
    return shape.num_tokens


def _host_rows(
    shapes: Iterable[BatchShape], tokens: Callable[[BatchShape], int] = _context_tokens
) -> np.ndarray:
    """Design rows of a host line: fixed, per sequence, per token (context tokens for a graph step's
    line, new tokens for an eager launch's)."""
    return np.array([[1.0, sh.num_seqs, tokens(sh)] for sh in shapes], dtype=float)


def _line_s(line: tuple[float, float, float], shape: BatchShape, tokens: int) -> float:
    """A host line's seconds: fixed + per sequence + per token (context or new tokens, by line)."""
    return line[0] + line[1] * shape.num_seqs + line[2] * tokens


def _loop_level(
    slopes: np.ndarray,
    loop: list[tuple[BatchShape, float]],
    tokens: Callable[[BatchShape], int] = _context_tokens,
) -> float:
    """The fixed part of a host line at the serving loop's level: the mean offset of the loop's
    launches (shape, seconds) from the grid's slopes (`slopes[1:]`), at least 0."""
    off = [x - slopes[1] * sh.num_seqs - slopes[2] * tokens(sh) for sh, x in loop]
    return max(0.0, float(np.mean(off)))


def _distinct_sizes(shapes: Iterable[BatchShape]) -> int:
    """How many distinct (sequences, context tokens) points the shapes give a host line."""
    return len({(sh.num_seqs, _context_tokens(sh)) for sh in shapes})


def _overhead_row(o: OverheadSample) -> list[float]:
    return [1.0, float(o.num_seqs), float(o.num_prefill_seqs), float(o.prefill_tokens)]


def _gpu_tokens(name: str) -> set[str]:
    """Model-number tokens such as 'h100', 'a100', 'h200' in a device name (for a sanity check)."""
    return set(re.findall(r"\b[a-z]\d{2,4}\b", name.lower()))


@COST_MODELS.register("calibrated")
class CalibratedCostModel:
    """`backends.cost_model.CostModel` fitted from a measured `Profile`.

    Construct with `CalibratedCostModel.from_file(path)`, or through the registry with the same
    positional arguments as the analytic model plus `profile=`:
    `COST_MODELS.create("calibrated", model, accelerator, layout, dtype="bf16", profile=path)`.
    The positional arguments are checks, not inputs: the model's shape, the dtype and the layout
    must match the profile's (a profile holds one configuration), else ValueError. `num_sms` fixes
    the SM count of the decode kernel's split plan instead of choosing it from the profile.
    """

    name = "calibrated"

    def __init__(
        self,
        model: ModelArch | str | None = None,
        accelerator: AcceleratorSpec | str | None = None,
        layout: ParallelLayout | None = None,
        dtype: str | None = None,
        *,
        profile: Profile | str | Path | None = None,
        num_sms: int | None = None,
    ) -> None:
        if profile is None:
            raise ValueError(
                "cost model 'calibrated' needs a measured profile (profile=PATH); measure one "
                "with `sagellm profile`, or use cost model 'analytic' on devices without one"
            )
        self.profile_path: str | None = None
        if isinstance(profile, (str, Path)):
            self.profile_path = str(profile)
            profile = Profile.load(profile)
        self.profile = profile
        h = profile.header
        src = self.profile_path or f"profile of {h.model} on {h.device}"
        self.layout = layout if layout is not None else ParallelLayout(h.tp, h.pp)
        if (self.layout.tp, self.layout.pp) != (h.tp, h.pp):
            raise ValueError(
                f"{src}: measured with tp={h.tp} pp={h.pp}, but the layout asks for "
                f"tp={self.layout.tp} pp={self.layout.pp}; the calibrated model reproduces "
                f"the profiled layout only (profile that layout, or use 'analytic')"
            )
        if dtype is not None and canonical_dtype(dtype) != h.dtype:
            raise ValueError(f"{src}: measured in {h.dtype}, but dtype {dtype!r} was asked for")
        if model is not None:
            self._check_model(model, src)
        self.accelerator_name: str | None = None
        if accelerator is not None:
            acc_name = accelerator if isinstance(accelerator, str) else accelerator.name
            self.accelerator_name = acc_name
            a, b = _gpu_tokens(acc_name), _gpu_tokens(h.device)
            if a and b and not a & b:
                raise ValueError(
                    f"{src}: measured on {h.device!r}, but accelerator {acc_name!r} was asked "
                    f"for; profile that device or use cost model 'analytic'"
                )
        if num_sms is not None and num_sms < 1:
            raise ValueError(f"num_sms must be >= 1, got {num_sms}")
        self.buckets = tuple(h.graph_buckets) if h.cuda_graphs else ()
        self.step_buckets = tuple(h.step_graph_buckets) if h.cuda_graphs else ()
        self.kv_heads = max(1, int(h.model_config["num_kv_heads"]) // h.tp)
        # The Triton kernel runs one program per (sequence, KV head[, split]) in one launch: critical path.
        self.splits_apply = h.attention_backend == "triton" and h.device_kind == "cuda"
        if self.splits_apply and num_sms is None:
            num_sms = datasheet_sm_count(h.device)
            self.sm_source = "datasheet" if num_sms is not None else "fitted"
        else:
            self.sm_source = "given"
        # On an accelerator Python launches kernels while earlier ones run; on a CPU both share the cores.
        self.overlapped = h.device_kind != "cpu"
        self._attn_term = "longest" if self.splits_apply else "prefill_kv"
        self.num_sms: int | None = num_sms if self.splits_apply else None
        self.sm_range: tuple[int, int] | None = None  # SM counts giving the chosen split plan
        self.notes: list[str] = []
        self._fit()
        self._decode_cache: dict[int, tuple[float, float, float, float]] = {}

    @classmethod
    def from_file(cls, path: str | Path) -> CalibratedCostModel:
        return cls(profile=path)

    def _check_model(self, model: ModelArch | str, src: str) -> None:
        if isinstance(model, str):
            model = get_model(model)
        cfg = self.profile.header.model_config
        diff = [
            f"{f} {getattr(model, f)} vs {cfg.get(f)}"
            for f in MODEL_SHAPE_FIELDS
            if getattr(model, f) != cfg.get(f)
        ]
        if diff:
            raise ValueError(
                f"{src}: profiled model {self.profile.header.model!r} differs in shape from "
                f"{model.name!r} ({'; '.join(diff)}); profile that model"
            )

    # ------------------------------------------------------------------------ shapes
    def rows(self, n: int) -> int:
        """Rows a decode step of n sequences computes: n padded to its CUDA-graph bucket."""
        b = self.buckets
        if not b or n > b[-1]:
            return n
        return b[bisect.bisect_left(b, n)]

    def splits(self, rows: int, num_sms: int | None = None) -> int:
        """Split-KV parts of the decode attention for `rows` rows (1 without the Triton kernel)."""
        sms = self.num_sms if num_sms is None else num_sms
        if not self.splits_apply or sms is None:
            return 1
        return triton_decode_splits(rows, self.kv_heads, sms, self.profile.header.max_model_len)

    def as_decode(self, shape: BatchShape) -> tuple[int, int, int] | None:
        """(sequences, summed attended context, longest context) when the engine runs `shape` as a
        decode step, else None.

        That is a pure decode, and, with CUDA graphs, any step in which every sequence computes
        exactly one token: the decode graph takes it whole, so a 1-token prefill chunk (what is left
        of a prompt after a full prefix-cache hit) rides along as a decode of context cached + 1.
        """
        if not shape.prefill:
            return (shape.num_decode, shape.decode_context, _decode_max(shape)) if shape.num_decode else None
        b = self.buckets
        if b and shape.num_seqs <= b[-1] and all(n == 1 for n, _ in shape.prefill):
            longest = max([_decode_max(shape)] + [c + 1 for _, c in shape.prefill])
            return shape.num_seqs, shape.decode_context + sum(c + 1 for _, c in shape.prefill), longest
        return None

    # ------------------------------------------------------------------------ fitting: decode
    def tile(self, rows: int, num_sms: int | None = None) -> int:
        """Key-tile width of the decode attention launch for `rows` rows (0 without the Triton kernel)."""
        sms = self.num_sms if num_sms is None else num_sms
        if not self.splits_apply or sms is None:
            return 0
        return triton_decode_tile(rows, self.kv_heads, sms, self.profile.header.dtype)

    def _decode_design(
        self, nc: list[tuple[int, int, int]], keys: list[int], split: tuple[int, ...], tiles: tuple[int, ...]
    ) -> np.ndarray:
        """Columns: fixed and ctx per row count, seq (with graphs), then one longest column per tile
        width among `tiles` (the launch's width per key), in ascending width."""
        idx = {k: i for i, k in enumerate(keys)}
        nk = len(keys)
        widths = sorted(set(tiles)) if self.splits_apply else []
        col = {w: 2 * nk + (1 if self.buckets else 0) + j for j, w in enumerate(widths)}
        X = np.zeros((len(nc), 2 * nk + (1 if self.buckets else 0) + len(widths)))
        for r, (n, ctx, mx) in enumerate(nc):
            i = idx[self.rows(n)]
            X[r, i] = 1.0
            X[r, nk + i] = ctx
            if (mix := self._between(n, idx, split, tiles)) is not None:
                j, f = mix
                X[r, nk + i] = f * ctx
                X[r, nk + j] = (1.0 - f) * ctx
            if self.buckets:
                X[r, 2 * nk] = n
            if self.splits_apply:
                X[r, col[tiles[i]]] = mx / split[i]
        return X

    def _between(
        self, n: int, idx: dict[int, int], split: tuple[int, ...], tiles: tuple[int, ...]
    ) -> tuple[int, float] | None:
        """(j, f): a decode of n sequences in the graph of r rows reads its KV at f times the per-token
        rate of r rows plus 1 - f times that of keys[j], the graph bucket below r, where both are
        fitted row counts (`idx`: row count -> key index) and launch alike (one split, the same tile
        width in `split`, `tiles`); None: at r's own rate.

        The grid times full buckets only, while served steps mostly fill theirs part way, and a
        padded row reads no KV: the attention's programs are the n sequences'. In the validation runs
        in the tree (five hosts, H100 and H200, Llama and Qwen3), decode graphs of 96 rows (81-96
        sequences) had come out 2.3-4.6% slow on each of the eight sync runs with 50+ of them; with
        the rate by n, 0.3-2.1%. Summed over all 18 runs, |predicted - measured| fell from 3.4% to
        1.2% of their time at 96 rows and from 1.5% to 0.8% at 80, and rose from 0.7% to 1.0% at 128
        and 0.3% to 0.7% at 192; the 16 sync runs' largest headline errors summed 201.1 -> 193.2
        points, 10 of them within 5% (9 before)."""
        r = self.rows(n)
        b = self.buckets
        k = bisect.bisect_left(b, r)
        if n >= r or not 0 < k < len(b) or b[k] != r:
            return None
        i, j = idx.get(r), idx.get(b[k - 1])
        if i is None or j is None or not split[i] == split[j] == 1 or tiles[i] != tiles[j]:
            return None
        return j, (n - b[k - 1]) / (r - b[k - 1])

    def _fit_decode(self, samples: list[ShapeSample]) -> TermFit:
        src = self.profile_path or "profile"
        nc_all = [self.as_decode(s.shape) for s in samples]
        by_key: dict[int, set[int]] = {}
        for n, ctx, _ in nc_all:  # type: ignore[misc]
            by_key.setdefault(self.rows(n), set()).add(ctx)
        keys = sorted(k for k, ctxs in by_key.items() if len(ctxs) >= 2)
        if not keys:
            raise ValueError(
                f"{src}: the decode group needs, for at least one batch size, samples at two or more "
                f"contexts ({len(samples)} decode sample(s)); profile a larger grid"
            )
        thin = sorted(set(by_key) - set(keys))
        if thin:
            self.notes.append(
                f"decode rows {thin}: fewer than two contexts profiled, so their lines are interpolated "
                "from neighbouring rows (their samples are reported but not fitted)"
            )
        use = [i for i, x in enumerate(nc_all) if self.rows(x[0]) in keys]  # type: ignore[index]
        nc = [nc_all[i] for i in use]
        y = np.array([samples[i].median_s for i in use])
        # The split plan: given, or the SM count whose plan fits best (ties: the smallest count).
        if self.splits_apply and self.num_sms is None:
            plans: dict[tuple[tuple[int, ...], tuple[int, ...]], list[int]] = {}
            for sms in SM_CANDIDATES:
                key = (tuple(self.splits(k, sms) for k in keys), tuple(self.tile(k, sms) for k in keys))
                plans.setdefault(key, []).append(sms)
            best = None
            for (plan, tiles), sms_list in plans.items():
                X = self._decode_design(nc, keys, plan, tiles)
                c = _nnls_relative(X, y)
                sse = float(np.sum(((X @ c - y) / y) ** 2))
                if best is None or sse < best[0] * (1 - 1e-9):
                    best = (sse, plan, sms_list)
            assert best is not None
            self.num_sms = best[2][0]
            self.sm_range = (best[2][0], best[2][-1])
        plan = tuple(self.splits(k) for k in keys)
        tiles = tuple(self.tile(k) for k in keys)
        X = self._decode_design(nc, keys, plan, tiles)
        nk = len(keys)
        first = 2 * nk + (1 if self.buckets else 0)
        bulk, longest = slice(nk, 2 * nk), slice(first, X.shape[1])
        one_wave = np.array([self._split_launch(self.rows(n)) for n, _, _ in nc])
        self._dec_overlap = 0.0
        if first < X.shape[1] and one_wave.any():
            coef, self._dec_overlap = _fit_overlap(X, y, bulk, longest, one_wave)
        else:
            coef = _nnls_relative(X, y)
        self._dec_keys = keys
        self._dec_plan = ({k: i for i, k in enumerate(keys)}, plan, tiles)
        self._dec_a = [float(v) for v in coef[:nk]]
        self._dec_b = [float(v) for v in coef[nk : 2 * nk]]
        self._dec_seq = float(coef[2 * nk]) if self.buckets else 0.0
        widths = sorted(set(tiles)) if self.splits_apply else []
        # Per tile width; a width no fitted row count launches (rows interpolated past the profiled
        # ones) takes the nearest fitted width's coefficient.
        self._dec_longest = {w: float(coef[first + j]) for j, w in enumerate(widths)}
        terms = (
            *(f"fixed[{k}]" for k in keys),
            *(f"ctx[{k}]" for k in keys),
            *(("seq",) if self.buckets else ()),
            *(f"longest[{w}-key tiles]" for w in widths),
            *(("overlap[split launches]",) if widths else ()),
        )
        coefs = (*map(float, coef), *((self._dec_overlap,) if widths else ()))
        measured = [s.median_s for s in samples]
        predicted = [self._decode_execute(*x) for x in nc_all]  # type: ignore[misc]
        return TermFit(terms, coefs, tuple(keys), tuple(measured), tuple(predicted))

    def _key_line(self, k: int) -> tuple[float, float]:
        """(A, b) of the decode line for `k` rows: fitted, or interpolated linearly between the nearest
        fitted row counts (beyond the ends: the end's slope, the intercept extended linearly, never
        below the end's)."""
        keys, A, B = self._dec_keys, self._dec_a, self._dec_b
        i = bisect.bisect_left(keys, k)
        if i < len(keys) and keys[i] == k:
            return A[i], B[i]
        if len(keys) == 1:
            return A[0], B[0]
        if i == 0:
            return A[0], B[0]
        if i == len(keys):
            k0, k1 = keys[-2], keys[-1]
            slope = (A[-1] - A[-2]) / (k1 - k0)
            return max(A[-1], A[-1] + slope * (k - k1)), B[-1]
        k0, k1 = keys[i - 1], keys[i]
        f = (k - k0) / (k1 - k0)
        return A[i - 1] + f * (A[i] - A[i - 1]), B[i - 1] + f * (B[i] - B[i - 1])

    def _decode_coefs(self, n: int) -> tuple[float, float, float, float]:
        """(a, b, c, g) of the engine's decode step alone: execute = a + u + v - g * min(u, v) with
        u = b * ctx and v = c * max_ctx; g is the overlap of split launches (0 for the others)."""
        r = self.rows(n)
        A, b = self._key_line(r)
        g = self._dec_overlap if self._split_launch(r) else 0.0
        if (mix := self._between(n, *self._dec_plan)) is not None:
            j, f = mix
            b = f * b + (1.0 - f) * self._dec_b[j]
        return A + self._dec_seq * n, b, self._longest(r) / self.splits(r), g

    def _split_launch(self, rows: int) -> bool:
        """The decode launch for `rows` rows splits the keys: one wave of programs, where the bulk
        and longest-program terms overlap (g)."""
        return self.splits(rows) > 1

    def _longest(self, rows: int) -> float:
        """The longest-program coefficient of the decode launch for `rows` rows (per key, before splits)."""
        by_width = self._dec_longest
        if not by_width:
            return 0.0
        w = self.tile(rows)
        if w in by_width:
            return by_width[w]
        return by_width[min(by_width, key=lambda x: abs(x - w))]

    def _decode_execute(self, n: int, ctx: int, mx: int) -> float:
        return _decode_time(*self._decode_coefs(n), ctx, mx)

    # ------------------------------------------------------------------------ fitting: eager
    def _fit_eager(self, samples: list[ShapeSample]) -> TermFit:
        src = self.profile_path or "profile"
        attn_terms = ("prefill_attn", "decode_ctx", self._attn_term)
        base = len(_GPU_BASE) + len(attn_terms) + len(_CPU_TERMS)
        knots = _knots([s.shape.num_tokens for s in samples], PREFILL_KNOT_LADDER, len(samples) - base - 2)
        gpu_terms = (*_GPU_BASE, *(f"token>{k}" for k in knots), *attn_terms)
        terms = (*gpu_terms, *_CPU_TERMS)
        if len(samples) < len(terms):
            raise ValueError(
                f"{src}: {len(samples)} prefill sample(s), but fitting the prefill group needs at "
                f"least {len(terms)} ({', '.join(terms)}); profile a larger grid"
            )
        shapes = [s.shape for s in samples]
        G = np.array([self._gpu_row(s, knots) for s in shapes])
        C = np.array([_cpu_row(s, self.step_bucket(s) is not None) for s in shapes])
        prep = np.array([self._prep(sh) for sh in shapes])
        y = np.array([s.median_s for s in samples]) - prep  # the device waits for the preparation

        known = np.array([self._decode_launch_longest(s) for s in shapes])

        def fit(Gm: np.ndarray, off: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            if self.overlapped:
                return _fit_slower_of_two(Gm, C, y, off)
            both = _nnls_relative(np.column_stack([Gm, C]), y - off)
            return both[: Gm.shape[1]], both[Gm.shape[1] :]

        g, c = fit(G, known)
        # A one-wave decode launch hides the smaller of its bulk (decode_ctx) and its longest program
        # under the larger, by the decode group's g: given which is smaller the model is linear again,
        # so alternate until that stops changing.
        iu = gpu_terms.index("decode_ctx")
        wave = np.array([self._one_wave_decodes(s) for s in shapes], dtype=bool)
        if self._dec_overlap and wave.any():
            seen = None
            for _ in range(12):
                u_small = G[:, iu] * g[iu] < known
                if seen is not None and np.array_equal(u_small, seen):
                    break
                seen = u_small
                Gr = G.copy()
                Gr[wave & u_small, iu] *= 1.0 - self._dec_overlap
                off = np.where(wave & ~u_small, (1.0 - self._dec_overlap) * known, known)
                g, c = fit(Gr, off)
        if not any(s.num_decode for s in samples):
            # No mixed batches measured: decode attention inside a mixed step reads its KV at the bulk
            # rate the decode group measured at its widest batch.
            g[gpu_terms.index("decode_ctx")] = self._dec_b[-1]
            self.notes.append(
                "no mixed samples: the decode_ctx term of the prefill group is the decode group's "
                "per-token slope at its largest batch"
            )
        self._gpu_coef = tuple(float(v) for v in g)
        self._cpu_coef = tuple(float(v) for v in c)
        self._pf_knots = knots
        self._pf_ctx_col = iu
        gpu = G @ g + np.array([self._decode_launch(s, r) for s, r in zip(shapes, G)])
        predicted = np.maximum(gpu, C @ c) if self.overlapped else gpu + C @ c
        predicted += prep
        y += prep
        return TermFit(
            terms, self._gpu_coef + self._cpu_coef, knots, tuple(y.tolist()), tuple(predicted.tolist())
        )

    def path(self, shape: BatchShape) -> str:
        """How the engine runs a step, as the model mirrors it: the decode graph of B rows, a step
        graph of T tokens, or Python-launched work, binned by 256 new tokens. Reports sum the error
        per path, which is where a systematic one shows (a slow graph bucket, a launch-bound range)."""
        if shape.num_seqs == 0:
            return "idle"
        kind = self.graph_kind(shape)
        if kind == "step":
            return f"step graph {self.step_bucket(shape)}"
        d = self.as_decode(shape)
        if d is not None:
            return f"{'decode graph' if kind else 'decode'} {self.rows(d[0])}"
        lo = (shape.num_tokens - 1) // 256 * 256
        return f"eager {lo + 1}-{lo + 256} tokens"

    def graph_kind(self, shape: BatchShape) -> str | None:
        """'decode' or 'step' when the engine replays a CUDA graph for this step, else None (eager)."""
        d = self.as_decode(shape)
        if d is not None:
            return "decode" if self.buckets and d[0] <= self.buckets[-1] else None
        return "step" if self.step_bucket(shape) is not None else None

    def step_bucket(self, shape: BatchShape) -> int | None:
        """The step-graph bucket the engine runs this (non-decode) step in, or None when it runs eagerly."""
        b = self.step_buckets
        t = shape.num_tokens
        if not b or t > b[-1] or shape.num_seqs > min(self.profile.header.max_num_seqs, b[-1]):
            return None
        return b[bisect.bisect_left(b, t)]

    def _gpu_row(self, shape: BatchShape, knots: tuple[int, ...]) -> list[float]:
        return _gpu_row(shape, knots, self.splits_apply, self.step_bucket(shape))

    def _one_wave_decodes(self, shape: BatchShape) -> bool:
        """The decodes' attention launch of an eager step fits in one wave (at most a program per SM),
        where its longest program runs while the others read the bulk of the KV, as in a split
        decode launch."""
        n = shape.num_decode
        return self.splits_apply and self.num_sms is not None and 0 < n * self.kv_heads <= self.num_sms

    def _decode_launch_longest(self, shape: BatchShape) -> float:
        """Seconds of the longest program of an eager step's decode launch (the Triton kernel runs a
        step's one-token sequences in a launch of their own, unsplit, with the tile width the decode
        launch of as many rows gets): the decode group's longest coefficient for that width times
        the longest context. Taken from the decode group, where skewed batches pin it, not fitted:
        the grid's mixed samples have even contexts, which cannot tell it from decode_ctx, and fitted
        freely it came out 1.16-1.5x the decode group's (three H200 profiles), 5-12% too slow on
        Mooncake steps with 5-16 decodes of up to 27k tokens beside a chunk."""
        if not self.splits_apply or not shape.num_decode or not shape.prefill:
            return 0.0
        b = self.step_bucket(shape)
        rows = shape.num_decode if b is None else min(self.profile.header.max_num_seqs, b)
        return self._longest(rows) * _decode_max(shape)

    def _decode_launch(self, shape: BatchShape, row) -> float:
        """The decode launch's longest program less what a one-wave launch hides of the smaller of
        it and the decodes' bulk read (decode_ctx), by the decode group's overlap g."""
        v = self._decode_launch_longest(shape)
        if not v or not self._dec_overlap or not self._one_wave_decodes(shape):
            return v
        u = self._gpu_coef[self._pf_ctx_col] * row[self._pf_ctx_col]
        return v - self._dec_overlap * min(u, v)

    def _eager_parts(self, shape: BatchShape) -> tuple[float, float]:
        """(device, launch) seconds of an eager step: the step takes the larger on an accelerator, the
        sum on a CPU. A step-graph replay has no launch part and runs its bucket's token count."""
        row = self._gpu_row(shape, self._pf_knots)
        g = math.fsum(a * x for a, x in zip(self._gpu_coef, row)) + self._decode_launch(shape, row)
        cpu = _cpu_row(shape, self.step_bucket(shape) is not None)
        c = math.fsum(a * x for a, x in zip(self._cpu_coef, cpu))
        return g, c

    def _scale(self, shape: BatchShape) -> float:
        """The serving loop's factor of a step with prefill tokens: eager steps only (see
        `_fit_eager_scale`); a step-graph replay takes the grid's time, as decode graphs do."""
        return 1.0 if self.step_bucket(shape) is not None else self.eager_scale

    def _eager_execute(self, shape: BatchShape) -> float:
        g, c = self._eager_parts(shape)
        return self._scale(shape) * (max(g, c) if self.overlapped else g + c) + self._prep(shape)

    def _fit_eager_prep(self, samples: list[ShapeSample]) -> None:
        """Host seconds of building an eager step's inputs (`ShapeSample.prep_s`), fixed + per
        sequence + per context token (the block tables), by non-negative least squares on seconds.

        Python launches an eager step's kernels while the device runs the earlier ones, but nothing
        is queued before the inputs exist: the device waits for all of the preparation, so it adds
        to the step instead of hiding under it, and it grows with the batch (H200 host AA: 1.0 ms
        beside 4 decodes, 2.2 ms beside 224 decodes of 2k tokens, after the block tables' padding
        went to numpy; up to 7.2 ms before). Fitted into the device terms it bent them: as one more
        per-sequence term of the grid fit it moved the twenty sync runs' largest errors from 186 to
        201 points, with Mooncake's worst. Profiles without prep times (before this field) take it
        as 0, as before: their fits absorb it."""
        rows = [
            (s.shape, s.prep_s) for s in samples if s.prep_s is not None and self.step_bucket(s.shape) is None
        ]
        self._eager_prep: tuple[float, float, float] | None = None
        if not self.overlapped or _distinct_sizes(sh for sh, _ in rows) < 3:
            return  # a CPU device's launch terms already add up with the compute
        c = _nnls_absolute(_host_rows(sh for sh, _ in rows), np.array([x for _, x in rows]))
        self._eager_prep = (float(c[0]), float(c[1]), float(c[2]))
        self.notes.append(
            f"eager input preparation (host, before the first kernel; {len(rows)} samples): "
            f"{1e3 * c[0]:.2f} ms + {1e6 * c[1]:.2f} us per sequence + {1e9 * c[2]:.1f} ns per context token"
        )

    def _prep(self, shape: BatchShape) -> float:
        """Seconds the device waits for the inputs of a step with prefill tokens (`as_decode` None,
        as every caller has checked): 0 for a step-graph replay, or without a fit."""
        p = self._eager_prep
        if p is None or self.step_bucket(shape) is not None:
            return 0.0
        return _line_s(p, shape, _context_tokens(shape))

    def _fit_eager_scale(self, serving: list[ShapeSample]) -> None:
        """How much slower the serving loop runs eager steps than the grid measured them: the median
        of measured / fitted over the serving phase's steps with prefill tokens (1 without a serving
        phase), applied to eager steps.

        The grid times each shape in isolation, three repeats, over a controlled spread of tokens,
        prefixes and decodes, so it pins how the step time depends on the shape; inside the serving
        loop the same work runs a few percent slower (the GPU waited on the host between steps). Fitting
        the serving steps together with the grid let their in-loop slowdown bend the shape terms (on
        an H200 it overpredicted 1-2k-token chunks by 5-8% and underpredicted step-graph chunks by ~7%,
        TTFT +5-9% on Azure); one factor keeps the grid's shape and takes the loop's level.

        Step-graph replays are not scaled: they launch nothing from Python (their host part is the
        graph host line), and the serving phase runs its own over prefixes shared by many sequences,
        0.91-0.94x the fit (nine H200 profiles of benchmarks/results/validate_h200), as it runs its
        decode steps faster than the grid. Scaled, the served 512-token step graphs of every Azure run
        there came out 1.6-13.4% slow; at the grid's time, 0.7-7.2%. The factor is still the median
        over step graphs and eager steps together: over the eager steps alone it came to 1.02-1.11
        and over-predicted the validation runs' eager steps (the twenty sync runs' largest headline
        errors summed 186 points against 250).

        Where the profile times eager input preparation (`_fit_eager_prep`), the factor comes from
        the serving phase's eager steps of fewer than FEW_SEQS sequences alone. Those profiles model
        what grows with the batch on the host, and what is left to set the median is the serving
        workload's prefix sharing: its many-sequence steps decode over shared prefixes and run 4-10%
        under the fit (H200 hosts AC, AE, AG), while a trace's private contexts do not. Over all
        steps the factor was 0.957 on AC and put its Azure eager steps 5.7-8.2% fast (largest errors
        10.7% and 44.7%, recomputed); over the few-sequence ones it is 1.020 (5.0% and 14.3%).
        Without prep times the many-sequence steps' host time lives only in the median over all."""
        self.eager_scale = 1.0
        if not serving:
            return
        base, what = serving, "steps with prefill tokens"
        if self._eager_prep is not None:
            few = [s for s in serving if self.step_bucket(s.shape) is None and s.shape.num_seqs < FEW_SEQS]
            if len(few) >= FEW_SEQS_MIN_STEPS:
                base, what = few, f"eager steps of fewer than {FEW_SEQS} sequences"
        ratio = [s.median_s / self._eager_execute(s.shape) for s in base]
        self.eager_scale = float(np.median(ratio))
        graphs = sum(self.step_bucket(s.shape) is not None for s in base)
        self.notes.append(
            f"{what} in the serving phase ran {self.eager_scale:.3f}x the grid fit "
            f"(median over {len(base)} steps, {graphs} of them step graphs); applied to eager steps, "
            "step graphs keep the grid's time"
        )

    # ------------------------------------------------------------------------ fitting: overhead
    def _fit_overhead(self) -> None:
        if self.profile.serving:
            self._fit_overhead_serving()
            return
        ov = self.profile.overhead
        if not ov:
            zero = TermFit(_SCHEDULE_TERMS, (0.0,) * len(_SCHEDULE_TERMS), (), (), ())
            self.schedule_fit = zero
            self.complete_fit = TermFit(_COMPLETE_TERMS, (0.0,) * len(_COMPLETE_TERMS), (), (), ())
            self.notes.append(
                "no overhead samples: CPU work outside the step (scheduling, bookkeeping) is taken as 0"
            )
            return
        X = np.array([_overhead_row(o) for o in ov])
        ys = np.maximum(np.array([o.schedule_s for o in ov]), 1e-9)  # a timer tick of 0: undefined
        yc = np.maximum(np.array([o.complete_s for o in ov]), 1e-9)
        cs = _nnls_relative(X, ys)
        self.schedule_fit = TermFit(_SCHEDULE_TERMS, tuple(map(float, cs)), (), tuple(ys), tuple(X @ cs))
        samples = self.profile.samples
        aligned = len(samples) == len(ov) and all(
            s.num_decode + len(s.prefill) == o.num_seqs for s, o in zip(samples, ov)
        )
        if aligned:  # the profiler writes one overhead record per shape sample, in the same order
            hashed = np.array([float(_context_tokens(s.shape)) for s in samples])
            Xc = np.column_stack([X, hashed])
            cc = _nnls_relative(Xc, yc)
        else:
            Xc = np.column_stack([X, np.zeros(len(ov))])
            cc = np.append(_nnls_relative(X, yc), 0.0)
            self.notes.append(
                "overhead records do not pair with the shape samples: bookkeeping is fitted without "
                "its hashing term"
            )
        self.complete_fit = TermFit(_COMPLETE_TERMS, tuple(map(float, cc)), (), tuple(yc), tuple(Xc @ cc))

    def _fit_overhead_serving(self) -> None:
        """Schedule and complete phases of the serving log, by non-negative least squares on seconds."""
        sv = self.profile.serving
        X = np.array([[1.0, float(t.num_seqs), float(len(t.prefill)), float(t.prefill_tokens)] for t in sv])
        hashed = np.array([float(t.prefill_tokens + t.num_decode) for t in sv])
        Xc = np.column_stack([X, hashed])
        ys = np.array([t.schedule_s for t in sv])
        yc = np.array([t.complete_s for t in sv])
        cs = _nnls_absolute(X, ys)
        cc = _nnls_absolute(Xc, yc)
        self.schedule_fit = TermFit(_SCHEDULE_TERMS, tuple(map(float, cs)), (), tuple(ys), tuple(X @ cs))
        self.complete_fit = TermFit(_COMPLETE_TERMS, tuple(map(float, cc)), (), tuple(yc), tuple(Xc @ cc))
        self.notes.append(
            f"CPU phases of the loop (schedule, complete) fitted to {len(sv)} iterations of the profile's "
            f"serving phase: mean {1e6 * ys.mean():.0f} + {1e6 * yc.mean():.0f} us per iteration"
        )

    def _fit_graph_host(self) -> None:
        """Host seconds of a graph step (staging its inputs, block tables included, and reading its
        ids back), fixed + per sequence + per context token (the tables' length) per kind of graph
        (decode, step), by non-negative least squares on seconds. Without the context term the line
        missed by 0.77 ms rms on an H200 profile (0.28 ms with it): the block tables' staging grows
        with the context.

        Where the serving phase records its launches (`ServingStep.launch_s`), the line is the
        grid's launches' slopes at the loop's level, plus the grid's median remainder (wall less
        launch less device time: waking on the step's end, reading the ids). The grid's own launches
        run slow: on H200 hosts the grid launched a decode graph 0.1-0.2 ms slower than the loop did
        (a batch-1 graph in 0.23-0.32 ms after building its synthetic batch; the loop in 0.11-0.19 ms,
        as did the same step repeated back to back), and the grid's wall times put Azure's decode
        steps 3% slow at every batch size on one host. The slopes come from the grid because the
        serving phase's contexts stay short (~2k tokens a sequence), where sequences and context
        tokens cannot be told apart: fitted there, one host's line had no context term and put
        Mooncake's long-context decode steps 5% fast. Without serving launches the line is the grid's
        wall less device time. Absent without device times: then async scheduling cannot be
        simulated from the profile."""
        grid: dict[str, list[ShapeSample]] = {"decode": [], "step": []}
        for s in self.profile.samples:
            kind = self.graph_kind(s.shape)
            if s.device_s is not None and kind is not None:
                grid[kind].append(s)
        served: dict[str, list[tuple[BatchShape, float]]] = {"decode": [], "step": []}
        for t in self.profile.serving:
            kind = self.graph_kind(t.shape)
            if t.launch_s is not None and kind is not None:
                served[kind].append((t.shape, t.launch_s))
        self._graph_host: dict[str, tuple[float, float, float]] = {}
        # The launch alone (staging and replay, ServingStep.launch_s) at the loop's level, where the
        # serving phase recorded it: what a run's own launches compare with (`host_launch`).
        self._graph_launch: dict[str, tuple[float, float, float]] = {}
        self._loop_host: set[str] = set()  # kinds whose line comes from the serving loop's launches
        for kind, samples in grid.items():
            if _distinct_sizes(s.shape for s in samples) < 3:
                continue
            timed = [s for s in samples if s.launch_s is not None]
            loop = served[kind]
            if loop and _distinct_sizes(s.shape for s in timed) >= 3:
                # Slopes from the grid's launches, which span long contexts (the serving phase's stay
                # short, where sequences and context tokens cannot be told apart); the fixed part
                # from the loop's, as the mean offset of its launches from those slopes.
                c = _nnls_absolute(_host_rows(s.shape for s in timed), np.array([s.launch_s for s in timed]))
                rest = [s.median_s - s.launch_s - s.device_s for s in timed]
                launch = _loop_level(c, loop)
                self._graph_launch[kind] = (launch, float(c[1]), float(c[2]))
                c[0] = launch + max(0.0, float(np.median(rest)))
                how = f"the grid's launches, offset to the serving loop's ({len(loop)})"
                self._loop_host.add(kind)
            else:
                host = np.array([max(0.0, s.median_s - s.device_s) for s in samples])
                c = _nnls_absolute(_host_rows(s.shape for s in samples), host)
                how = f"wall less device time ({len(samples)} grid samples)"
            self._graph_host[kind] = (float(c[0]), float(c[1]), float(c[2]))
            self.notes.append(
                f"host part of a {kind} graph step, from {how}: {1e6 * c[0]:.0f} + "
                f"{1e6 * c[1]:.2f} us per sequence + {1e9 * c[2]:.1f} ns per context token"
            )

    def _graph_host_s(self, kind: str, shape: BatchShape) -> float:
        return _line_s(self._graph_host[kind], shape, _context_tokens(shape))

    def _as_served(self, s: ShapeSample) -> ShapeSample:
        """A graph sample as the loop runs it: device time plus the loop's host part, where the host
        line comes from the serving phase's launches (else the sample as the grid timed it)."""
        kind = self.graph_kind(s.shape)
        if s.device_s is None or kind not in self._loop_host:
            return s
        t = s.device_s + self._graph_host_s(kind, s.shape)
        return replace(s, times_s=(t,), median_s=t)

    def _fit_eager_launch(self, samples: list[ShapeSample]) -> None:
        """Host seconds of launching an eager step (`ShapeSample.launch_s`: Python's kernel launches,
        input staging), fixed + per sequence + per new token, by non-negative least squares on
        seconds. The eager fit's launch terms cannot stand in: the grid's eager steps are GPU-bound,
        so max(launch, device) never shows the launch (on an H200 profile they fit to 0), while one
        step ahead the launch is what holds the host, and so the previous step's tokens and the next
        decision. None when the profile has no launch times.

        Where the serving phase logged its eager launches, the line keeps the grid's slopes and takes
        the loop's level (the mean offset of the loop's launches from them), as a graph step's host
        line does (`_fit_graph_host`): the grid's level is the host's state while the grid ran, and
        it moves. Two profiles of one H100 host 22 minutes apart put the line's fixed part at 14.9
        and 22.7 ms, while their serving loops launched eager steps in 17.5 and 16.7 ms (medians) and
        their device times agreed to 0.04% (median; `python -m benchmarks.profile_drift`)."""
        # a graph step's launch stages inputs for one replay: not an eager launch
        timed = [s for s in samples if s.launch_s and s.device_s is None]
        self._eager_launch: tuple[float, float, float] | None = None
        if len({(s.shape.num_seqs, s.shape.num_tokens) for s in timed}) < 3:
            return
        X = _host_rows((s.shape for s in timed), _new_tokens)
        c = _nnls_absolute(X, np.array([s.launch_s for s in timed]))
        loop = [
            (t.shape, t.launch_s)
            for t in self.profile.serving
            if t.launch_s and self.as_decode(t.shape) is None and self.step_bucket(t.shape) is None
        ]
        how = f"{len(timed)} grid samples"
        if loop:
            c[0] = _loop_level(c, loop, _new_tokens)
            how += f", at the level of the serving loop's {len(loop)}"
        self._eager_launch = (float(c[0]), float(c[1]), float(c[2]))
        self.notes.append(
            f"eager launch (host, {how}): {1e3 * c[0]:.2f} ms + {1e6 * c[1]:.1f} us per "
            f"sequence + {1e6 * c[2]:.2f} us per new token"
        )
        # Where the launch is the step, the host's speed is its time: say how much of the grid that is.
        bound = [
            s.shape.num_tokens
            for s in timed
            if s.launch_s - (s.prep_s or 0.0) >= LAUNCH_BOUND * (s.median_s - (s.prep_s or 0.0))
        ]
        if bound:
            self.notes.append(
                f"{len(bound)} of {len(timed)} eager grid samples ({min(bound)}-{max(bound)} tokens) took no "
                f"longer than {1 / LAUNCH_BOUND:.2f}x their launch after the preparation: there the host's "
                "speed, not the device's, sets the step"
            )

    def _overhead(self, s: int, p: int, ptok: int, nd: int) -> float:
        """Scheduler plus bookkeeping seconds of an iteration of s sequences, p of them prefilling
        ptok tokens, nd decoding: each new token is hashed once, when its block fills."""
        a, b = self.schedule_fit.coef, self.complete_fit.coef
        per_call = (a[0] + b[0]) + (a[1] + b[1]) * s + (a[2] + b[2]) * p
        return per_call + (a[3] + b[3]) * ptok + b[4] * (ptok + nd)

    # ------------------------------------------------------------------------ fitting: all
    def _fit(self) -> None:
        src = self.profile_path or "profile"
        serving = [t.as_sample() for t in self.profile.serving]
        dec = [s for s in self.profile.samples if self.as_decode(s.shape) is not None]
        pre = [s for s in self.profile.samples if self.as_decode(s.shape) is None]
        if not dec or not pre:
            raise ValueError(
                f"{src}: needs both pure-decode and prefill samples "
                f"(has {len(dec)} decode, {len(pre)} with prefill)"
            )
        self._fit_graph_host()
        self._fit_eager_prep(pre)
        self.decode_fit = self._fit_decode([self._as_served(s) for s in dec])
        self.prefill_fit = self._fit_eager([self._as_served(s) for s in pre])
        self._fit_eager_scale([s for s in serving if self.as_decode(s.shape) is None])
        self._fit_overhead()
        self._fit_eager_launch(pre)
        if self.splits_apply:
            plan = {k: self.splits(k) for k in self._dec_keys}
            if self.sm_range is not None:
                lo, hi = self.sm_range
                how = (
                    f"chosen from the profile (the device is not in the SM table): the plan of "
                    f"{lo}{'' if lo == hi else f'-{hi}'} SMs fits the decode samples best"
                )
            else:
                how = f"for {self.num_sms} SMs ({self.sm_source})"
            self.notes.append(f"decode split-KV plan {plan} (rows: splits), {how}")

    # ------------------------------------------------------------------------ evaluation
    @staticmethod
    def _check(shape: BatchShape) -> None:
        nd, ctx, mx = shape.num_decode, shape.decode_context, shape.decode_max_context
        if ctx < nd or (nd == 0 and ctx != 0) or nd < 0:
            raise ValueError(
                f"BatchShape: decode_context ({ctx}) must be >= num_decode ({nd}) and 0 when there "
                f"are no decode sequences (each decode attends to at least its own token)"
            )
        if mx and not (nd and _even_max(nd, ctx) <= mx <= ctx - (nd - 1)):
            raise ValueError(
                f"BatchShape: decode_max_context ({mx}) must be 0 (not given) or lie between the even "
                f"share ({_even_max(nd, ctx) if nd else 0}) and decode_context - (num_decode - 1) "
                f"({ctx - nd + 1}) for {nd} decode(s) of {ctx} tokens"
            )
        for n, c in shape.prefill:
            if n < 1 or c < 0:
                raise ValueError(
                    f"BatchShape.prefill entry ({n}, {c}): expected (new tokens >= 1, cached >= 0)"
                )

    def stage_time(self, shape: BatchShape) -> float:
        """Seconds of one iteration: the engine's step plus its CPU scheduling and bookkeeping."""
        self._check(shape)
        if not shape.prefill:
            nd = shape.num_decode
            if nd == 0:
                return 0.0
            return _decode_time(*self.decode_line(nd), shape.decode_context, _decode_max(shape))
        ptok = sum(n for n, _ in shape.prefill)
        over = self._overhead(shape.num_seqs, len(shape.prefill), ptok, shape.num_decode)
        return self._execute(shape) + over

    def _execute(self, shape: BatchShape) -> float:
        """Seconds of the engine's step alone (`ModelRunner.execute`), from the group that runs it."""
        d = self.as_decode(shape)
        if d is None:
            return self._eager_execute(shape)
        return self._decode_execute(*d)

    def decode_line(self, num_decode: int) -> tuple[float, float, float, float]:
        """(a, b, c, g) with a pure-decode iteration of `num_decode` sequences costing
        a + u + v - g * min(u, v), u = b * decode_context, v = c * decode_max_context; `stage_time`
        computes such an iteration from these very numbers, in that order (`_decode_time`)."""
        if num_decode < 0:
            raise ValueError(f"num_decode must be >= 0, got {num_decode}")
        if num_decode == 0:
            return 0.0, 0.0, 0.0, 0.0
        got = self._decode_cache.get(num_decode)
        if got is None:
            a, b, c, g = self._decode_coefs(num_decode)
            got = (a + self._overhead(num_decode, 0, 0, num_decode), b, c, g)
            self._decode_cache[num_decode] = got
        return got

    def overlap_parts(self, shape: BatchShape) -> OverlapParts:
        """`CostModel.overlap_parts`: a graph step's device work is its execute time less its host part
        (`_fit_graph_host`), which runs after the scheduler's decision; an eager step's kernels run as
        Python launches them: its device and launch parts are those of `_eager_parts` (scaled), and it
        lasts the slower of the two, as in `stage_time`. The bookkeeping comes after the wait."""
        self._check(shape)
        if not shape.num_seqs:
            return OverlapParts(0.0, 0.0, 0.0, 0.0, True)
        sched, comp = self._cpu_phases(shape)
        kind = self.graph_kind(shape)
        if kind is not None:
            ex = self._execute(shape)
            line = self._graph_host.get(kind)
            if line is None:
                raise ValueError(
                    f"{self.profile_path or 'profile'}: no device times of {kind} graph steps "
                    "(samples' device_s); profile again with this version to simulate async scheduling"
                )
            h = min(ex, self._graph_host_s(kind, shape))
            return OverlapParts(sched + h, 0.0, ex - h, comp, True)
        if self.as_decode(shape) is not None or not self.overlapped:  # eager decodes, CPU devices: serial
            ex = self._execute(shape)
            return OverlapParts(sched, ex, ex, comp, False)
        g, c = self._eager_parts(shape)
        launch = self.host_launch(shape)
        if launch is None:  # no measured launch times: the eager fit's launch part (0 where GPU-bound)
            launch = self._scale(shape) * c
        return OverlapParts(sched, launch, self._scale(shape) * g + self._prep(shape), comp, False)

    def host_launch(self, shape: BatchShape) -> float | None:
        """Host seconds of launching the step (staging its inputs, then the graph's replay or Python's
        kernel launches), as the profile has them: for a graph step the launch part of its host line
        at the serving loop's level (`_fit_graph_host`), for an eager step the launch line
        (`_fit_eager_launch`); None where the profile has no launch times. The validation sets the
        run's own launches against it: the card's times repeat across hosts far better than the
        host's do."""
        kind = self.graph_kind(shape)
        if kind is not None:
            line = self._graph_launch.get(kind)
            tokens = _context_tokens(shape)
        else:
            line = self._eager_launch
            tokens = shape.num_tokens
        if line is None:
            return None
        return _line_s(line, shape, tokens)

    def parts(self, shape: BatchShape) -> dict[str, float]:
        """The iteration split as the engine splits it: 'execute' (ModelRunner.execute), 'schedule'
        (ReplicaCore.schedule) and 'complete' (ReplicaCore.complete); they sum to `stage_time`
        up to rounding."""
        self._check(shape)
        if shape.num_seqs == 0:
            return {"execute": 0.0, "schedule": 0.0, "complete": 0.0}
        sched, comp = self._cpu_phases(shape)
        return {"execute": self._execute(shape), "schedule": sched, "complete": comp}

    def _cpu_phases(self, shape: BatchShape) -> tuple[float, float]:
        """(schedule, complete) seconds of a non-empty iteration's CPU work outside the step."""
        s, p = shape.num_seqs, len(shape.prefill)
        ptok = sum(n for n, _ in shape.prefill)
        row = [1.0, float(s), float(p), float(ptok)]
        sched = sum(c * x for c, x in zip(self.schedule_fit.coef, row))
        comp = sum(c * x for c, x in zip(self.complete_fit.coef, row + [float(ptok + shape.num_decode)]))
        return sched, comp

    def breakdown(self, shape: BatchShape) -> dict[str, float]:
        """Seconds per fitted term (execute terms by name, plus 'schedule' and 'complete'), for reports;
        they sum to `stage_time(shape)` up to rounding. An eager step lists the terms of whichever of
        its GPU work and its CPU launch work is slower (the other is hidden under it)."""
        parts = self.parts(shape)
        out: dict[str, float] = {}
        if shape.num_seqs:
            d = self.as_decode(shape)
            if d is None:
                g, c = self._eager_parts(shape)
                row = self._gpu_row(shape, self._pf_knots)
                names = self.prefill_fit.terms[: len(self._gpu_coef)]
                k = self._scale(shape)
                gpu = list(zip(names, (k * a * x for a, x in zip(self._gpu_coef, row))))
                launch = self._decode_launch(shape, row)
                if launch:
                    gpu.append(("decode_longest", k * launch))
                graphed = self.step_bucket(shape) is not None
                cpu = zip(_CPU_TERMS, (k * a * x for a, x in zip(self._cpu_coef, _cpu_row(shape, graphed))))
                if not self.overlapped:
                    out.update(gpu)
                    out.update(cpu)
                else:
                    out.update(gpu if g >= c else cpu)
                if prep := self._prep(shape):
                    out["prep"] = prep
            else:
                n, ctx, mx = d
                a, b, c, g = self._decode_coefs(n)
                seq = self._dec_seq * n
                out = {
                    "fixed": a - seq,
                    "seq": seq,
                    "decode_ctx": b * ctx,
                    "longest": c * mx,
                    "overlap": -g * min(b * ctx, c * mx),
                }
        out["schedule"] = parts["schedule"]
        out["complete"] = parts["complete"]
        return out

    # ------------------------------------------------------------------------ reports
    def describe(self) -> dict:
        """What a run's metadata should say about this cost model."""
        h = self.profile.header
        return {
            "name": self.name,
            "profile": self.profile_path,
            "device": h.device,
            "model": h.model,
            "dtype": h.dtype,
            "tp": h.tp,
            "pp": h.pp,
            "profile_date": h.date,
        }

    def fit_report(self) -> dict:
        """Fitted coefficients and per-sample relative errors ((predicted - measured) / measured) of
        the step time; per group and over all samples."""
        groups = {}
        per_sample = []
        for group, fit, samples in (
            ("decode", self.decode_fit, [s for s in self.profile.samples if self.as_decode(s.shape)]),
            ("prefill", self.prefill_fit, [s for s in self.profile.samples if not self.as_decode(s.shape)]),
        ):
            groups[group] = fit.summary()
            for s, m, p in zip(samples, fit.measured, fit.predicted):
                per_sample.append(
                    {
                        "group": group,
                        "kind": s.kind,
                        "prefill": [list(x) for x in s.prefill],
                        "num_decode": s.num_decode,
                        "decode_context": s.decode_context,
                        "measured_s": m,
                        "predicted_s": p,
                        "rel_error": (p - m) / m,
                    }
                )
        e = np.abs([r["rel_error"] for r in per_sample])
        return {
            "cost_model": self.describe(),
            "groups": groups,
            "overhead": {"schedule": self.schedule_fit.summary(), "complete": self.complete_fit.summary()},
            "split_plan": {
                "num_sms": self.num_sms,
                "source": self.sm_source if self.splits_apply else None,
                "sm_range": list(self.sm_range) if self.sm_range else None,
                "splits": {str(k): self.splits(k) for k in self._dec_keys},
                "tiles": {str(k): self.tile(k) for k in self._dec_keys},
            },
            "all": {
                "n": int(e.size),
                "median_abs_rel_error": float(np.median(e)),
                "p90_abs_rel_error": float(np.percentile(e, 90)),
                "max_abs_rel_error": float(e.max()),
            },
            "samples": per_sample,
            "notes": list(self.notes),
        }

    def format_fit_report(self) -> str:
        r = self.fit_report()
        h = self.profile.header
        lines = [
            f"calibrated cost model: {h.model} on {h.device} ({h.dtype}, tp={h.tp}, pp={h.pp}), "
            f"{r['all']['n']} samples"
        ]
        for group, g in list(r["groups"].items()) + [(f"overhead.{k}", v) for k, v in r["overhead"].items()]:
            e = g["abs_rel_error"]
            err = (
                f"|rel err| median {e['median']:.2%}, p90 {e['p90']:.2%}, max {e['max']:.2%}"
                if e["median"] is not None
                else "no samples"
            )
            lines.append(f"  {group:<18} n={g['n']:<4} {err}")
            lines.append("    " + ", ".join(f"{t}={c:.4g}" for t, c in g["terms"].items()))
        a = r["all"]
        lines.append(
            f"  all step samples: |rel err| median {a['median_abs_rel_error']:.2%}, "
            f"p90 {a['p90_abs_rel_error']:.2%}, max {a['max_abs_rel_error']:.2%}"
        )
        lines += [f"  note: {n}" for n in r["notes"]]
        return "\n".join(lines)
