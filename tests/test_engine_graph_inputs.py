"""The decode graphs' packed input staging (DecodeGraphs.load) against build_metadata, on CPU, and
the eager path's block-table padding against the plain list padding it replaces.

The CUDA graph path never builds AttentionMetadata per step: it writes ids, positions, slots,
context lengths and block tables straight into one packed buffer. Here that buffer (staged on
CPU, unpinned) must say exactly what build_metadata says for the same decode step, and padded
rows must point at the scratch block only.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from engine.attention import build_metadata, padded_tables  # noqa: E402
from engine.cuda_graphs import DecodeGraphs, decode_buckets  # noqa: E402
from policies.sequence import PENDING, Sequence  # noqa: E402
from traces.schema import Request  # noqa: E402

BS = 4
SCRATCH = 999


def _staging(max_batch: int, max_model_len: int) -> DecodeGraphs:
    g = DecodeGraphs.__new__(DecodeGraphs)  # no model, no capture: only the input buffers
    g.stage_inputs(decode_buckets(max_batch), BS, SCRATCH, max_model_len, torch.device("cpu"), pin=False)
    return g


def _seq(i: int, prompt: int, out: int, computed: int, table: list[int]) -> Sequence:
    s = Sequence(Request(id=i, arrival=0.0, prompt_len=prompt, output_len=out + 5), token_ids=None)
    s.token_ids = [(7 * i + j) % 50 for j in range(prompt + out)]
    s.num_output_tokens = out
    s.num_computed_tokens = computed
    s.block_table = table
    return s


@st.composite
def _batches(draw):
    n = draw(st.integers(1, 20))
    seqs = []
    nxt = 0
    for i in range(n):
        prompt = draw(st.integers(1, 30))
        out = draw(st.integers(0, 10))
        total = prompt + out
        # decode: computed = total - 1; or a one-token prefill chunk in the middle of the prompt
        computed = total - 1 if out > 0 or draw(st.booleans()) else draw(st.integers(0, total - 1))
        nblocks = -(-(computed + 1) // BS) + draw(st.integers(0, 2))  # tables may run ahead
        seqs.append(_seq(i, prompt, out, computed, list(range(nxt, nxt + nblocks))))
        nxt += nblocks
    return seqs


@settings(max_examples=60, deadline=None)
@given(_batches(), st.integers(0, 3))
def test_load_matches_build_metadata(seqs: list[Sequence], reuse: int) -> None:
    g = _staging(max_batch=24, max_model_len=64)
    for _ in range(reuse):  # earlier, larger steps leave stale data in both host mirrors
        g.load([_seq(100 + j, 40, 3, 42, list(range(200, 211))) for j in range(24)])
    b = len(seqs)
    size, rows = g.load(seqs)
    assert size == min(s for s in g.buckets if s >= b)
    ctx = [s.num_computed_tokens + 1 for s in seqs]
    meta = build_metadata([1] * b, ctx, [s.block_table for s in seqs], BS, torch.device("cpu"))
    assert g.input_ids[:b].tolist() == [s.token_ids[s.num_computed_tokens] for s in seqs]
    assert g.positions[:b].tolist() == [s.num_computed_tokens for s in seqs]
    assert g.slots[:b].tolist() == meta.slot_mapping.tolist()
    assert g.ctx[:b].tolist() == meta.context_lens.tolist()
    for i, s in enumerate(seqs):  # every block the kernel may read (those holding the context)
        need = -(-(s.num_computed_tokens + 1) // BS)
        assert g.tables[i, :need].tolist() == s.block_table[:need]
    # padding rows: token 0 at position 0, one key, all in the scratch block
    assert g.input_ids[b:size].tolist() == [0] * (size - b)
    assert g.positions[b:size].tolist() == [0] * (size - b)
    assert g.slots[b:size].tolist() == [SCRATCH * BS] * (size - b)
    assert g.ctx[b:size].tolist() == [1] * (size - b)
    assert g.tables[b:size, 0].tolist() == [SCRATCH] * (size - b)
    samples = [i for i, s in enumerate(seqs) if s.num_computed_tokens + 1 == len(s.token_ids)]
    assert (rows if rows is not None else list(range(b))) == samples


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 24), st.integers(0, 2**16), st.booleans()), min_size=2, max_size=12))
def test_load_keeps_tables_right_over_many_steps(steps: list[tuple[int, int, bool]]) -> None:
    """Rows that held the same table list before get only its new blocks written: over steps where
    sequences decode on (tables growing), drop out, come back in other rows, are preempted (a new
    list, same length) and batches shrink under padding rows and grow again, every row the kernel
    reads still says what its sequence's table says."""
    g = _staging(max_batch=24, max_model_len=160)
    pool = [_seq(i, 20, 130, 20, list(range(1000 * i, 1000 * i + 8))) for i in range(24)]
    nxt = 50_000
    for n, seed, preempt in steps:
        rng = np.random.default_rng(seed)
        order = sorted(rng.choice(24, size=n, replace=False)) if rng.random() < 0.5 else list(range(n))
        seqs = [pool[i] for i in order]
        for s in seqs:  # one decode step further; a new block when the next token needs one
            if s.num_computed_tokens + 2 < len(s.token_ids) and s.num_computed_tokens < 150:
                s.num_computed_tokens += 1
            while s.num_computed_tokens // BS >= len(s.block_table):
                s.block_table.append(nxt)
                nxt += 1
        if preempt:  # freed and allocated again: a new list object, the same length, other blocks
            s = seqs[int(rng.integers(n))]
            s.block_table = [nxt + j for j in range(len(s.block_table))]
            nxt += len(s.block_table)
        size, _ = g.load(seqs)
        for i, s in enumerate(seqs):
            need = -(-(s.num_computed_tokens + 1) // BS)
            assert g.tables[i, :need].tolist() == s.block_table[:need], (i, s.id)
        assert g.tables[n:size, 0].tolist() == [SCRATCH] * (size - n)


def test_load_rejects_what_it_cannot_decode() -> None:
    g = _staging(max_batch=4, max_model_len=16)
    with pytest.raises(ValueError, match="sequence 0"):
        g.load([_seq(0, 5, 1, 5, [0])])  # position 5 needs a second block of 4
    with pytest.raises(ValueError, match="max_model_len=16"):
        g.load([_seq(0, 20, 1, 20, list(range(6)))])
    assert not g.accepts([1, 2]) and not g.accepts([]) and not g.accepts([1] * 5) and g.accepts([1] * 4)


def test_pending_ids_name_their_row_of_the_sampled_buffer() -> None:
    """A decode whose input id the previous (in-flight) step sampled stages id 0 and that step's
    row; the others stage their ids and -1; a pending id the last launch did not sample is refused."""
    g = _staging(max_batch=8, max_model_len=64)
    seqs = [_seq(i, 6, 2, 7, [2 * i, 2 * i + 1]) for i in range(3)]
    seqs[1].token_ids[-1] = PENDING
    seqs[2].token_ids[-1] = PENDING
    g.load(seqs, {1: 5, 2: 0, 9: 3})
    assert g.input_ids[:3].tolist() == [seqs[0].token_ids[-1], 0, 0]
    assert g.src[:4].tolist() == [-1, 5, 0, -1]  # the padding row too
    with pytest.raises(ValueError, match="sequence 2: its input id is pending"):
        g.load(seqs, {1: 5})


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2**31 - 1), max_size=12), max_size=10), st.integers(0, 50))
def test_padded_tables_is_the_list_padding(tables: list[list[int]], pad: int) -> None:
    """The eager path's vectorised block-table padding says what padding each list would."""
    width = max((len(t) for t in tables), default=1) or 1
    want = [t + [pad] * (width - len(t)) for t in tables]
    got = padded_tables(tables, pad)
    assert got.dtype == np.int32 and got.shape == (len(tables), width)
    assert got.tolist() == want
