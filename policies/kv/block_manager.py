"""Paged KV block allocator with reference counts and prefix caching.

Design after vLLM's PagedAttention block manager (Kwon et al., SOSP 2023) and its V1 prefix
cache: a full block is identified by the chained hash of its content, blocks are shared by
reference count, and a block whose count drops to zero keeps its content (and hash) until it
is reused for something else, in least-recently-freed order. As in vLLM V0's evictor, free
blocks that hold no cached content are handed out before cached ones are evicted.

Blocks never computed by anyone carry no hash, so for traces without prefix information the
allocator works on plain lists in bulk (slices), which is what keeps a million-request
simulation fast.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from operator import itemgetter

from policies.sequence import Sequence


@dataclass
class KVStats:
    queried_tokens: int = 0  # prompt tokens looked up in the prefix cache
    hit_tokens: int = 0  # of which found cached
    evictions: int = 0  # cached blocks whose content was dropped to make room
    peak_used_blocks: int = 0


def _hits(get: Callable[[int], int | None], hashes: list[int], start: int, stop: int) -> list[int]:
    """The blocks `get` maps hashes[start:stop] to, up to the first miss: `iter` with a sentinel
    ends at the first None (or the end), at C speed and without looking up the hashes past it,
    which costs more than the call per element it adds (the map is large: memory-bound)."""
    found = map(get, islice(hashes, start, stop) if start or stop < len(hashes) else hashes)
    return list(iter(found.__next__, None))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int = 16, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._ref_count = [0] * num_blocks  # kept only with prefix caching (see `ref_count`)
        self.block_hash: list[int | None] = [None] * num_blocks
        # Free blocks without cached content: a stack (order is irrelevant, bulk slicing is fast).
        self._clean: list[int] = list(range(num_blocks - 1, -1, -1))
        # Free blocks with cached content, least recently freed first.
        self._cached_free: OrderedDict[int, None] = OrderedDict()
        self._hash_to_block: dict[int, int] = {}
        self.stats = KVStats()
        # `lookup`'s memo of its last sequence: its hits (blocks), as a set too, and the number
        # of leading blocks it was asked for. Evicting any of those blocks drops it.
        self._memo_seq: Sequence | None = None
        self._memo_n = 0
        self._memo_got: list[int] = []
        self._memo_blocks: set[int] = set()

    def shuffle_free_blocks(self, seed: int) -> None:
        """Put the clean free blocks in a seeded random order, as a pool's free list ends up after
        many requests have come and gone (their blocks freed in whatever order they finished).

        A fresh pool hands out consecutive blocks, so a batch built on it reads its KV from a few
        dense regions; a served batch reads blocks scattered over the pool. On an H200 (host AD,
        Llama-3.1-8B, benchmarks/bench_kv_placement.py) scattered blocks made decode steps of 112-160
        sequences 3-4% slower and of 256 sequences at 3k tokens 8% slower (no change at 32), the
        size of the profile's under-prediction of served decode steps of 96+ sequences. Allocation
        counts never depend on the order, so simulation results do not either."""
        random.Random(seed).shuffle(self._clean)

    # -- queries -----------------------------------------------------------------------
    @property
    def ref_count(self) -> list[int]:
        """Per block, the number of block tables that hold it. With prefix caching it is kept as
        blocks are taken, shared and freed (the live list). Without it no block is shared and
        every free block is clean, so the count is 1 exactly for the blocks outside the clean
        list; it is built here on demand instead of being written for every block of every
        table on the hot paths (a million-request simulation takes and frees tens of millions)."""
        if self.enable_prefix_caching:
            return self._ref_count
        rc = [1] * self.num_blocks
        for b in self._clean:
            rc[b] = 0
        return rc

    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation may take now (clean ones plus evictable cached ones)."""
        return len(self._clean) + len(self._cached_free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    def lookup(self, seq: Sequence) -> list[int]:
        """Cached blocks that hold `seq`'s leading full blocks (no state change).

        At least one token is always left to compute: the step that computes the last prompt
        token is the one that produces logits to sample from.
        """
        if not self.enable_prefix_caching or seq.block_table:
            return []
        bs = self.block_size
        max_blocks = (seq.num_tokens - 1) // bs
        # A waiting sequence is looked up at every iteration until admitted, so the walk runs
        # at C speed over memoized hashes and stops at the first miss (`_hits`).
        hashes = seq.known_block_hashes(max_blocks, bs)
        stop = min(max_blocks, len(hashes))
        if seq is self._memo_seq and max_blocks == self._memo_n:
            # Looked up before (the head of a queue blocked on KV, at every iteration): the hits
            # found then still hold, since a hash is only unmapped by evicting its block, which
            # drops this memo (`_take`), and a mapped hash never moves. Entries published since
            # may extend the run of hits from its first miss on.
            got = self._memo_got
            if len(got) < stop:
                ext = _hits(self._hash_to_block.get, hashes, len(got), stop)
                if ext:
                    got += ext
                    self._memo_blocks.update(ext)
            return list(got)
        got = _hits(self._hash_to_block.get, hashes, 0, stop)
        self._memo_seq = seq
        self._memo_n = max_blocks
        self._memo_got = got
        self._memo_blocks = set(got)
        return list(got)

    # -- mutations ---------------------------------------------------------------------
    def allocate(self, seq: Sequence, num_new_tokens: int, cached: list[int] | None = None) -> bool:
        """Give `seq` room for `num_new_tokens` more tokens; all or nothing.

        `cached` (from `lookup`, only when the sequence holds no blocks yet) are attached
        first and count as computed tokens: prefill skips them.
        """
        bs = self.block_size
        if not cached:  # the common case (decodes, prefill chunks): room already, or plain blocks
            need = -(-(seq.num_computed_tokens + num_new_tokens) // bs) - len(seq.block_table)
            if need <= 0:
                return True
            if need > len(self._clean) + len(self._cached_free):
                return False
            self._take(seq.block_table, need)
            used = self.num_blocks - len(self._clean) - len(self._cached_free)
            if used > self.stats.peak_used_blocks:
                self.stats.peak_used_blocks = used
            return True
        # Cached blocks nobody references sit in the free pool; taking them costs free blocks.
        total = seq.num_computed_tokens + len(cached) * bs + num_new_tokens
        need = max(0, -(-total // bs) - len(seq.block_table) - len(cached))
        free = self.num_free_blocks
        if need > free:  # no room even before counting the cached blocks (a queue head blocked on KV)
            return False
        rc = self._ref_count  # cached blocks exist only with prefix caching
        unheld = (rc[cached[0]] == 0) if len(cached) == 1 else itemgetter(*cached)(rc).count(0)
        if need + unheld > free:
            return False
        if cached:
            for b in cached:
                if rc[b] == 0:
                    del self._cached_free[b]
                rc[b] += 1
            seq.block_table.extend(cached)
            n = len(cached) * bs
            seq.num_computed_tokens += n
            seq.num_cached_tokens += n
            self.stats.hit_tokens += n
        if need:
            self._take(seq.block_table, need)
        used = self.num_blocks - len(self._clean) - len(self._cached_free)
        if used > self.stats.peak_used_blocks:
            self.stats.peak_used_blocks = used
        return True

    def allocate_each(self, seqs: list[Sequence], num_new_tokens: list[int]) -> Sequence | None:
        """`allocate(seq, n)` for each pair in order (no cached blocks), checking room inline so
        that the common case (room already) costs no call. Returns the first sequence that
        did not get its room (None: all did); those before it keep theirs."""
        bs = self.block_size
        clean = self._clean
        cached_free = self._cached_free
        take = self._take
        short = None
        rc = self._ref_count if self.enable_prefix_caching else None  # see `ref_count`
        for seq, n in zip(seqs, num_new_tokens):
            table = seq.block_table
            need = -(-(seq.num_computed_tokens + n) // bs) - len(table)
            if need > 0:
                if need <= len(clean):  # `_take` inline for its common case: clean blocks only
                    new = clean[-need:]
                    del clean[-need:]
                    if rc is not None:
                        for b in new:
                            rc[b] = 1
                    table += new
                    continue
                if need > len(clean) + len(cached_free):
                    short = seq
                    break
                take(table, need)
        # Blocks are only taken here, so the last count is the highest one.
        used = self.num_blocks - len(clean) - len(cached_free)
        if used > self.stats.peak_used_blocks:
            self.stats.peak_used_blocks = used
        return short

    def note_query(self, seq: Sequence) -> None:
        """Count a prompt's tokens as looked up, once per admission (for the hit rate)."""
        if self.enable_prefix_caching:
            self.stats.queried_tokens += seq.num_tokens

    def _take(self, table: list[int], n: int) -> None:
        clean = self._clean
        k = min(n, len(clean))
        rc = self._ref_count
        if k:
            new = clean[-k:]
            del clean[-k:]
            if self.enable_prefix_caching:  # see `ref_count`
                for b in new:
                    rc[b] = 1
            table.extend(new)
        if n > k:  # cached blocks: only with prefix caching
            popitem = self._cached_free.popitem
            bh = self.block_hash
            hmap = self._hash_to_block
            memo = self._memo_blocks
            evicted = 0
            for _ in range(n - k):
                b, _ = popitem(last=False)
                h = bh[b]
                if h is not None:
                    if hmap.get(h) == b:
                        del hmap[h]
                        if b in memo:
                            self._memo_seq = None
                            memo = self._memo_blocks = set()
                    bh[b] = None
                    evicted += 1
                rc[b] = 1
                table.append(b)
            self.stats.evictions += evicted

    def cache_blocks(self, seq: Sequence) -> None:
        """Publish `seq`'s newly full, computed blocks in the prefix cache."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        n_full = min(seq.num_computed_tokens // bs, len(seq.block_table))
        j = seq.num_published_blocks
        if j >= n_full:
            return
        # The hashes of blocks j .. n_full-1 in one (memoized) call; fewer when content runs out.
        hashes = seq.known_block_hashes(n_full, bs)  # the memo itself (no copy): read only
        bh = self.block_hash
        table = seq.block_table
        hmap = self._hash_to_block
        while j < n_full:
            h = hashes[j] if j < len(hashes) else seq.block_hash(j, bs)
            if h is None:
                break
            b = table[j]
            if h not in hmap:
                hmap[h] = b
            bh[b] = h
            j += 1
        seq.num_published_blocks = j

    def free(self, seq: Sequence) -> None:
        """Drop `seq`'s references; blocks left unreferenced become free (cached ones evictable).

        Tail blocks are freed first so they are evicted before the shared prefix, as vLLM does.
        """
        table = seq.block_table
        if not self.enable_prefix_caching:
            # No sharing without the cache: every block is held once and has no hash, so all
            # go to the clean list (same order as below), with no count to drop (`ref_count`).
            self._clean.extend(reversed(table))
            seq.block_table = []
            seq.num_published_blocks = 0
            return
        rc = self._ref_count
        bh = self.block_hash
        clean = self._clean
        cached_free = self._cached_free
        for b in reversed(table):
            c = rc[b] - 1
            rc[b] = c
            if c == 0:
                if bh[b] is None:
                    clean.append(b)
                else:
                    cached_free[b] = None
            elif c < 0:
                raise AssertionError(f"block {b} freed more often than allocated (sequence {seq.id})")
        seq.block_table = []
        seq.num_published_blocks = 0

    def check_invariants(self) -> None:
        """Every block is exactly one of: referenced, clean-free, cached-free (for tests)."""
        free = set(self._clean)
        cached = set(self._cached_free)
        assert len(free) == len(self._clean), "duplicate block in clean free list"
        assert not free & cached, "block both clean and cached-free"
        ref_count = self.ref_count
        for b in range(self.num_blocks):
            rc = ref_count[b]
            assert rc >= 0, f"block {b} has negative ref count"
            assert (rc == 0) == (b in free or b in cached), f"block {b}: ref {rc} vs free lists"
            if b in free:
                assert self.block_hash[b] is None, f"clean block {b} has a hash"
        for h, b in self._hash_to_block.items():
            assert self.block_hash[b] == h, f"hash map points at block {b} with another hash"
