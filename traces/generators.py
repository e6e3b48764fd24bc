"""Seeded synthetic workloads: arrival processes, length distributions and shared-prefix prompts.

Everything takes a seed (or a numpy Generator) and is deterministic, so a synthetic experiment
is reproducible from its parameters alone. `synthetic_trace` draws arrivals, prompt lengths and
output lengths from independent child streams of one SeedSequence, so changing a length
distribution does not move the arrival times.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from traces.schema import Trace

__all__ = [
    "Empirical",
    "EmpiricalPairs",
    "Fixed",
    "LengthDist",
    "LogNormal",
    "PairDist",
    "Uniform",
    "gamma_arrivals",
    "poisson_arrivals",
    "shared_prefix_trace",
    "synthetic_trace",
]

Seed = int | np.random.Generator


def _rng(seed: Seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


# --------------------------------------------------------------------------------------------
# Arrival processes
# --------------------------------------------------------------------------------------------


def gamma_arrivals(n: int, rate: float, burstiness: float = 1.0, seed: Seed = 0) -> np.ndarray:
    """`n` arrival times (s) with Gamma inter-arrival gaps, first request at 0.

    Same process as vLLM's serving benchmark (benchmarks/benchmark_serving.py, `get_request`):
    gap ~ Gamma(shape=burstiness, scale=1/(rate*burstiness)), so the mean gap is 1/rate and the
    coefficient of variation is 1/sqrt(burstiness). burstiness=1 is a Poisson process; < 1 is
    burstier, > 1 smoother. ``rate=inf`` sends everything at t=0 (vLLM's default).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not rate > 0:
        raise ValueError(f"rate must be > 0 requests/s (or inf), got {rate}")
    if not (burstiness > 0 and math.isfinite(burstiness)):
        raise ValueError(f"burstiness must be a finite number > 0, got {burstiness}")
    if n == 0:
        return np.zeros(0)
    if math.isinf(rate):
        return np.zeros(n)
    gaps = _rng(seed).gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n - 1)
    return np.concatenate(([0.0], np.cumsum(gaps)))


def poisson_arrivals(n: int, rate: float, seed: Seed = 0) -> np.ndarray:
    """`n` Poisson arrival times (exponential gaps with mean 1/rate), first at 0."""
    return gamma_arrivals(n, rate, 1.0, seed)


# --------------------------------------------------------------------------------------------
# Length distributions
# --------------------------------------------------------------------------------------------


@runtime_checkable
class LengthDist(Protocol):
    """A distribution of token counts >= 1."""

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray: ...


