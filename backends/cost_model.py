"""The seam between a replica and whatever says how long an iteration takes.

The analytic model (`backends/analytic.py`) and the calibrated model fitted from a measured
profile implement the same protocol, picked by name through `COST_MODELS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

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
    aggregated: their count, the sum of their attended context (cached tokens + 1), and the
    largest single attended context, because a paged-attention kernel with one program per
    (sequence, KV head) finishes with its longest program: a batch of one 30k-token context and
    eight 5k ones costs more than nine 8.3k ones. 0 means "not given": the decodes are then
    taken to have equal contexts (as a profile's samples do).
    """

    prefill: list[tuple[int, int]]
    num_decode: int = 0
    decode_context: int = 0
    decode_max_context: int = 0

    @property
    def num_tokens(self) -> int:
        return self.num_decode + sum(n for n, _ in self.prefill)

    @property
    def num_seqs(self) -> int:
        return self.num_decode + len(self.prefill)


class OverlapParts(NamedTuple):
    """An iteration's seconds as the overlapped loop spends them (`CostModel.overlap_parts`)."""

    lead: float
    launch: float
    device: float
    after: float
    graphed: bool


@runtime_checkable
class CostModel(Protocol):
    name: str
    layout: ParallelLayout

    def stage_time(self, shape: BatchShape) -> float:
        """Seconds one pipeline stage spends on this (micro-)batch, the send to the next stage
        included; with pp = 1 it is the whole iteration, including per-iteration overhead."""
        ...

    def decode_line(
        self, num_decode: int
    ) -> tuple[float, float] | tuple[float, float, float] | tuple[float, float, float, float]:
        """(a, b), (a, b, c) or (a, b, c, g) such that a pure-decode batch of `num_decode` sequences
        takes exactly a + u + v - g * min(u, v) seconds per stage, with u = b * decode_context and
        v = c * decode_max_context (c and g are 0 when omitted), evaluated in that order (the g term
        only when g is nonzero). Every decode context grows by one per iteration, so the sum grows by
        num_decode and the maximum by one: the time stays a closed function of the iteration index
        over a run of iterations. The simulator uses it to jump over runs in which nothing arrives or
        finishes, so it must agree with `stage_time` bit for bit."""
        ...

    def overlap_parts(self, shape: BatchShape) -> OverlapParts:
        """(lead, launch, device, after, graphed) of an iteration that the replica runs one step ahead (async
        scheduling, pp = 1). From the loop top that schedules it, the host works `lead` seconds
        (scheduling, staging) and then launches it for `launch` more (eager kernels launched from
        Python; 0 for a graph). Its device work starts at top + lead or when the previous iteration's
        ends, whichever is later, lasts `device`, and ends no earlier than its last launch. Then the
        host collects the previous iteration's ids (waiting for its device work if needed: that is
        when its tokens reach clients) and does its bookkeeping, `after` seconds, before the next loop
        top. With nothing in flight it ends lead + max(device, launch) after the top: `stage_time`
        less `after`. `graphed`: the engine replays a CUDA graph for it (async scheduling "graphs"
        launches only those ahead; an eager one first collects the step in flight)."""
        ...


def abcg(line: tuple[float, ...]) -> tuple[float, float, float, float]:
    """A cost model's decode line as (a, b, c, g) (see CostModel.decode_line): c, the per-token cost
    of the longest context, and g, its overlap with the bulk term, are 0 where the model omits them."""
    return (*line, *(0.0,) * (4 - len(line)))  # type: ignore[return-value]


COST_MODELS: Registry[CostModel] = Registry("cost model")
