"""Block accounting invariants of the paged KV manager (hypothesis drives random op sequences)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from policies.kv.block_manager import BlockManager
from policies.sequence import Sequence
from traces.schema import Request


def seq_with_tokens(i: int, tokens: list[int], output_len: int = 4) -> Sequence:
    return Sequence(Request(i, 0.0, len(tokens), output_len), token_ids=list(tokens))


def test_prefix_hit_returns_the_same_blocks():
    kv = BlockManager(num_blocks=32, block_size=4)
    a = seq_with_tokens(0, list(range(18)))
    assert kv.allocate(a, a.num_tokens, kv.lookup(a))
    a.num_computed_tokens = a.num_tokens
    kv.cache_blocks(a)
    b = seq_with_tokens(1, list(range(16)) + [99, 98, 97])
    hits = kv.lookup(b)
    assert hits == a.block_table[:4]  # 16 shared tokens = 4 full blocks
    assert kv.allocate(b, b.num_tokens - 16, hits)
    assert b.num_computed_tokens == 16 and b.num_cached_tokens == 16
    assert b.block_table[:4] == a.block_table[:4]
    assert all(kv.ref_count[x] == 2 for x in a.block_table[:4])
    kv.check_invariants()


def test_lookup_leaves_one_token_to_compute():
    kv = BlockManager(num_blocks=8, block_size=4)
    a = seq_with_tokens(0, list(range(8)))
    assert kv.allocate(a, 8)
    a.num_computed_tokens = 8
    kv.cache_blocks(a)
    kv.free(a)
    b = seq_with_tokens(1, list(range(8)))
    assert len(kv.lookup(b)) == 1  # the second block would leave nothing to compute


def test_freed_cached_blocks_survive_until_evicted_lru():
    kv = BlockManager(num_blocks=4, block_size=2)
    a = seq_with_tokens(0, [1, 2, 3, 4, 5])
    assert kv.allocate(a, 5)
    a.num_computed_tokens = 5
    kv.cache_blocks(a)
    kv.free(a)  # 2 cached blocks + 1 clean
    assert kv.num_free_blocks == 4
    c = seq_with_tokens(1, [9, 9, 9, 9, 9, 9])
    assert kv.allocate(c, 6)  # takes 2 clean blocks, then evicts 1 cached (tail first)
    assert kv.stats.evictions == 1
    d = seq_with_tokens(2, [1, 2, 3, 4, 7])
    assert len(kv.lookup(d)) == 1  # the head block survived
    kv.check_invariants()


def test_allocate_is_all_or_nothing():
    kv = BlockManager(num_blocks=3, block_size=4)
    a = seq_with_tokens(0, list(range(10)))
    assert kv.allocate(a, 10)
    b = seq_with_tokens(1, list(range(100, 110)))
    before = (kv.num_free_blocks, list(b.block_table))
    assert not kv.allocate(b, 10)
    assert (kv.num_free_blocks, b.block_table) == before


def _per_seq(blocks: list[int]) -> list[list[int]]:
    return [blocks[k : k + 8] for k in range(0, len(blocks), 8)]


def _consecutive(table: list[int]) -> bool:
    return sorted(table) == list(range(min(table), min(table) + len(table)))


def test_shuffled_free_list_changes_placement_only():
    """A shuffled pool hands out scattered blocks (the same for a seed), never a block twice, and
    accounts exactly as a fresh one."""
    tables = {}
    for seed in (None, 7, 7, 8):
        kv = BlockManager(num_blocks=64, block_size=4, enable_prefix_caching=False)
        if seed is not None:
            kv.shuffle_free_blocks(seed)
        seqs = [seq_with_tokens(i, list(range(30))) for i in range(8)]
        assert all(kv.allocate(s, 30) for s in seqs)
        assert kv.num_free_blocks == 0 and not kv.allocate(seq_with_tokens(9, [1]), 1)
        got = [b for s in seqs for b in s.block_table]
        assert sorted(got) == list(range(64))
        tables.setdefault(seed, []).append(got)
        for s in seqs:
            kv.free(s)
        assert kv.num_free_blocks == 64
    assert all(map(_consecutive, _per_seq(tables[None][0])))  # a fresh pool: runs of blocks
    assert not any(map(_consecutive, _per_seq(tables[7][0])))
    assert tables[7][0] == tables[7][1] != tables[8][0] and tables[7][0] != tables[None][0]


def test_trace_prefix_hashes_hit():
    kv = BlockManager(num_blocks=200, block_size=16)
    a = Sequence(Request(0, 0.0, 1200, 5, prefix_hashes=(7, 8, 9), hash_block_tokens=512))
    b = Sequence(Request(1, 0.0, 1100, 5, prefix_hashes=(7, 8, 11), hash_block_tokens=512))
    assert kv.allocate(a, 1200)
    a.num_computed_tokens = 1200
    kv.cache_blocks(a)
    hits = kv.lookup(b)
    assert len(hits) == 1024 // 16  # two shared 512-token blocks


ops = st.lists(
    st.tuples(st.sampled_from(["alloc", "grow", "compute", "free"]), st.integers(0, 5), st.integers(1, 40)),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(ops=ops, caching=st.booleans(), shared=st.integers(0, 3))
def test_blocks_are_conserved(ops, caching, shared):
    kv = BlockManager(num_blocks=24, block_size=4, enable_prefix_caching=caching)
    seqs: dict[int, Sequence] = {}
    for op, i, n in ops:
        s = seqs.get(i)
        if op == "alloc" and s is None:
            tokens = [0] * (4 * shared) + [i * 1000 + j for j in range(n)]
            s = seq_with_tokens(i, tokens)
            if kv.allocate(s, s.num_tokens - len(kv.lookup(s)) * 4, kv.lookup(s)):
                seqs[i] = s
        elif op == "grow" and s is not None:
            s.token_ids.extend(range(n))
            s.num_output_tokens += n
            kv.allocate(s, s.num_uncomputed)
        elif op == "compute" and s is not None:
            s.num_computed_tokens = min(s.num_tokens, len(s.block_table) * 4)
            kv.cache_blocks(s)
        elif op == "free" and s is not None:
            kv.free(s)
            del seqs[i]
        kv.check_invariants()
        held = {b for s in seqs.values() for b in s.block_table}
        assert kv.num_used_blocks == len(held)
        for b in held:
            assert kv.ref_count[b] == sum(s.block_table.count(b) for s in seqs.values())
    for s in list(seqs.values()):
        kv.free(s)
    assert kv.num_free_blocks == kv.num_blocks
    kv.check_invariants()
