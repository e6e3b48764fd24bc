"""The one request schema every loader, generator, simulator and engine run shares.

A trace is stored column-wise (numpy arrays) so that a million requests cost tens of
megabytes, not a million Python objects; `Trace.request(i)` builds the row object on demand.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True, slots=True)
class Request:
    """One inference request as the serving system sees it on arrival."""

    id: int
    arrival: float  # seconds from the start of the trace
    prompt_len: int
    output_len: int
    # Prefix block hashes: prefix_hashes[i] identifies the prompt's tokens up to the end of
    # block i of `hash_block_tokens` tokens (Mooncake style: equal id => equal prefix).
    prefix_hashes: tuple[int, ...] = ()
    hash_block_tokens: int = 0
    prompt_token_ids: tuple[int, ...] | None = None  # real token ids (engine runs from text)
    priority: int = 0  # lower value = more urgent, as in vLLM
    tenant: str = ""
    ttft_slo: float | None = None  # seconds
    tpot_slo: float | None = None  # seconds
    e2e_slo: float | None = None  # seconds


def _opt(a: np.ndarray | None, i: int) -> float | None:
    if a is None:
        return None
    v = float(a[i])
    return None if np.isnan(v) else v


@dataclass
class Trace:
    """A request trace, column-wise. Arrival times are non-decreasing seconds from 0-based start."""

    arrival: np.ndarray  # float64 seconds, non-decreasing
    prompt_len: np.ndarray  # int64 >= 1
    output_len: np.ndarray  # int64 >= 1
    prefix_hashes: list[tuple[int, ...]] | None = None
    hash_block_tokens: int = 0
    priority: np.ndarray | None = None  # int64
    tenant: list[str] | None = None
    ttft_slo: np.ndarray | None = None  # float64, NaN = none
    tpot_slo: np.ndarray | None = None
    e2e_slo: np.ndarray | None = None
    prompt_token_ids: list[tuple[int, ...]] | None = None
    name: str = "trace"
    source: str = ""  # file or generator description, for reports
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.arrival = np.asarray(self.arrival, dtype=np.float64)
        self.prompt_len = np.asarray(self.prompt_len, dtype=np.int64)
        self.output_len = np.asarray(self.output_len, dtype=np.int64)
        n = len(self.arrival)
        for col in ("prompt_len", "output_len", "priority", "ttft_slo", "tpot_slo", "e2e_slo"):
            v = getattr(self, col)
            if v is not None and len(v) != n:
                raise ValueError(f"trace {self.name!r}: column {col} has {len(v)} rows, expected {n}")
        for col in ("prefix_hashes", "tenant", "prompt_token_ids"):
            v = getattr(self, col)
            if v is not None and len(v) != n:
                raise ValueError(f"trace {self.name!r}: column {col} has {len(v)} rows, expected {n}")

    def __len__(self) -> int:
        return len(self.arrival)

    def request(self, i: int) -> Request:
        return Request(
            id=i,
            arrival=float(self.arrival[i]),
            prompt_len=int(self.prompt_len[i]),
            output_len=int(self.output_len[i]),
            prefix_hashes=self.prefix_hashes[i] if self.prefix_hashes is not None else (),
            hash_block_tokens=self.hash_block_tokens,
            prompt_token_ids=self.prompt_token_ids[i] if self.prompt_token_ids is not None else None,
            priority=int(self.priority[i]) if self.priority is not None else 0,
            tenant=self.tenant[i] if self.tenant is not None else "",
            ttft_slo=_opt(self.ttft_slo, i),
            tpot_slo=_opt(self.tpot_slo, i),
            e2e_slo=_opt(self.e2e_slo, i),
        )

    def __iter__(self) -> Iterator[Request]:
        """Every row in order, the same objects as `request(i)`. Columns are converted to Python
        values a chunk at a time: a simulation takes every row once, and indexing numpy arrays
        one element at a time costs more than building the row (a chunk bounds the memory)."""
        n = len(self)
        chunk = 4096
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            yield from map(Request, range(lo, hi), *self._chunk_columns(lo, hi))

    def _chunk_columns(self, lo: int, hi: int) -> list[list]:
        """Rows lo .. hi-1 of every `Request` field after `id`, in field order, as Python values
        (None for missing optional values, as `request` gives them)."""
        m = hi - lo

        def opt(a: np.ndarray | None) -> list:
            if a is None:
                return [None] * m
            return [None if v != v else v for v in a[lo:hi].tolist()]  # NaN: none

        def rows(v: list | None, default: object) -> list:
            return [default] * m if v is None else list(v[lo:hi])

        return [
            self.arrival[lo:hi].tolist(),
            self.prompt_len[lo:hi].tolist(),
            self.output_len[lo:hi].tolist(),
            rows(self.prefix_hashes, ()),
            [self.hash_block_tokens] * m,
            rows(self.prompt_token_ids, None),
            [0] * m if self.priority is None else [int(v) for v in self.priority[lo:hi].tolist()],
            rows(self.tenant, ""),
            opt(self.ttft_slo),
            opt(self.tpot_slo),
            opt(self.e2e_slo),
        ]

    def select(self, idx: np.ndarray) -> Trace:
        """Rows `idx` (an index or boolean array), every column kept aligned."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)

        def take(v):
            if v is None:
                return None
            if isinstance(v, np.ndarray):
                return v[idx]
            return [v[int(i)] for i in idx]

        return replace(
            self,
            arrival=self.arrival[idx],
            prompt_len=self.prompt_len[idx],
            output_len=self.output_len[idx],
            prefix_hashes=take(self.prefix_hashes),
            priority=take(self.priority),
            tenant=take(self.tenant),
            ttft_slo=take(self.ttft_slo),
            tpot_slo=take(self.tpot_slo),
            e2e_slo=take(self.e2e_slo),
            prompt_token_ids=take(self.prompt_token_ids),
            meta=dict(self.meta),
        )
