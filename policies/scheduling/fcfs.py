"""First-come-first-served continuous batching with a chunked-prefill token budget.

Running sequences go first (decodes take one token each, unfinished prefills continue their
chunk), then waiting sequences are admitted in order while budget, the sequence cap and KV
last: the policy of vLLM V1 and Sarathi-Serve (Agrawal et al., OSDI 2024). When KV runs out
for a running sequence, the most recently admitted running sequence is preempted by
recompute: its blocks are freed and it goes back to the head of the queue.
"""

from __future__ import annotations

from collections import deque

from policies.kv.block_manager import BlockManager
from policies.scheduling.base import SCHEDULERS, SchedulerConfig
from policies.scheduling.batch import ScheduledBatch
from policies.sequence import Sequence, Status


def preempt(seq: Sequence, kv: BlockManager) -> int:
    """Preemption by recompute: drop the KV, keep the generated tokens. Returns tokens lost."""
    lost = seq.num_computed_tokens
    kv.free(seq)
    seq.num_computed_tokens = 0
    seq.status = Status.WAITING
    seq.num_preemptions += 1
    return lost


@SCHEDULERS.register("fcfs")
class FCFSScheduler:
    name = "fcfs"
    repeats_steady_decode = True
    plans_steady_batches = True

    def __init__(self, config: SchedulerConfig | None = None) -> None:
        self.config = config or SchedulerConfig()

    def enqueue(self, waiting: deque[Sequence], seq: Sequence) -> None:
        waiting.append(seq)

    def steady_counts(self, uncomputed: list[int]) -> list[int]:
        """The running-sequence pass of `schedule` without KV or preemption: each sequence in
        order takes what it has left, up to the budget that remains."""
        budget = self.config.max_num_batched_tokens
        counts = []
        for u in uncomputed:
            n = u if u < budget else budget
            if n < 0:
                n = 0
            counts.append(n)
            budget -= n
        return counts

    @staticmethod
    def _victim(running: list[Sequence], first: int) -> Sequence | None:
        """The sequence to preempt: the last admitted one at or after position `first` (earlier
        ones are already in this batch or in flight) that is not in flight."""
        for j in range(len(running) - 1, first - 1, -1):
            if not running[j].in_flight:
                return running[j]
        return None

    def schedule(
        self, waiting: deque[Sequence], running: list[Sequence], kv: BlockManager, now: float
    ) -> ScheduledBatch:
        cfg = self.config
        budget = cfg.max_num_batched_tokens
        batch = ScheduledBatch()
        seqs, counts, preempted = batch.seqs, batch.num_new_tokens, batch.preempted

        allocate = kv.allocate
        bs = kv.block_size
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            if seq.in_flight:
                i += 1
                continue
            n = seq.request.prompt_len + seq.num_output_tokens - seq.num_computed_tokens
            if n > budget:
                n = budget
            if n <= 0:
                i += 1
                continue
            if seq.num_computed_tokens + n <= len(seq.block_table) * bs:
                # Room already (most decodes): what `allocate` would find, without the call.
                seqs.append(seq)
                counts.append(n)
                budget -= n
                i += 1
                continue
            while not allocate(seq, n):
                # Victims come from positions >= i (earlier ones are scheduled or in flight),
                # so removing one never shifts the cursor unless it is `seq` itself.
                victim = self._victim(running, i)
                if victim is None:
                    break
                running.remove(victim)
                batch.lost_tokens += preempt(victim, kv)
                preempted.append(victim)
                if victim is seq:
                    break
            else:
                seqs.append(seq)
                counts.append(n)
                budget -= n
                i += 1
                continue
            if seq.status is Status.RUNNING:  # nothing left to preempt: this one cannot grow now
                break
        # Preempted sequences go back to the head of the queue, oldest first.
        for s in reversed(preempted):
            waiting.appendleft(s)

        if preempted:  # as vLLM V1: no admissions in an iteration that had to preempt
            return batch
        self._admit(waiting, running, kv, budget, batch, now)
        return batch

    def _admit(
        self,
        waiting: deque[Sequence],
        running: list[Sequence],
        kv: BlockManager,
        budget: int,
        batch: ScheduledBatch,
        now: float,
    ) -> None:
        cfg = self.config
        bs = kv.block_size
        while waiting and budget > 0 and len(running) < cfg.max_num_seqs:
            seq = waiting[0]
            cached = kv.lookup(seq)
            n = seq.num_tokens - seq.num_computed_tokens - len(cached) * bs
            if n > budget:
                if not cfg.enable_chunked_prefill:
                    break
                n = budget
            if not kv.allocate(seq, n, cached):
                break
            kv.note_query(seq)
            batch.cached_tokens += len(cached) * bs
            waiting.popleft()
            seq.status = Status.RUNNING
            if seq.first_scheduled < 0:
                seq.first_scheduled = now
            running.append(seq)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(n)
            budget -= n
