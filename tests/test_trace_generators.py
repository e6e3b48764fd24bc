"""Synthetic workload generators: arrival statistics, length distributions, shared-prefix hashes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from traces.generators import (
    Empirical,
    EmpiricalPairs,
    Fixed,
    LogNormal,
    Uniform,
    gamma_arrivals,
    poisson_arrivals,
    shared_prefix_trace,
    synthetic_trace,
)
from traces.schema import Trace

N = 20_000


def _rate_and_cv(a: np.ndarray) -> tuple[float, float]:
    gaps = np.diff(a)
    return 1.0 / gaps.mean(), gaps.std() / gaps.mean()


def test_poisson_rate_and_exponential_gaps() -> None:
    a = poisson_arrivals(N, rate=8.0, seed=1)
    assert a[0] == 0.0 and np.all(np.diff(a) >= 0) and len(a) == N
    rate, cv = _rate_and_cv(a)
    assert rate == pytest.approx(8.0, rel=0.03)
    assert cv == pytest.approx(1.0, abs=0.03)
    # Gaps are exponential with mean 1/rate (KS test; p-value is not tiny for the right law).
    assert stats.kstest(np.diff(a), stats.expon(scale=1 / 8.0).cdf).pvalue > 1e-3


@pytest.mark.parametrize("burstiness", [0.25, 0.5, 1.0, 2.0, 4.0])
def test_gamma_cv_matches_vllm_burstiness(burstiness: float) -> None:
    a = gamma_arrivals(N, rate=5.0, burstiness=burstiness, seed=7)
    rate, cv = _rate_and_cv(a)
    assert rate == pytest.approx(5.0, rel=0.04)
    assert cv == pytest.approx(1 / math.sqrt(burstiness), rel=0.05)
    law = stats.gamma(a=burstiness, scale=1 / (5.0 * burstiness))
    assert stats.kstest(np.diff(a), law.cdf).pvalue > 1e-3


def test_arrivals_deterministic_and_edge_cases() -> None:
    np.testing.assert_array_equal(
        gamma_arrivals(100, 3.0, 0.5, seed=4), gamma_arrivals(100, 3.0, 0.5, seed=4)
    )
    assert not np.array_equal(gamma_arrivals(100, 3.0, 0.5, seed=4), gamma_arrivals(100, 3.0, 0.5, seed=5))
    # Poisson is burstiness 1, same random stream.
    np.testing.assert_array_equal(poisson_arrivals(50, 2.0, seed=3), gamma_arrivals(50, 2.0, 1.0, seed=3))
    assert gamma_arrivals(5, math.inf).tolist() == [0.0] * 5
    assert len(gamma_arrivals(0, 1.0)) == 0 and gamma_arrivals(1, 1.0).tolist() == [0.0]
    for bad in ({"rate": 0.0}, {"rate": -1.0}, {"burstiness": 0.0}, {"burstiness": math.inf}):
        kw = {"rate": 1.0, "burstiness": 1.0, **bad}
        with pytest.raises(ValueError):
            gamma_arrivals(10, **kw)


def test_length_distributions() -> None:
    rng = np.random.default_rng(0)
    assert Fixed(17).sample(5, rng).tolist() == [17] * 5
    u = Uniform(3, 6).sample(N, rng)
    assert set(np.unique(u).tolist()) == {3, 4, 5, 6}
    assert u.mean() == pytest.approx(4.5, rel=0.02)
    by_median = LogNormal(sigma=1.0, median=300).sample(N, rng)
    assert np.median(by_median) == pytest.approx(300, rel=0.05)
    by_mean = LogNormal(sigma=0.5, mean=1000).sample(N, rng)
    assert by_mean.mean() == pytest.approx(1000, rel=0.03)
    capped = LogNormal(sigma=2.0, median=50, max_len=200).sample(N, rng)
    assert capped.min() >= 1 and capped.max() == 200
    for make in (
        lambda: Fixed(0),
        lambda: Uniform(5, 4),
        lambda: LogNormal(1.0),
        lambda: LogNormal(1.0, 5, 5),
    ):
        with pytest.raises(ValueError):
            make()


def test_empirical_resampling_is_joint() -> None:
    src = Trace(arrival=[0, 1, 2], prompt_len=[10, 200, 3000], output_len=[1, 20, 300])
    p, o = EmpiricalPairs.from_trace(src).sample_pairs(1000, np.random.default_rng(2))
    pairs = set(zip(p.tolist(), o.tolist(), strict=True))
    assert pairs == {(10, 1), (200, 20), (3000, 300)}
    marg = Empirical.from_trace(src, "output_len").sample(100, np.random.default_rng(2))
    assert set(marg.tolist()) <= {1, 20, 300}
    with pytest.raises(ValueError):
        Empirical.from_trace(src, "arrival")


def test_synthetic_trace_seeded_and_streams_independent() -> None:
    a = synthetic_trace(500, 4.0, Uniform(10, 100), Fixed(8), burstiness=0.5, seed=11)
    b = synthetic_trace(500, 4.0, Uniform(10, 100), Fixed(8), burstiness=0.5, seed=11)
    c = synthetic_trace(500, 4.0, LogNormal(1.0, median=50), Fixed(8), burstiness=0.5, seed=11)
    assert list(a) == list(b)
    np.testing.assert_array_equal(a.arrival, c.arrival)  # lengths drawn from separate streams
    assert a.output_len.tolist() == [8] * 500 and 10 <= a.prompt_len.min() and a.prompt_len.max() <= 100
    assert a.meta["burstiness"] == 0.5 and a.meta["seed"] == 11
    src = Trace(arrival=[0, 1], prompt_len=[5, 7], output_len=[50, 70])
    j = synthetic_trace(200, 1.0, EmpiricalPairs.from_trace(src), seed=0)
    assert set(zip(j.prompt_len.tolist(), j.output_len.tolist(), strict=True)) <= {(5, 50), (7, 70)}
    with pytest.raises(ValueError, match="output_dist is required"):
        synthetic_trace(10, 1.0, Fixed(5))


def _check_prefix_trace(tr: Trace, prefix_len: int, block: int) -> None:
    assert tr.prefix_hashes is not None and tr.hash_block_tokens == block
    first_seen: dict[int, int] = {}
    for i, hs in enumerate(tr.prefix_hashes):
        assert len(hs) == -(-int(tr.prompt_len[i]) // block)  # ceil convention, as Mooncake
        for k, h in enumerate(hs):
            first_seen.setdefault(h, i)
            j = first_seen[h]
            if j != i:  # shared id: must be a whole block inside the shared prefix
                assert (k + 1) * block <= prefix_len
                assert tr.prefix_hashes[j][: k + 1] == hs[: k + 1]  # chained: equal id => equal prefix
                if tr.prompt_token_ids is not None:
                    end = (k + 1) * block
                    assert tr.prompt_token_ids[i][:end] == tr.prompt_token_ids[j][:end]
    ids = sorted(first_seen)
    assert ids == list(range(len(ids)))  # numbered in order of first appearance, no gaps


@settings(max_examples=25, deadline=None)
@given(
    groups=st.integers(1, 5),
    prefix_len=st.integers(0, 100),
    block=st.integers(1, 32),
    seed=st.integers(0, 1000),
)
def test_shared_prefix_hash_invariants(groups: int, prefix_len: int, block: int, seed: int) -> None:
    tr = shared_prefix_trace(
        30, 2.0, num_groups=groups, prefix_len=prefix_len, suffix_dist=Uniform(1, 50), output_dist=Fixed(4),
        hash_block_tokens=block, token_ids=True, vocab_size=1000, seed=seed,
    )  # fmt: skip
    _check_prefix_trace(tr, prefix_len, block)
    assert tr.prompt_token_ids is not None
    assert [len(t) for t in tr.prompt_token_ids] == tr.prompt_len.tolist()
    assert min(min(t) for t in tr.prompt_token_ids) >= 0 and max(max(t) for t in tr.prompt_token_ids) < 1000


def test_shared_prefix_groups_and_weights() -> None:
    tr = shared_prefix_trace(
        3000, 10.0, num_groups=3, prefix_len=64, suffix_dist=Fixed(16), output_dist=Fixed(2),
        hash_block_tokens=16, group_weights=[0.6, 0.3, 0.1], seed=5,
    )  # fmt: skip
    assert tr.prefix_hashes is not None and tr.prompt_token_ids is None
    heads = [hs[:4] for hs in tr.prefix_hashes]
    distinct = {h: heads.count(h) / len(heads) for h in set(heads)}
    assert len(distinct) == 3
    assert sorted(distinct.values()) == pytest.approx([0.1, 0.3, 0.6], abs=0.03)
    assert len({hs[4] for hs in tr.prefix_hashes}) == 3000  # suffix blocks are unique
    again = shared_prefix_trace(
        3000, 10.0, num_groups=3, prefix_len=64, suffix_dist=Fixed(16), output_dist=Fixed(2),
        hash_block_tokens=16, group_weights=[0.6, 0.3, 0.1], seed=5,
    )  # fmt: skip
    assert again.prefix_hashes == tr.prefix_hashes
    with pytest.raises(ValueError, match="group_weights"):
        shared_prefix_trace(
            10,
            1.0,
            num_groups=2,
            prefix_len=8,
            suffix_dist=Fixed(1),
            output_dist=Fixed(1),
            group_weights=[1.0],
        )
