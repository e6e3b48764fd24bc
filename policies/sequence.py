"""Per-request serving state shared by the scheduler, the KV manager, the simulator and the engine.

Token accounting follows vLLM V1: `num_tokens` is prompt plus generated tokens and
`num_computed_tokens` is how many of them have KV in cache. The scheduler may compute up to
`num_tokens - num_computed_tokens` tokens of a sequence in one step; a step that brings the
computed count up to `num_tokens` samples one new token (the first ends the prefill, later
ones are decodes). Preemption by recompute resets the computed count to zero.
"""

from __future__ import annotations

from enum import IntEnum

from traces.schema import Request

# A sampled token id the host does not hold yet: with the engine's overlapped loop, step n+1 is
# scheduled and launched before step n's sampled ids come back, so each sequence that samples in
# step n carries this in its token ids until then (the device feeds the real id to step n+1).
PENDING = -1


class Status(IntEnum):
    WAITING = 0
    RUNNING = 1
    FINISHED = 2
    REJECTED = 3


class Sequence:
    __slots__ = (
        "request",
        "status",
        "num_computed_tokens",
        "num_output_tokens",
        "block_table",
        "num_cached_tokens",
        "num_preemptions",
        "token_ids",
        "_hashes",
        "num_published_blocks",
        "first_scheduled",
        "first_token",
        "last_token",
        "finish",
        "reject_reason",
        "replica",
        "in_flight",
        "stop_token_ids",
        "num_pending",
    )

    def __init__(self, request: Request, token_ids: list[int] | None = None) -> None:
        self.request = request
        self.status = Status.WAITING
        self.num_computed_tokens = 0
        self.num_output_tokens = 0
        self.block_table: list[int] = []
        self.num_cached_tokens = 0  # prefix-cache hit tokens, summed over admissions
        self.num_preemptions = 0
        # Real token ids (engine); None in trace replay, where only lengths matter.
        self.token_ids: list[int] | None = token_ids
        self._hashes: list[int] = []  # hashes of full blocks, filled lazily (content never changes)
        self.num_published_blocks = 0  # leading blocks of block_table already in the prefix cache
        self.first_scheduled = -1.0
        self.first_token = -1.0
        self.last_token = -1.0
        self.finish = -1.0
        self.reject_reason = ""
        self.replica = -1
        self.in_flight = False  # inside a pipeline micro-batch that has not completed yet
        # Sampled ids that end this request early (engine: EOS unless ignored, user stop ids).
        self.stop_token_ids: frozenset[int] = frozenset()
        self.num_pending = 0  # trailing PENDING entries of token_ids (at most one per step in flight)

    @property
    def id(self) -> int:
        return self.request.id

    @property
    def num_tokens(self) -> int:
        return self.request.prompt_len + self.num_output_tokens

    @property
    def num_uncomputed(self) -> int:
        return self.request.prompt_len + self.num_output_tokens - self.num_computed_tokens

    def block_hash(self, i: int, block_size: int) -> int | None:
        """Chained hash of full block i, or None when that block's content has no identity.

        With real token ids the hash chains (previous hash, block tokens), as vLLM's prefix
        cache does; with trace prefix hashes (Mooncake, one id per `hash_block_tokens`),
        KV block i inherits the id of the trace block that covers it plus its offset in it,
        and blocks past those get an identity of their own request. Only full blocks of
        known content (prompt and tokens generated so far, not those still PENDING) get a hash.
        """
        h = self._hashes
        if i < len(h):
            return h[i]
        end = (i + 1) * block_size
        if self.token_ids is not None:
            if end > len(self.token_ids) - self.num_pending:
                return None
            toks = self.token_ids
            while len(h) <= i:
                j = len(h)
                prev = h[j - 1] if j else 0
                h.append(hash((prev, tuple(toks[j * block_size : (j + 1) * block_size]))))
            return h[i]
        req = self.request
        if end > req.prompt_len + self.num_output_tokens:
            return None
        tb = req.hash_block_tokens
        ids = req.prefix_hashes
        nids = len(ids) if ids else 0
        plen = req.prompt_len
        rid = req.id
        append = h.append
        for j in range(len(h), i + 1):
            e = (j + 1) * block_size
            k = (e - 1) // tb if tb else 0
            if nids and e <= plen and k < nids:
                append(hash((ids[k], j * block_size - k * tb, block_size)))
            else:
                # Content only this request has (its own prompt tail, its generated tokens):
                # reusable by itself after a preemption and by nobody else, as the engine's
                # hashes of a synthesized prompt's random tokens are.
                append(hash(("request", rid, j)))
        return h[i]

    def block_hashes(self, n: int, block_size: int) -> list[int]:
        """Hashes of the first n full blocks, fewer if content runs out (memoized)."""
        return self.known_block_hashes(n, block_size)[:n]

    def known_block_hashes(self, n: int, block_size: int) -> list[int]:
        """The memo itself, extended to the first n full blocks where content allows; it may hold
        more than n. Read only: it saves the copy `block_hashes` makes, for callers that walk
        a prefix of it (a waiting sequence is looked up at every iteration)."""
        h = self._hashes
        if len(h) < n and (not h or self.block_hash(len(h), block_size) is not None):
            self.block_hash(n - 1, block_size)
        return h

    def __repr__(self) -> str:
        return (
            f"Sequence(id={self.id}, status={self.status.name}, computed={self.num_computed_tokens}, "
            f"tokens={self.num_tokens}, blocks={len(self.block_table)})"
        )
