"""Without prefix caching the block manager keeps no live reference counts (`ref_count` is built
from the clean list on demand); with caching it keeps them block by block. For sequences that
carry no content (no token ids, no prefix hashes: trace replay) caching publishes nothing, so a
caching manager must move exactly the same blocks. Two managers driven by the same random
allocations (`allocate`, the pipelined runs' `allocate_each`) and frees must agree on every
answer, every block table, the free list in order and the reference counts, which must also be
the number of tables that hold each block."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from policies.kv.block_manager import BlockManager
from policies.sequence import Sequence
from traces.schema import Request

BS = 4

op = st.tuples(st.sampled_from(["alloc", "alloc", "each", "free"]), st.lists(st.integers(0, 5), min_size=1,
               max_size=4), st.integers(1, 30))


@settings(max_examples=200, deadline=None)
@given(st.integers(8, 60), st.lists(op, max_size=60))
def test_untracked_ref_counts_match_tracked_ones(num_blocks, ops):
    fast = BlockManager(num_blocks, BS, enable_prefix_caching=False)
    tracked = BlockManager(num_blocks, BS, enable_prefix_caching=True)
    reqs = [Request(i, 0.0, 200, 50) for i in range(6)]
    pairs = [(Sequence(r), Sequence(r)) for r in reqs]
    for name, idx, amount in ops:
        sel = [pairs[i] for i in dict.fromkeys(idx)]  # distinct members, in order
        if name == "alloc":
            a, b = sel[0]
            assert fast.allocate(a, amount) == tracked.allocate(b, amount)
        elif name == "each":
            needs = [amount + k for k in range(len(sel))]
            short_a = fast.allocate_each([a for a, _ in sel], needs)
            short_b = tracked.allocate_each([b for _, b in sel], needs)
            assert (short_a is None) == (short_b is None)
            if short_a is not None:
                assert short_a.id == short_b.id
        else:
            for a, b in sel:
                fast.free(a)
                tracked.free(b)
        for a, b in pairs:
            assert a.block_table == b.block_table
        assert fast._clean == tracked._clean
        assert fast.stats == tracked.stats
        held = [0] * num_blocks
        for a, _ in pairs:
            for blk in a.block_table:
                held[blk] += 1
        assert fast.ref_count == tracked.ref_count == held
        fast.check_invariants()
        tracked.check_invariants()


def test_ref_count_without_caching_is_built_from_the_free_list():
    kv = BlockManager(10, BS, enable_prefix_caching=False)
    s = Sequence(Request(0, 0.0, 9, 2))
    assert kv.allocate(s, 9)  # 3 blocks
    assert kv.ref_count == [1 if b in s.block_table else 0 for b in range(10)]
    kv.free(s)
    assert kv.ref_count == [0] * 10
