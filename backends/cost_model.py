"""The seam between a replica and whatever says how long an iteration takes.

The analytic model (`backends/analytic.py`) and the calibrated model fitted from a measured
profile implement the same protocol, picked by name through `COST_MODELS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from policies.registry import Registry


@dataclass(frozen=True, slots=True)
class ParallelLayout:
    tp: int = 1  # tensor-parallel degree (one batch, all-reduce after attention and MLP)
    pp: int = 1  # pipeline stages (micro-batches in flight, one stage each)

    def __post_init__(self) -> None:
        if self.tp < 1 or self.pp < 1:
            raise ValueError(f"parallel layout needs tp >= 1 and pp >= 1, got tp={self.tp} pp={self.pp}")

    @property
    def devices(self) -> int:
        return self.tp * self.pp


@dataclass(slots=True)
class BatchShape:
    """What a cost model needs to know of one iteration's batch.

    `prefill` lists, for every sequence that computes more than its last sampled token,
    (new tokens computed now, tokens already in KV before this step). Decode sequences are
    aggregated: their count and the sum of their attended context (cached tokens + 1).
    """

    prefill: list[tuple[int, int]]
    num_decode: int = 0
    decode_context: int = 0

    @property
    def num_tokens(self) -> int:
        return self.num_decode + sum(n for n, _ in self.prefill)

    @property
    def num_seqs(self) -> int:
        return self.num_decode + len(self.prefill)


@runtime_checkable
class CostModel(Protocol):
    name: str
    layout: ParallelLayout

    def stage_time(self, shape: BatchShape) -> float:
        """Seconds one pipeline stage spends on this (micro-)batch, the send to the next stage
        included; with pp = 1 it is the whole iteration, including per-iteration overhead."""
        ...

    def decode_line(self, num_decode: int) -> tuple[float, float]:
        """(a, b) such that a pure-decode batch of `num_decode` sequences takes exactly
        a + b * decode_context seconds per stage. The simulator uses it to jump over runs of
        iterations in which nothing arrives or finishes, so it must agree with `stage_time`."""
        ...


COST_MODELS: Registry[CostModel] = Registry("cost model")
