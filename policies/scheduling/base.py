"""The scheduler seam: one decision per iteration, pure Python, no clock of its own."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from policies.kv.block_manager import BlockManager
from policies.registry import Registry
from policies.scheduling.batch import ScheduledBatch
from policies.sequence import Sequence


@dataclass(frozen=True)
class SchedulerConfig:
    """Budgets and caps; names follow vLLM where the concept is the same."""

    max_num_batched_tokens: int = 2048  # token budget of one iteration (chunked-prefill budget)
    max_num_seqs: int = 256  # running sequences at most
    enable_chunked_prefill: bool = True  # False: a prompt is scheduled whole or not at all

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")


@runtime_checkable
class Scheduler(Protocol):
    name: str
    config: SchedulerConfig
    # True when, with nobody waiting and every running sequence decoding in the batch just
    # chosen, the next decisions repeat that batch until something arrives, finishes or runs out
    # of KV. The simulator only jumps over decode stretches for schedulers that promise this.
    repeats_steady_decode: bool
    # True when, with nobody waiting, a group of running sequences scheduled together (one
    # pipeline micro-batch) is scheduled together again, same members in the same order, with
    # the token counts `steady_counts` gives, until something arrives, finishes or runs out of
    # KV. The simulator then also jumps over stretches in which prefill chunks ride along with
    # decodes; schedulers without it (getattr default False) are stepped there.
    plans_steady_batches: bool

    def enqueue(self, waiting: deque[Sequence], seq: Sequence) -> None:
        """Put a newly arrived (or preempted) sequence where this policy wants it in `waiting`."""
        ...

    def schedule(
        self, waiting: deque[Sequence], running: list[Sequence], kv: BlockManager, now: float
    ) -> ScheduledBatch:
        """Pick the next iteration's batch, moving sequences between `waiting` and `running`,
        allocating KV through `kv`, and preempting (free + back to waiting) when KV runs out.
        Sequences with `in_flight` set (pipeline micro-batches still running) are skipped."""
        ...


    def steady_counts(self, uncomputed: list[int]) -> list[int]:
        """Only needed with `plans_steady_batches`: the tokens this policy gives each of a group
        of running sequences (in running order, `uncomputed[i]` tokens left to compute each)
        when nobody waits and KV suffices. A 0 means that sequence would not be scheduled."""
        ...


SCHEDULERS: Registry[Scheduler] = Registry("scheduler")