@runtime_checkable
class PairDist(Protocol):
    """A joint distribution of (prompt_len, output_len), e.g. resampled from a real trace."""

    def sample_pairs(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class Fixed:
    """Every request has `value` tokens."""

    value: int

    def __post_init__(self) -> None:
        if int(self.value) != self.value or self.value < 1:
            raise ValueError(f"Fixed length must be an integer >= 1, got {self.value}")

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.full(n, int(self.value), dtype=np.int64)


@dataclass(frozen=True)
class Uniform:
    """Integers uniform on [lo, hi], both inclusive."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        if not 1 <= self.lo <= self.hi:
            raise ValueError(f"Uniform needs 1 <= lo <= hi, got lo={self.lo}, hi={self.hi}")

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(self.lo, self.hi + 1, size=n, dtype=np.int64)


@dataclass(frozen=True)
class LogNormal:
    """Log-normal token counts given `sigma` (of log length) and either `mean` or `median`.

    median = exp(mu); mean = exp(mu + sigma^2/2). Samples are rounded to integers and clipped
    to [1, max_len] (clipping slightly shifts the realised mean when the tail is cut).
    """

    sigma: float
    mean: float | None = None
    median: float | None = None
    max_len: int | None = None

    def __post_init__(self) -> None:
        if (self.mean is None) == (self.median is None):
            raise ValueError("LogNormal needs exactly one of mean= or median=")
        if not (self.sigma >= 0 and math.isfinite(self.sigma)):
            raise ValueError(f"LogNormal sigma must be finite and >= 0, got {self.sigma}")
        center = self.mean if self.mean is not None else self.median
        if not (center is not None and center > 0 and math.isfinite(center)):
            raise ValueError(f"LogNormal mean/median must be finite and > 0, got {center}")
        if self.max_len is not None and self.max_len < 1:
            raise ValueError(f"LogNormal max_len must be >= 1, got {self.max_len}")

    @property
    def mu(self) -> float:
        if self.median is not None:
            return math.log(self.median)
        assert self.mean is not None
        return math.log(self.mean) - self.sigma**2 / 2

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        x = np.rint(rng.lognormal(self.mu, self.sigma, size=n))
        hi = self.max_len if self.max_len is not None else np.iinfo(np.int64).max // 2
        return np.clip(x, 1, hi).astype(np.int64)


@dataclass(frozen=True)
class Empirical:
    """Resample one column of observed lengths (a marginal distribution)."""

    values: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        v = np.asarray(self.values, dtype=np.int64)
        if v.ndim != 1 or len(v) == 0 or v.min() < 1:
            raise ValueError("Empirical needs a non-empty 1-D array of lengths >= 1")
        object.__setattr__(self, "values", v)

    @classmethod
    def from_trace(cls, trace: Trace, column: str = "prompt_len") -> Empirical:
        if column not in ("prompt_len", "output_len"):
            raise ValueError(f"column must be 'prompt_len' or 'output_len', got {column!r}")
        return cls(getattr(trace, column))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.values[rng.integers(0, len(self.values), size=n)]


@dataclass(frozen=True)
class EmpiricalPairs:
    """Resample (prompt_len, output_len) pairs jointly, keeping their correlation."""

    prompt_len: np.ndarray = field(repr=False)
    output_len: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        p = np.asarray(self.prompt_len, dtype=np.int64)
        o = np.asarray(self.output_len, dtype=np.int64)
        if p.ndim != 1 or p.shape != o.shape or len(p) == 0 or p.min() < 1 or o.min() < 1:
            raise ValueError("EmpiricalPairs needs two equal-length, non-empty arrays of lengths >= 1")
        object.__setattr__(self, "prompt_len", p)
        object.__setattr__(self, "output_len", o)

    @classmethod
    def from_trace(cls, trace: Trace) -> EmpiricalPairs:
        return cls(trace.prompt_len, trace.output_len)

    def sample_pairs(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        idx = rng.integers(0, len(self.prompt_len), size=n)
        return self.prompt_len[idx], self.output_len[idx]


def _lengths(
    n: int,
    prompt_dist: LengthDist | PairDist,
    output_dist: LengthDist | None,
    seeds: Sequence[np.random.SeedSequence],
) -> tuple[np.ndarray, np.ndarray]:
    if output_dist is None:
        if not isinstance(prompt_dist, PairDist):
            raise ValueError(
                "output_dist is required unless prompt_dist is a joint PairDist (e.g. EmpiricalPairs)"
            )
        p, o = prompt_dist.sample_pairs(n, np.random.default_rng(seeds[0]))
    else:
        if not isinstance(prompt_dist, LengthDist):
            raise ValueError(
                f"prompt_dist {prompt_dist!r} has no sample(); pass output_dist=None for a joint one"
            )
        p = prompt_dist.sample(n, np.random.default_rng(seeds[0]))
        o = output_dist.sample(n, np.random.default_rng(seeds[1]))
    p, o = np.asarray(p, dtype=np.int64), np.asarray(o, dtype=np.int64)
    if n and (p.min() < 1 or o.min() < 1):
        raise ValueError("length distribution produced a length < 1")
    return p, o


# --------------------------------------------------------------------------------------------
# Traces
# --------------------------------------------------------------------------------------------


def synthetic_trace(
    num_requests: int,
    rate: float,
    prompt_dist: LengthDist | PairDist,
    output_dist: LengthDist | None = None,
    *,
    burstiness: float = 1.0,
    seed: int = 0,
    name: str = "synthetic",
) -> Trace:
    """Gamma/Poisson arrivals at `rate` with lengths from the given distributions.

    ``output_dist=None`` means `prompt_dist` is joint (`EmpiricalPairs`), so prompt and output
    lengths are drawn together.
    """
    s_arr, s_prompt, s_out = np.random.SeedSequence(seed).spawn(3)
    arrival = gamma_arrivals(num_requests, rate, burstiness, np.random.default_rng(s_arr))
    prompt, output = _lengths(num_requests, prompt_dist, output_dist, (s_prompt, s_out))
    desc = f"synthetic(n={num_requests}, rate={rate}, burstiness={burstiness}, seed={seed})"
    return Trace(
        arrival=arrival,
        prompt_len=prompt,
        output_len=output,
        name=name,
        source=desc,
        meta={
            "generator": "synthetic_trace",
            "rate": rate,
            "burstiness": burstiness,
            "seed": seed,
            "prompt_dist": repr(prompt_dist),
            "output_dist": repr(output_dist),
        },
    )


def shared_prefix_trace(
    num_requests: int,
    rate: float,
    *,
    num_groups: int,
    prefix_len: int,
    suffix_dist: LengthDist,
    output_dist: LengthDist,
    hash_block_tokens: int = 512,
    group_weights: Sequence[float] | None = None,
    burstiness: float = 1.0,
    token_ids: bool = False,
    vocab_size: int = 32000,
    seed: int = 0,
    name: str = "shared_prefix",
) -> Trace:
    """Requests in `num_groups` groups; each prompt = its group's shared prefix + a unique suffix.

    Modelled on SGLang's "generated-shared-prefix" benchmark dataset (groups of requests sharing
    a system prompt). Prefix hashes follow the Mooncake trace convention: one id per
    `hash_block_tokens` block, ceil(prompt_len / block) ids, ids chained so that equal id means
    equal tokens from the start of the prompt to the end of that block. Blocks lying wholly inside
    the group prefix get the group's shared ids; any block touching the unique suffix gets a fresh
    id. Ids are numbered in order of first appearance, as in the Mooncake traces.

    With ``token_ids=True`` real random token ids (in [0, vocab_size)) are emitted too, consistent
    with the hashes: the group prefix tokens are shared, the suffix tokens drawn per request.
    """
    if num_groups < 1:
        raise ValueError(f"num_groups must be >= 1, got {num_groups}")
    if prefix_len < 0:
        raise ValueError(f"prefix_len must be >= 0, got {prefix_len}")
    if hash_block_tokens < 1:
        raise ValueError(f"hash_block_tokens must be >= 1, got {hash_block_tokens}")
    if token_ids and vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    if group_weights is not None:
        w = np.asarray(group_weights, dtype=np.float64)
        if w.shape != (num_groups,) or not np.all(np.isfinite(w)) or w.min() < 0 or w.sum() <= 0:
            raise ValueError(f"group_weights must be {num_groups} finite weights >= 0 with a positive sum")
        p_group = w / w.sum()
    else:
        p_group = None
    s_arr, s_suffix, s_out, s_group, s_tok = np.random.SeedSequence(seed).spawn(5)
    arrival = gamma_arrivals(num_requests, rate, burstiness, np.random.default_rng(s_arr))
    suffix, output = _lengths(num_requests, suffix_dist, output_dist, (s_suffix, s_out))
    groups = np.random.default_rng(s_group).choice(num_groups, size=num_requests, p=p_group)
    prompt = prefix_len + suffix

    block = hash_block_tokens
    shared_blocks = prefix_len // block  # blocks wholly inside the shared prefix
    group_ids: dict[int, tuple[int, ...]] = {}
    next_id = 0
    hashes: list[tuple[int, ...]] = []
    for g, plen in zip(groups.tolist(), prompt.tolist(), strict=True):
        if g not in group_ids:
            group_ids[g] = tuple(range(next_id, next_id + shared_blocks))
            next_id += shared_blocks
        n_unique = -(-plen // block) - shared_blocks
        hashes.append(group_ids[g] + tuple(range(next_id, next_id + n_unique)))
        next_id += n_unique

    tokens: list[tuple[int, ...]] | None = None
    if token_ids:
        rng = np.random.default_rng(s_tok)
        prefixes = rng.integers(0, vocab_size, size=(num_groups, prefix_len)).tolist()
        tokens = [
            tuple(prefixes[g]) + tuple(rng.integers(0, vocab_size, size=s).tolist())
            for g, s in zip(groups.tolist(), suffix.tolist(), strict=True)
        ]
    desc = (
        f"shared_prefix(n={num_requests}, rate={rate}, groups={num_groups}, prefix_len={prefix_len}, "
        f"block={block}, seed={seed})"
    )
    return Trace(
        arrival=arrival,
        prompt_len=prompt,
        output_len=output,
        prefix_hashes=hashes,
        hash_block_tokens=block,
        prompt_token_ids=tokens,
        name=name,
        source=desc,
        meta={
            "generator": "shared_prefix_trace",
            "rate": rate,
            "burstiness": burstiness,
            "seed": seed,
            "num_groups": num_groups,
            "prefix_len": prefix_len,
            "suffix_dist": repr(suffix_dist),
            "output_dist": repr(output_dist),
        },
    )
