"""FCFS chunked-prefill scheduler: budget, decodes first, caps, preemption."""

from __future__ import annotations

from collections import deque

from policies.kv.block_manager import BlockManager
from policies.scheduling.base import SchedulerConfig
from policies.scheduling.fcfs import FCFSScheduler
from policies.sequence import Sequence, Status
from traces.schema import Request


def mk(i: int, prompt: int, out: int = 8) -> Sequence:
    return Sequence(Request(i, 0.0, prompt, out))


def step(batch) -> None:
    """Pretend the batch ran: advance computed counts and sample where a prompt completes."""
    for s, n in zip(batch.seqs, batch.num_new_tokens):
        s.num_computed_tokens += n
        if s.num_computed_tokens == s.num_tokens:
            s.num_output_tokens += 1


def test_budget_respected_and_chunked():
    sch = FCFSScheduler(SchedulerConfig(max_num_batched_tokens=100))
    kv = BlockManager(1000, 16)
    waiting, running = deque([mk(0, 250), mk(1, 30)]), []
    b = sch.schedule(waiting, running, kv, 0.0)
    assert b.num_tokens == 100 and b.num_new_tokens == [100]
    step(b)
    b = sch.schedule(waiting, running, kv, 0.0)
    assert b.num_new_tokens == [100] and b.seqs[0].id == 0
    step(b)
    b = sch.schedule(waiting, running, kv, 0.0)
    assert [s.id for s in b.seqs] == [0, 1] and b.num_new_tokens == [50, 30]


def test_decodes_first_then_prefill():
    sch = FCFSScheduler(SchedulerConfig(max_num_batched_tokens=64))
    kv = BlockManager(1000, 16)
    waiting, running = deque([mk(0, 10), mk(1, 10)]), []
    step(sch.schedule(waiting, running, kv, 0.0))
    waiting.append(mk(2, 200))
    b = sch.schedule(waiting, running, kv, 1.0)
    assert [s.id for s in b.seqs] == [0, 1, 2]
    assert b.num_new_tokens == [1, 1, 62]
    assert b.seqs[2].first_scheduled == 1.0


def test_max_num_seqs_cap():
    sch = FCFSScheduler(SchedulerConfig(max_num_batched_tokens=1000, max_num_seqs=2))
    kv = BlockManager(1000, 16)
    waiting, running = deque(mk(i, 10) for i in range(4)), []
    b = sch.schedule(waiting, running, kv, 0.0)
    assert len(b) == 2 and len(waiting) == 2


def test_no_chunking_when_disabled():
    sch = FCFSScheduler(SchedulerConfig(max_num_batched_tokens=100, enable_chunked_prefill=False))
    kv = BlockManager(1000, 16)
    waiting, running = deque([mk(0, 60), mk(1, 60)]), []
    b = sch.schedule(waiting, running, kv, 0.0)
    assert b.num_new_tokens == [60]


def test_preemption_frees_blocks_and_requeues_newest():
    bs = 4
    sch = FCFSScheduler(SchedulerConfig(max_num_batched_tokens=100))
    kv = BlockManager(4, bs)  # 16 token slots
    waiting, running = deque([mk(0, 8, 20), mk(1, 8, 20)]), []
    step(sch.schedule(waiting, running, kv, 0.0))  # both prefilled: 2 blocks each, pool full
    assert kv.num_free_blocks == 0
    b = sch.schedule(waiting, running, kv, 0.0)  # seq 0 needs a 3rd block: seq 1 is preempted
    assert [s.id for s in b.preempted] == [1]
    assert [s.id for s in b.seqs] == [0]
    victim = b.preempted[0]
    assert victim.status is Status.WAITING and victim.num_computed_tokens == 0 and victim.block_table == []
    assert victim.num_preemptions == 1 and waiting[0] is victim
    assert b.lost_tokens == 8
    kv.check_invariants()
    assert kv.num_used_blocks == 3
