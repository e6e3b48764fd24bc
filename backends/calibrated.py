"""Calibrated cost model: iteration time as a sum of physically shaped terms fitted to a measured profile.

The analytic model (`backends/analytic.py`) predicts from datasheet peaks and assumed
efficiencies; this one predicts from what `engine/profiler.py` measured on the device itself.
It follows the approach of Vidur (Agrawal et al., MLSys 2024), which profiles operators on the
target GPU and fits a model to interpolate between measured shapes, but fits one whole engine step
per iteration, because what the simulator needs is the step time the engine actually exhibits
(kernel launches, CUDA-graph padding and Python input preparation included).

Terms (seconds; every coefficient >= 0, fitted by non-negative least squares on relative error,
so a 5 ms decode step weighs as much as a 500 ms prefill):

  execute, iterations with a prefill chunk ("prefill" group: prefill-only and mixed batches)
    fixed                    launches, LM-head weight read, per-step Python
    token * T                GEMMs, norms, activations of all T new tokens
    token>k * max(0, T - k)  extra slope past knot k: the GEMMs turn from weight-bound to
                             compute-bound (the roofline knee); piecewise linear, convex
    prefill_attn * sum n*(c + (n+1)/2)   causal attention FLOPs of each chunk (n new, c cached)
    prefill_kv * sum (c + n)             KV bytes the chunk attention reads
    decode_ctx * sum of decode contexts  decode attention of the batch's decodes
    seq * S                  per-sequence work: LM-head rows, sampling, block tables
  execute, decode steps ("decode" group: pure decodes, and with CUDA graphs any step in which every
  sequence computes one token, since the decode graph runs those whole; see `as_decode`)
    fixed, row * B, row>k * max(0, B - k)   B = rows the step computes: the batch padded to its
                             CUDA-graph bucket when graphs are on, else the batch size
    batched * [B > 1]        with graphs: what batch 1 saves when its graph uses the fused
                             GEMV kernels instead of cuBLAS (0 when it does not)
    seq * n                  per real sequence (LM-head rows and sampling skip the padding)
    decode_ctx * sum of contexts   split-KV paged attention reads every attended token's K and V
  CPU work outside the step (fitted separately for the scheduler and the bookkeeping)
    fixed + seq * S + prefill_seq * P + prefill_token * prefill tokens (prompt hashing)

A pure-decode batch of n sequences therefore costs exactly a(n) + b * decode_context, with
b the decode group's decode_ctx coefficient and a(n) everything else, which is what
`decode_line` returns and what `stage_time` computes for such a batch (the simulator's jump
over steady decode stretches relies on this identity).

Limits: the model reproduces the profiled configuration only (tp/pp, dtype, block size and the
CUDA-graph buckets as recorded); shapes beyond the profiled grid are extrapolated linearly from
the last knot. A prefill chunk that does not reach the end of its prompt skips the LM head and
sampling in the engine; the profile times final chunks, so such steps are slightly overestimated.
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from backends.accelerators import AcceleratorSpec
from backends.cost_model import COST_MODELS, BatchShape, ParallelLayout
from backends.models import ModelArch, get_model
from backends.profile import OverheadSample, Profile, ShapeSample, canonical_dtype

PREFILL_KNOT_LADDER: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
DECODE_KNOT_LADDER: tuple[int, ...] = (8, 16, 32, 64, 128, 192)
_MIN_SIDE = 2  # distinct profiled sizes needed on each side of a knot to identify its slope change
_SHAPE_FIELDS = (
    "num_layers",
    "hidden_size",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "intermediate_size",
    "vocab_size",
)


@dataclass(frozen=True)
class TermFit:
    """One fitted linear model: coefficient per named term, and how well it reproduces its samples."""

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


def _nnls_relative(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """argmin_{c >= 0} sum(((X c - y) / y)^2), with columns scaled for conditioning."""
    w = 1.0 / np.maximum(y, 1e-9)
    A = X * w[:, None]
    scale = np.abs(A).max(axis=0)
    scale[scale == 0] = 1.0
    c, _ = nnls(A / scale, np.ones(len(y)), maxiter=50 * X.shape[1])
    return c / scale


def _knots(values: list[int], ladder: tuple[int, ...], budget: int) -> tuple[int, ...]:
    """Ladder knots with at least _MIN_SIDE distinct sizes at or below and above them, at most `budget`."""
    v = np.unique(np.asarray(values))
    ks = [k for k in ladder if (v <= k).sum() >= _MIN_SIDE and (v > k).sum() >= _MIN_SIDE]
    while len(ks) > max(budget, 0):
        ks.pop(len(ks) // 2)  # thin out evenly, keeping the extremes
    return tuple(ks)


def _prefill_terms(knots: tuple[int, ...]) -> tuple[str, ...]:
    return (
        "fixed",
        "token",
        *(f"token>{k}" for k in knots),
        "prefill_attn",
        "prefill_kv",
        "decode_ctx",
        "seq",
    )


def _prefill_row(prefill, nd: int, ctx: int, knots: tuple[int, ...]) -> list[float]:
    t = nd
    attn = 0.0
    kvt = 0
    for n, c in prefill:
        t += n
        attn += n * (c + (n + 1) * 0.5)
        kvt += c + n
    return [
        1.0,
        float(t),
        *(float(max(0, t - k)) for k in knots),
        attn,
        float(kvt),
        float(ctx),
        float(nd + len(prefill)),
    ]


_OVERHEAD_TERMS = ("fixed", "seq", "prefill_seq", "prefill_token")


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
    must match the profile's (a profile holds one configuration), else ValueError.
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
        self.buckets = tuple(h.graph_buckets) if h.cuda_graphs else ()
        self._batched = False  # decided from the samples in _fit
        self.notes: list[str] = []
        self._fit()
        self._decode_cache: dict[int, tuple[float, float]] = {}

    @classmethod
    def from_file(cls, path: str | Path) -> CalibratedCostModel:
        return cls(profile=path)

    def _check_model(self, model: ModelArch | str, src: str) -> None:
        if isinstance(model, str):
            model = get_model(model)
        cfg = self.profile.header.model_config
        diff = [
            f"{f} {getattr(model, f)} vs {cfg.get(f)}"
            for f in _SHAPE_FIELDS
            if getattr(model, f) != cfg.get(f)
        ]
        if diff:
            raise ValueError(
                f"{src}: profiled model {self.profile.header.model!r} differs in shape from "
                f"{model.name!r} ({'; '.join(diff)}); profile that model"
            )

    # ------------------------------------------------------------------------ fitting
    def rows(self, n: int) -> int:
        """Rows a decode step of n sequences computes: n padded to its CUDA-graph bucket."""
        b = self.buckets
        if not b or n > b[-1]:
            return n
        return b[bisect.bisect_left(b, n)]

    def as_decode(self, shape: BatchShape) -> tuple[int, int] | None:
        """(sequences, summed attended context) when the engine runs `shape` as a decode step, else None.

        That is a pure decode, and, with CUDA graphs, any step in which every sequence computes
        exactly one token: the decode graph takes it whole, so a 1-token prefill chunk (what is left
        of a prompt after a full prefix-cache hit) rides along as a decode of context cached + 1.
        """
        if not shape.prefill:
            return (shape.num_decode, shape.decode_context) if shape.num_decode else None
        b = self.buckets
        if b and shape.num_seqs <= b[-1] and all(n == 1 for n, _ in shape.prefill):
            return shape.num_seqs, shape.decode_context + sum(c + 1 for _, c in shape.prefill)
        return None

    def _decode_row(self, n: int, ctx: int, knots: tuple[int, ...]) -> list[float]:
        r = self.rows(n)
        row = [1.0]
        if self._batched:
            row.append(1.0 if r > 1 else 0.0)
        row += [float(r), *(float(max(0, r - k)) for k in knots)]
        if self.buckets:
            row.append(float(n))
        row.append(float(ctx))
        return row

    def _decode_terms(self, knots: tuple[int, ...]) -> tuple[str, ...]:
        return (
            "fixed",
            *(("batched",) if self._batched else ()),
            "row",
            *(f"row>{k}" for k in knots),
            *(("seq",) if self.buckets else ()),
            "decode_ctx",
        )

    def _fit_group(self, samples: list[ShapeSample], group: str) -> TermFit:
        src = self.profile_path or "profile"
        if group == "decode":
            nc = [self.as_decode(s.shape) for s in samples]
            base = len(self._decode_terms(()))
            knots = _knots([self.rows(n) for n, _ in nc], DECODE_KNOT_LADDER, len(samples) - base - 2)
            terms = self._decode_terms(knots)
            X = np.array([self._decode_row(n, ctx, knots) for n, ctx in nc])
        else:
            base = len(_prefill_terms(()))
            knots = _knots(
                [s.shape.num_tokens for s in samples], PREFILL_KNOT_LADDER, len(samples) - base - 2
            )
            terms = _prefill_terms(knots)
            X = np.array([_prefill_row(s.prefill, s.num_decode, s.decode_context, knots) for s in samples])
        if len(samples) < len(terms):
            raise ValueError(
                f"{src}: {len(samples)} {group} sample(s), but fitting the {group} group needs at "
                f"least {len(terms)} ({', '.join(terms)}); profile a larger grid"
            )
        y = np.array([s.median_s for s in samples])
        coef = _nnls_relative(X, y)
        return TermFit(
            terms, tuple(float(c) for c in coef), knots, tuple(y.tolist()), tuple((X @ coef).tolist())
        )

    def _fit(self) -> None:
        src = self.profile_path or "profile"
        samples = self.profile.samples
        dec = [s for s in samples if self.as_decode(s.shape) is not None]
        pre = [s for s in samples if self.as_decode(s.shape) is None]
        # Batch 1 may take its own graph (fused GEMV kernels) that the batched trend does not predict.
        rows = {self.rows(n) for n, _ in map(self.as_decode, (s.shape for s in dec))}
        self._batched = bool(self.buckets) and 1 in rows and len(rows) > 1
        if not dec or not pre:
            raise ValueError(
                f"{src}: needs both pure-decode and prefill samples "
                f"(has {len(dec)} decode, {len(pre)} with prefill)"
            )
        self.decode_fit = self._fit_group(dec, "decode")
        pf = self._fit_group(pre, "prefill")
        if not any(s.num_decode for s in pre):
            # No mixed batches measured: decode attention inside a mixed step costs what it costs alone.
            i = pf.terms.index("decode_ctx")
            coef = list(pf.coef)
            coef[i] = self.decode_fit.coef[-1]
            pf = TermFit(pf.terms, tuple(coef), pf.knots, pf.measured, pf.predicted)
            self.notes.append(
                "no mixed samples: the decode_ctx term of the prefill group is the decode group's"
            )
        self.prefill_fit = pf
        ov = self.profile.overhead
        if ov:
            X = np.array([_overhead_row(o) for o in ov])
            self.schedule_fit = self._fit_overhead(X, np.array([o.schedule_s for o in ov]))
            self.complete_fit = self._fit_overhead(X, np.array([o.complete_s for o in ov]))
        else:
            zero = TermFit(_OVERHEAD_TERMS, (0.0,) * len(_OVERHEAD_TERMS), (), (), ())
            self.schedule_fit = self.complete_fit = zero
            self.notes.append(
                "no overhead samples: CPU work outside the step (scheduling, bookkeeping) is taken as 0"
            )
        # Plain float tuples for the hot path.
        self._pf_coef = self.prefill_fit.coef
        self._pf_knots = self.prefill_fit.knots
        self._dec_knots = self.decode_fit.knots
        self._dec_coef = self.decode_fit.coef
        self._decode_b = self.decode_fit.coef[-1]
        self._ov = tuple(a + b for a, b in zip(self.schedule_fit.coef, self.complete_fit.coef))

    @staticmethod
    def _fit_overhead(X: np.ndarray, y: np.ndarray) -> TermFit:
        y = np.maximum(y, 1e-9)  # a timer tick of 0 would make relative error undefined
        coef = _nnls_relative(X, y)
        return TermFit(
            _OVERHEAD_TERMS, tuple(float(c) for c in coef), (), tuple(y.tolist()), tuple((X @ coef).tolist())
        )

    # ------------------------------------------------------------------------ evaluation
    @staticmethod
    def _check(shape: BatchShape) -> None:
        nd, ctx = shape.num_decode, shape.decode_context
        if ctx < nd or (nd == 0 and ctx != 0) or nd < 0:
            raise ValueError(
                f"BatchShape: decode_context ({ctx}) must be >= num_decode ({nd}) and 0 when there "
                f"are no decode sequences (each decode attends to at least its own token)"
            )
        for n, c in shape.prefill:
            if n < 1 or c < 0:
                raise ValueError(
                    f"BatchShape.prefill entry ({n}, {c}): expected (new tokens >= 1, cached >= 0)"
                )

    def _overhead(self, s: int, p: int, ptok: int) -> float:
        o = self._ov
        return o[0] + o[1] * s + o[2] * p + o[3] * ptok

    def _prefill_execute(self, shape: BatchShape) -> float:
        row = _prefill_row(shape.prefill, shape.num_decode, shape.decode_context, self._pf_knots)
        return math.fsum(c * x for c, x in zip(self._pf_coef, row))

    def stage_time(self, shape: BatchShape) -> float:
        """Seconds of one iteration: the engine's step plus its CPU scheduling and bookkeeping."""
        self._check(shape)
        if not shape.prefill:
            if shape.num_decode == 0:
                return 0.0
            a, b = self.decode_line(shape.num_decode)
            return a + b * shape.decode_context
        ptok = sum(n for n, _ in shape.prefill)
        return self._execute(shape) + self._overhead(shape.num_seqs, len(shape.prefill), ptok)

    def _execute(self, shape: BatchShape) -> float:
        """Seconds of the engine's step alone (`ModelRunner.execute`), from the group that runs it."""
        d = self.as_decode(shape)
        if d is None:
            return self._prefill_execute(shape)
        row = self._decode_row(d[0], d[1], self._dec_knots)
        return math.fsum(c * x for c, x in zip(self._dec_coef, row))

    def decode_line(self, num_decode: int) -> tuple[float, float]:
        """(a, b) with a pure-decode iteration of `num_decode` sequences costing a + b * decode_context;
        `stage_time` computes such an iteration from these very numbers."""
        if num_decode < 0:
            raise ValueError(f"num_decode must be >= 0, got {num_decode}")
        if num_decode == 0:
            return 0.0, 0.0
        got = self._decode_cache.get(num_decode)
        if got is None:
            row = self._decode_row(num_decode, 0, self._dec_knots)
            a = math.fsum(c * x for c, x in zip(self._dec_coef, row)) + self._overhead(num_decode, 0, 0)
            got = (a, self._decode_b)
            self._decode_cache[num_decode] = got
        return got

    def parts(self, shape: BatchShape) -> dict[str, float]:
        """The iteration split as the engine splits it: 'execute' (ModelRunner.execute), 'schedule'
        (ReplicaCore.schedule) and 'complete' (ReplicaCore.complete); they sum to `stage_time`
        up to rounding."""
        self._check(shape)
        if shape.num_seqs == 0:
            return {"execute": 0.0, "schedule": 0.0, "complete": 0.0}
        s, p = shape.num_seqs, len(shape.prefill)
        ptok = sum(n for n, _ in shape.prefill)
        row = [1.0, float(s), float(p), float(ptok)]
        sched = sum(c * x for c, x in zip(self.schedule_fit.coef, row))
        comp = sum(c * x for c, x in zip(self.complete_fit.coef, row))
        return {"execute": self._execute(shape), "schedule": sched, "complete": comp}

    def breakdown(self, shape: BatchShape) -> dict[str, float]:
        """Seconds per fitted term (execute terms by name, plus 'schedule' and 'complete'), for reports;
        they sum to `stage_time(shape)` up to rounding."""
        parts = self.parts(shape)
        out: dict[str, float] = {}
        if shape.num_seqs:
            d = self.as_decode(shape)
            if d is None:
                fit = self.prefill_fit
                row = _prefill_row(shape.prefill, shape.num_decode, shape.decode_context, self._pf_knots)
            else:
                fit = self.decode_fit
                row = self._decode_row(d[0], d[1], self._dec_knots)
            for t, c, x in zip(fit.terms, fit.coef, row):
                out[t] = out.get(t, 0.0) + c * x
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
