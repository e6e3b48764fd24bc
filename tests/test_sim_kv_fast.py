"""The block manager's bulk forms (prefix-cache `lookup` with its memo, `free` and
`cache_blocks` at C speed, `allocate`'s early refusal) against their plain loop forms (and
`_take`'s, which evictions go through): two managers driven by the same random admissions,
steps and frees of sequences that share prompt prefixes must agree on every answer and on their
whole state (reference counts, hashes, both free lists in order, the hash map, the stats) after
every operation."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from policies.kv.block_manager import BlockManager
from policies.sequence import Sequence
from traces.schema import Request

BS = 4  # tokens per KV block
TB = 8  # tokens per trace prefix id


class PlainBlockManager(BlockManager):
    """The same allocator with `lookup`, `allocate`, `_take`, `cache_blocks` and `free` as plain
    loops, one block at a time and without any memo."""

    def lookup(self, seq: Sequence) -> list[int]:
        if not self.enable_prefix_caching or seq.block_table:
            return []
        got = []
        for j in range((seq.num_tokens - 1) // self.block_size):
            h = seq.block_hash(j, self.block_size)
            b = None if h is None else self._hash_to_block.get(h)
            if b is None:
                break
            got.append(b)
        return got

    def allocate(self, seq: Sequence, num_new_tokens: int, cached: list[int] | None = None) -> bool:
        cached = cached or []
        rc = self.ref_count
        taken_from_free = sum(1 for b in cached if rc[b] == 0)
        total = seq.num_computed_tokens + len(cached) * self.block_size + num_new_tokens
        need = max(0, -(-total // self.block_size) - len(seq.block_table) - len(cached))
        if need + taken_from_free > self.num_free_blocks:
            return False
        for b in cached:
            if rc[b] == 0:
                del self._cached_free[b]
            rc[b] += 1
        seq.block_table.extend(cached)
        n = len(cached) * self.block_size
        seq.num_computed_tokens += n
        seq.num_cached_tokens += n
        self.stats.hit_tokens += n
        if need:
            self._take(seq.block_table, need)
        self.stats.peak_used_blocks = max(self.stats.peak_used_blocks, self.num_used_blocks)
        return True

    def cache_blocks(self, seq: Sequence) -> None:
        n_full = min(seq.num_computed_tokens // self.block_size, len(seq.block_table))
        j = seq.num_published_blocks
        while j < n_full:
            h = seq.block_hash(j, self.block_size)
            if h is None:
                break
            b = seq.block_table[j]
            if h not in self._hash_to_block:
                self._hash_to_block[h] = b
            self.block_hash[b] = h
            j += 1
        seq.num_published_blocks = j

    def _take(self, table: list[int], n: int) -> None:
        k = min(n, len(self._clean))  # clean blocks first, the top of the stack in its order
        new = self._clean[len(self._clean) - k :]
        del self._clean[len(self._clean) - k :]
        for b in new:
            self.ref_count[b] = 1
            table.append(b)
        for _ in range(n - k):  # then evict the least recently freed cached blocks
            b, _ = self._cached_free.popitem(last=False)
            h = self.block_hash[b]
            if h is not None:
                if self._hash_to_block.get(h) == b:
                    del self._hash_to_block[h]
                self.block_hash[b] = None
                self.stats.evictions += 1
            self.ref_count[b] = 1
            table.append(b)

    def free(self, seq: Sequence) -> None:
        for b in reversed(seq.block_table):
            self.ref_count[b] -= 1
            if self.ref_count[b] == 0:
                if self.block_hash[b] is None:
                    self._clean.append(b)
                else:
                    self._cached_free[b] = None
        seq.block_table = []
        seq.num_published_blocks = 0


def _state(kv: BlockManager) -> tuple:
    return (
        list(kv.ref_count), list(kv.block_hash), list(kv._clean), list(kv._cached_free),
        dict(kv._hash_to_block), kv.stats,
    )


def _requests(shared: list[int], spec: list[tuple[int, int, int]]) -> list[Request]:
    """Requests whose prompts start with `share` of the `shared` prefix ids, then ids of their own."""
    out = []
    for i, (prompt, output, share) in enumerate(spec):
        n_ids = -(-prompt // TB)
        ids = tuple(shared[: min(share, n_ids)]) + tuple(1000 * (i + 1) + k for k in range(n_ids - share))
        out.append(Request(i, 0.0, prompt, output, prefix_hashes=ids[:n_ids], hash_block_tokens=TB))
    return out


# "lookup" alone is a queue head blocked on KV, looked up again at every iteration.
op = st.tuples(st.sampled_from(["admit", "lookup", "lookup", "step", "step", "free"]), st.integers(0, 5),
               st.integers(1, 40))
spec = st.tuples(st.integers(2, 90), st.integers(1, 12), st.integers(0, 8))


@settings(max_examples=200, deadline=None)
@given(st.lists(spec, min_size=2, max_size=6), st.integers(12, 60), st.lists(op, max_size=60))
def test_bulk_block_manager_equals_plain_loops(specs, num_blocks, ops):
    reqs = _requests([7, 8, 9, 10, 11, 12, 13, 14], specs)
    fast, plain = BlockManager(num_blocks, BS), PlainBlockManager(num_blocks, BS)
    pairs = [(Sequence(r), Sequence(r)) for r in reqs]
    for name, i, amount in ops:
        a, b = pairs[i % len(pairs)]
        if name == "lookup":
            assert fast.lookup(a) == plain.lookup(b)
        elif name == "admit" and not a.block_table:
            got_a, got_b = fast.lookup(a), plain.lookup(b)
            assert got_a == got_b
            n = max(1, min(amount, a.num_tokens - a.num_computed_tokens - len(got_a) * BS))
            ok = fast.allocate(a, n, got_a)
            assert ok == plain.allocate(b, n, got_b)
            if ok:
                for s, kv in ((a, fast), (b, plain)):
                    s.num_computed_tokens += n
                    kv.cache_blocks(s)
        elif name == "step" and a.block_table:
            if a.num_computed_tokens == a.num_tokens:  # prompt done: a token was sampled
                if a.num_output_tokens >= a.request.output_len:
                    continue
                a.num_output_tokens += 1
                b.num_output_tokens += 1
            n = max(1, min(amount, a.num_tokens - a.num_computed_tokens))
            ok = fast.allocate(a, n)
            assert ok == plain.allocate(b, n)
            if ok:
                for s, kv in ((a, fast), (b, plain)):
                    s.num_computed_tokens += n
                    kv.cache_blocks(s)
        elif name == "free" and a.block_table:
            fast.free(a)
            plain.free(b)
            a.num_computed_tokens = b.num_computed_tokens = 0  # preempted: recompute later
        assert a.block_table == b.block_table and a.num_computed_tokens == b.num_computed_tokens
        assert _state(fast) == _state(plain)
        fast.check_invariants()


def test_allocate_takes_the_last_free_blocks_behind_a_shared_prefix():
    """Room for exactly what is left, the prefix held by another sequence (so it costs no free
    block): the early refusal must not refuse it."""
    kv = BlockManager(5, BS)
    a, b = (Sequence(r) for r in _requests([7, 8], [(12, 4, 2), (17, 4, 2)]))
    assert kv.allocate(a, 12)
    a.num_computed_tokens = 12
    kv.cache_blocks(a)
    cached = kv.lookup(b)
    assert cached == a.block_table and kv.num_free_blocks == 2
    assert kv.allocate(b, 17 - 3 * BS, cached)  # two more blocks: all that is free
    assert kv.num_free_blocks == 0 and b.block_table[:3] == a.block_table


def test_lookup_again_after_its_hits_were_evicted():
    """A queue head looked up, then some of the cached blocks it found are evicted for another
    sequence: the next lookup must see only what is still cached (the memo is dropped)."""
    kv = BlockManager(6, BS)
    a, x, c = (Sequence(r) for r in _requests([7, 8], [(12, 4, 2), (17, 4, 2), (20, 4, 0)]))
    assert kv.allocate(a, 12)
    a.num_computed_tokens = 12
    kv.cache_blocks(a)
    first = list(a.block_table)
    kv.free(a)  # its three blocks stay cached, the tail one first in line for eviction
    assert kv.lookup(x) == first
    assert kv.allocate(c, 20)  # three clean blocks and two evicted ones (the last two of a's)
    assert kv.lookup(x) == first[:1] == PlainBlockManager.lookup(kv, x)
