"""The small-step graphs' packed input staging (StepGraphs.load) against build_metadata, on CPU.

The step-graph path never builds AttentionMetadata per step: it writes ids, positions, slots,
row offsets, context lengths, block tables, the attention tile map and the sampled rows straight
into one packed buffer. Staged on CPU (no capture), that buffer must say what build_metadata and
the Triton backend's own tile plan say for the same step; padding must touch only the scratch
slot and sequence rows with no queries and no keys. (tests/test_engine_triton.py checks the
replayed graphs against eager steps on a GPU.)
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from engine.attention import build_metadata  # noqa: E402
from engine.cuda_graphs import fastest_buckets  # noqa: E402
from engine.step_graphs import StepGraphs, step_buckets  # noqa: E402
from policies.scheduling.batch import ScheduledBatch  # noqa: E402
from policies.sequence import PENDING, Sequence  # noqa: E402
from traces.schema import Request  # noqa: E402

BS = 4
SCRATCH = 999
BLOCK_Q = 8


def _staging(max_tokens: int, max_seqs: int, max_model_len: int) -> StepGraphs:
    kv = SimpleNamespace(block_size=BS, scratch_block=SCRATCH, k=torch.empty(1))
    backend = SimpleNamespace(tile_rows=lambda decode_only: (32, BLOCK_Q))
    return StepGraphs(None, kv, backend, max_model_len, max_tokens, max_seqs, capture=False)  # type: ignore[arg-type]


def _seq(i: int, total: int, computed: int, table: list[int]) -> Sequence:
    s = Sequence(Request(id=i, arrival=0.0, prompt_len=total, output_len=5), token_ids=None)
    s.token_ids = [(7 * i + j) % 50 for j in range(total)]
    s.num_computed_tokens = computed
    s.block_table = table
    return s


@st.composite
def _batches(draw):
    n = draw(st.integers(1, 12))
    seqs, counts = [], []
    nxt = 0
    budget = 96
    for i in range(n):
        total = draw(st.integers(1, 60))
        computed = draw(st.integers(0, total - 1))
        k = draw(st.integers(1, total - computed))
        if k > budget:
            break
        budget -= k
        nblocks = -(-(computed + k) // BS) + draw(st.integers(0, 2))  # tables may run ahead
        seqs.append(_seq(i, total, computed, list(range(nxt, nxt + nblocks))))
        counts.append(k)
        nxt += nblocks
    return ScheduledBatch(seqs, counts)


def test_buckets() -> None:
    assert step_buckets(512) == [16, 32, 64, 128, 192, 256, 320, 384, 448, 512]
    assert step_buckets(2048)[9:] == [512 + 128 * k for k in range(13)]
    assert step_buckets(100) == [16, 32, 64, 128]
    assert step_buckets(16) == [16]


def test_steps_pad_up_to_a_bucket_that_replays_faster() -> None:
    ms = {16: 6.3, 32: 5.7, 64: 6.4, 128: 8.0, 384: 13.1, 448: 18.4, 512: 15.0}
    # 32 replays 10% faster than 16 and 512 18% faster than 448: their steps pad up.
    assert fastest_buckets(ms) == [32, 64, 128, 384, 512]
    assert fastest_buckets({16: 5.0, 32: 5.1, 64: 5.2}) == [16, 32, 64]  # monotone: all kept
    assert fastest_buckets({16: 5.2, 32: 5.0}) == [16, 32]  # within the 5% margin: kept
    assert fastest_buckets({512: 15.0}) == [512]


@settings(max_examples=80, deadline=None)
@given(_batches(), st.integers(0, 2))
def test_load_matches_build_metadata(batch: ScheduledBatch, reuse: int) -> None:
    g = _staging(max_tokens=100, max_seqs=12, max_model_len=80)
    for _ in range(reuse):  # earlier, larger steps leave stale data in both host mirrors
        big = ScheduledBatch([_seq(100 + j, 60, 51, list(range(200, 216))) for j in range(10)], [9] * 10)
        g.load(big, g.bucket(big))
    t_used = sum(batch.num_new_tokens)
    t = g.bucket(batch)
    assert t == min(b for b in g.buckets if b >= t_used)
    rows, seqs = g.load(batch, t)
    off = g._off
    h = g._host[g._flip]
    dev = g.buf  # what the device received
    assert torch.equal(dev[: off["tab"][0]], h[: off["tab"][0]])

    def part(name: str) -> list[int]:
        a, b = off[name]
        return dev[a:b].tolist()

    q_lens = batch.num_new_tokens
    ctx = [s.num_computed_tokens + n for s, n in zip(batch.seqs, q_lens)]
    meta = build_metadata(q_lens, ctx, [s.block_table for s in batch.seqs], BS, torch.device("cpu"))
    want_ids = [
        tok
        for s, n in zip(batch.seqs, q_lens)
        for tok in s.token_ids[s.num_computed_tokens : s.num_computed_tokens + n]
    ]
    assert part("ids")[:t_used] == want_ids
    assert part("pos")[:t_used] == [
        p for s, n in zip(batch.seqs, q_lens) for p in range(s.num_computed_tokens, s.num_computed_tokens + n)
    ]
    assert part("slots")[:t_used] == meta.slot_mapping.tolist()
    nseq = len(batch.seqs)
    cu = part("cu")
    assert cu[: nseq + 1] == meta.cu_seqlens_q.tolist()
    assert part("ctx")[:nseq] == meta.context_lens.tolist()
    tab = dev[off["tab"][0] : off["tab"][1]].view(g.max_seqs + 1, g.max_blocks)
    for i, s in enumerate(batch.seqs):  # every block the kernel may read
        need = -(-ctx[i] // BS)
        assert tab[i, :need].tolist() == s.block_table[:need]
    # Tiles: the backend's plan (one prefill tile per BLOCK_Q queries of each sequence of two or
    # more new tokens; one decode-sized tile per one-token sequence), then padding tiles on the
    # last sequence row, which has no queries and no keys.
    plan = [(b, q0) for b, n in enumerate(q_lens) if n > 1 for q0 in range(0, n, BLOCK_Q)]
    tiles = g.tiles_of[t]
    assert len(plan) <= tiles
    got = list(zip(part("tseq")[:tiles], part("tq")[:tiles]))
    assert got[: len(plan)] == plan
    assert all(b == g.max_seqs for b, _ in got[len(plan) :])
    singles = [b for b, n in enumerate(q_lens) if n == 1]
    k = g.seqs_of[t]
    assert part("dseq")[:k] == singles + [g.max_seqs] * (k - len(singles))
    assert part("dq") == [0] * g.max_seqs
    assert cu[g.max_seqs] == cu[g.max_seqs + 1] and part("ctx")[g.max_seqs] == 0
    assert all(c == t_used for c in cu[nseq:]) and all(c == 0 for c in part("ctx")[nseq:])
    # Padded tokens: id 0 at position 0, written to the scratch slot only.
    assert part("ids")[t_used:t] == [0] * (t - t_used)
    assert part("slots")[t_used:t] == [SCRATCH * BS] * (t - t_used)
    # Sampled rows: the last token of each sequence that reaches its end, in batch order.
    ends = np.cumsum(q_lens) - 1
    want = [
        int(ends[i])
        for i, (s, n) in enumerate(zip(batch.seqs, q_lens))
        if s.num_computed_tokens + n == len(s.token_ids)
    ]
    assert rows == want and part("rows")[: len(want)] == want
    assert [s.id for s in seqs] == [batch.seqs[i].id for i in range(nseq) if int(ends[i]) in want]


def test_what_does_not_fit_runs_eagerly_and_bad_input_is_named() -> None:
    g = _staging(max_tokens=64, max_seqs=4, max_model_len=40)
    too_many_tokens = ScheduledBatch([_seq(0, 70, 0, list(range(18)))], [65])
    too_many_seqs = ScheduledBatch([_seq(i, 3, 0, [i]) for i in range(5)], [3] * 5)
    assert g.bucket(too_many_tokens) is None and g.bucket(too_many_seqs) is None
    short_table = ScheduledBatch([_seq(0, 9, 0, [0])], [9])  # 9 tokens need 3 blocks of 4
    with pytest.raises(ValueError, match="sequence 0: cannot compute 9 tokens from 0"):
        g.load(short_table, g.bucket(short_table))
    past_limit = ScheduledBatch([_seq(0, 50, 38, list(range(13)))], [5])
    with pytest.raises(ValueError, match="max_model_len=40"):
        g.load(past_limit, g.bucket(past_limit))


def test_pending_ids_name_their_row_of_the_sampled_buffer() -> None:
    """A sequence whose last id is PENDING (sampled by the step in flight) stages id 0 there and
    that step's row of `sampled`; every other token stages its id and -1."""
    g = _staging(max_tokens=64, max_seqs=4, max_model_len=80)
    dec = _seq(0, 9, 8, [0, 1, 2])
    dec.token_ids[-1] = PENDING
    chunk = _seq(1, 20, 4, [3, 4, 5, 6, 7])  # a prefill chunk: ids all known
    batch = ScheduledBatch([chunk, dec], [16, 1])
    g.load(batch, g.bucket(batch), {0: 3})
    a = g._off["ids"][0]
    s = g._off["src"][0]
    assert g.buf[a : a + 17].tolist() == chunk.token_ids[4:20] + [0]
    assert g.buf[s : s + 18].tolist() == [-1] * 16 + [3, -1]
