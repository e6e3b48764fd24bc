"""`ReplicaCore.kv_limit` answers at once when a bound on the blocks every entry could need
(the sum of their computed tokens plus k each, over the block size, plus one block each) fits
in the free pool. Its answer must be the exact one in every case: the largest k <= k_max (at
least 1) for which the blocks the entries need beyond their capacity fit, found here by trying
every k."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from policies.kv.block_manager import BlockManager
from policies.scheduling.base import SchedulerConfig
from policies.scheduling.fcfs import FCFSScheduler
from policies.sequence import Sequence
from sim.replica_core import ReplicaCore
from sim.results import RunRecorder
from traces.schema import Request


def _core(num_blocks: int, used: int, bs: int) -> ReplicaCore:
    kv = BlockManager(num_blocks, bs, enable_prefix_caching=False)
    if used:
        assert kv.allocate(Sequence(Request(0, 0.0, used * bs, 1)), used * bs)
    return ReplicaCore(0, FCFSScheduler(SchedulerConfig()), kv, RunRecorder(1, False))


def _exact(cs: list[tuple[int, int]], k_max: int, free: int, bs: int) -> int:
    def need(k: int) -> int:
        return sum(-(-(c + k - cap) // bs) for c, cap in cs if c + k > cap)

    return max([k for k in range(1, k_max + 1) if need(k) <= free], default=1)


entry = st.tuples(st.integers(0, 400), st.integers(0, 30))  # (c, capacity in blocks)


@settings(max_examples=400, deadline=None)
@given(st.lists(entry, max_size=12), st.integers(1, 120), st.integers(0, 80), st.integers(0, 20),
       st.sampled_from([1, 4, 16]))
def test_kv_limit_equals_exhaustive_search(entries, k_max, free, used, bs):
    core = _core(free + used + 1, used + 1, bs)  # `free` blocks left
    cs = [(c, blocks * bs) for c, blocks in entries]
    assert core.kv_limit(cs, k_max) == _exact(cs, k_max, free, bs)


def test_kv_limit_quick_answer_and_exact_count_agree_at_the_bound():
    """Entries that need exactly the free blocks at k_max (the bound fails, the count passes)
    and one block more (both fail): the quick test must not answer for either."""
    bs = 4
    cs = [(3, 4), (0, 0)]  # at k: ceil((k - 1) / 4) + ceil(k / 4) blocks
    k_max = 9  # 2 + 3 = 5 blocks
    assert _core(5, 0, bs).kv_limit(cs, k_max) == 9
    assert _core(4, 0, bs).kv_limit(cs, k_max) == _exact(cs, k_max, 4, bs) == 8


def test_kv_limit_counts_a_partial_block_per_entry():
    """Two empty entries growing by 2 tokens of a 4-token block need a block each: with one free
    block only one token each fits (the sum of their tokens, 4, would fit in one block)."""
    assert _core(1, 0, 4).kv_limit([(0, 0), (0, 0)], 2) == 1
