"""Trace transforms: each returns a new Trace, leaves the input alone and records itself in meta."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from traces.generators import Fixed, Uniform, gamma_arrivals, poisson_arrivals, shared_prefix_trace
from traces.schema import Trace
from traces.transforms import cap_lengths, head, mean_rate, replace_arrivals, scale_to_rate, time_window


def _trace() -> Trace:
    return Trace(
        arrival=[0.0, 1.0, 2.0, 4.0, 8.0],
        prompt_len=[10, 20, 30, 40, 50],
        output_len=[5, 4, 3, 2, 1],
        prefix_hashes=[(1,), (1, 2), (1, 2, 3), (4,), (5,)],
        hash_block_tokens=16,
        tenant=["a", "b", "c", "d", "e"],
        name="toy",
    )


def test_scale_to_rate_keeps_shape_and_input() -> None:
    tr = Trace(
        arrival=gamma_arrivals(2000, 3.0, 0.5, seed=1), prompt_len=np.ones(2000), output_len=np.ones(2000)
    )
    before = tr.arrival.copy()
    out = scale_to_rate(tr, 12.0)
    assert mean_rate(out) == pytest.approx(12.0, rel=1e-12)
    cv = lambda a: np.diff(a).std() / np.diff(a).mean()  # noqa: E731
    assert cv(out.arrival) == pytest.approx(cv(tr.arrival), rel=1e-9)
    np.testing.assert_array_equal(tr.arrival, before)
    assert out.meta["transforms"] == ["scale_to_rate(12)"] and "transforms" not in tr.meta
    toy = scale_to_rate(_trace(), 1.0)  # 4 gaps over 8 s = 0.5 req/s -> times halve
    assert toy.arrival.tolist() == [0.0, 0.5, 1.0, 2.0, 4.0]
    with pytest.raises(ValueError, match="rate must be"):
        scale_to_rate(tr, 0.0)
    with pytest.raises(ValueError, match="same time"):
        scale_to_rate(Trace(arrival=[0.0, 0.0], prompt_len=[1, 1], output_len=[1, 1]), 1.0)


def test_time_window_and_head() -> None:
    tr = _trace()
    w = time_window(tr, 1.0, 4.0)
    assert w.arrival.tolist() == [0.0, 1.0]  # requests at 1 and 2 s, relative to the window start
    assert w.prompt_len.tolist() == [20, 30] and w.tenant == ["b", "c"]
    assert w.prefix_hashes == [(1, 2), (1, 2, 3)]
    assert time_window(tr, 0.5, 0.9).arrival.tolist() == []
    with pytest.raises(ValueError):
        time_window(tr, 2.0, 2.0)
    h = head(tr, 2)
    assert h.prompt_len.tolist() == [10, 20] and len(head(tr, 99)) == 5 and len(head(tr, 0)) == 0
    chained = head(time_window(tr, 0.0, 5.0), 3)
    assert chained.meta["transforms"] == ["time_window(0, 5)", "head(3)"]


def test_replace_arrivals() -> None:
    tr = _trace()
    new = poisson_arrivals(len(tr), 2.0, seed=0)
    out = replace_arrivals(tr, new)
    np.testing.assert_array_equal(out.arrival, new)
    assert list(out.prompt_len) == list(tr.prompt_len) and out.prefix_hashes == tr.prefix_hashes
    with pytest.raises(ValueError, match="needs 5 arrival times"):
        replace_arrivals(tr, [0.0, 1.0])
    with pytest.raises(ValueError, match=r"arrivals\[2\] < arrivals\[1\]"):
        replace_arrivals(tr, [0.0, 2.0, 1.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="finite"):
        replace_arrivals(tr, [0.0, 1.0, np.nan, 3.0, 4.0])


def test_cap_lengths_counts_and_rules() -> None:
    tr = Trace(arrival=[0, 1, 2, 3], prompt_len=[100, 10, 60, 5], output_len=[10, 90, 60, 200])
    out = cap_lengths(tr, max_prompt=80, max_output=150, max_total=100)
    # row 0: prompt 100 -> 80 by max_prompt; 80 + 10 fits. row 1: 10 + 90 = 100 fits exactly.
    # row 2: 60 + 60 > 100 -> prompt cut to 40. row 3: output 200 -> 150 by max_output, then
    # 5 + 150 > 100 -> prompt 1 (its floor), output 99.
    assert out.prompt_len.tolist() == [80, 10, 40, 1]
    assert out.output_len.tolist() == [10, 90, 60, 99]
    assert out.meta["capped"] == {"prompt": 3, "output": 1, "total": 2, "requests": 3}
    assert tr.prompt_len.tolist() == [100, 10, 60, 5]  # input untouched
    assert cap_lengths(tr).meta["capped"]["requests"] == 0
    with pytest.raises(ValueError):
        cap_lengths(tr, max_total=1)


def test_cap_lengths_truncates_hashes_consistently() -> None:
    # Two prompts equal through block 1 (ids 0, 1); a third differs at block 1.
    tr = Trace(
        arrival=[0, 1, 2],
        prompt_len=[40, 45, 40],
        output_len=[1, 1, 1],
        prefix_hashes=[(0, 1, 2), (0, 1, 3), (0, 4, 5)],
        hash_block_tokens=16,
        prompt_token_ids=[tuple(range(40)), tuple(range(45)), tuple(range(40))],
    )
    out = cap_lengths(tr, max_prompt=20)  # cut inside block 1
    assert out.prompt_len.tolist() == [20, 20, 20]
    h = out.prefix_hashes
    assert h is not None and all(len(x) == 2 and x[0] == 0 for x in h)
    assert h[0][1] == h[1][1] != h[2][1]  # equal original block => equal truncated block
    assert min(h[0][1], h[2][1]) > 5  # fresh ids, no clash with existing ones
    assert out.prompt_token_ids == [tuple(range(20))] * 3
    assert cap_lengths(tr, max_prompt=32).prefix_hashes == [(0, 1), (0, 1), (0, 4)]  # block boundary


@settings(max_examples=30, deadline=None)
@given(max_prompt=st.integers(1, 120), block=st.integers(1, 20), seed=st.integers(0, 100))
def test_cap_keeps_ceil_hash_convention(max_prompt: int, block: int, seed: int) -> None:
    tr = shared_prefix_trace(
        20, 1.0, num_groups=2, prefix_len=50, suffix_dist=Uniform(1, 60), output_dist=Fixed(3),
        hash_block_tokens=block, token_ids=True, vocab_size=100, seed=seed,
    )  # fmt: skip
    out = cap_lengths(tr, max_prompt=max_prompt)
    assert out.prefix_hashes is not None and out.prompt_token_ids is not None
    for i, hs in enumerate(out.prefix_hashes):
        assert len(hs) == -(-int(out.prompt_len[i]) // block)
        assert len(out.prompt_token_ids[i]) == out.prompt_len[i]
    # Equal hash at block k still implies equal tokens through that block (or prompt end).
    owner: dict[int, int] = {}
    for i, hs in enumerate(out.prefix_hashes):
        for k, h in enumerate(hs):
            j = owner.setdefault(h, i)
            end = min((k + 1) * block, int(out.prompt_len[i]))
            assert out.prompt_token_ids[i][:end] == out.prompt_token_ids[j][:end]
