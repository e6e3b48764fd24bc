"""What a scheduler hands to the replica for one iteration."""

from __future__ import annotations

from dataclasses import dataclass, field

from policies.sequence import Sequence


@dataclass(slots=True)
class ScheduledBatch:
    """One iteration's work: which sequences, and how many tokens of each to compute.

    `num_new_tokens[i]` tokens of `seqs[i]` are computed, starting at its
    `num_computed_tokens` (prefix-cache hits are already counted there). A sequence whose
    computed count reaches `num_tokens` after this step samples one token. Chunked prefill is
    just a prefill sequence with fewer new tokens than it has left.
    """

    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    lost_tokens: int = 0  # computed tokens dropped by this step's preemptions (to recompute)
    cached_tokens: int = 0  # tokens credited by prefix-cache hits on this step's admissions

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    @property
    def is_empty(self) -> bool:
        return not self.seqs
