"""Sampling rules: greedy, top-k, nucleus (top-p), seeded generators, and the stop rule."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from engine.sampling import Sampler, SamplingParams, filter_logits, stop_reason  # noqa: E402


def test_greedy_is_argmax_and_touches_no_generator() -> None:
    s = Sampler(torch.device("cpu"), seed=0)
    state = s.generator.get_state().clone()
    logits = torch.tensor([[0.1, 3.0, -1.0], [5.0, 4.0, 4.5]])
    assert s.sample(logits, [SamplingParams(), SamplingParams(top_k=1, temperature=2.0)], [0, 1]) == [1, 0]
    assert torch.equal(s.generator.get_state(), state)


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    kept = filter_logits(probs.log(), top_k=0, top_p=0.8).isfinite()
    assert kept.tolist() == [True, True, False, False]  # 0.5 + 0.3 reaches 0.8
    kept = filter_logits(probs.log(), top_k=0, top_p=0.81).isfinite()
    assert kept.tolist() == [True, True, True, False]
    kept = filter_logits(probs.log(), top_k=0, top_p=0.01).isfinite()
    assert kept.tolist() == [True, False, False, False]  # the top token always stays


def test_top_k_keeps_k_best() -> None:
    logits = torch.tensor([1.0, 5.0, 3.0, 4.0, 2.0])
    assert filter_logits(logits, top_k=2, top_p=1.0).isfinite().tolist() == [False, True, False, True, False]


@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_samples_stay_inside_top_k(k: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 12, generator=g)
    s = Sampler(torch.device("cpu"), seed=seed)
    p = SamplingParams(temperature=1.5, top_k=k)
    toks = s.sample(logits, [p] * 3, [0, 1, 2])
    for row, t in zip(logits, toks, strict=True):
        assert t in torch.topk(row, k).indices.tolist()


def test_seeded_requests_reproduce_and_differ_by_seed() -> None:
    logits = torch.zeros(1, 1000)  # uniform: any two independent draws almost surely differ somewhere
    draws = {}
    for seed in (1, 1, 2):
        s = Sampler(torch.device("cpu"), seed=99)
        p = SamplingParams(temperature=1.0, seed=seed)
        draws.setdefault(seed, []).append([s.sample(logits, [p], [7])[0] for _ in range(20)])
    assert draws[1][0] == draws[1][1]
    assert draws[1][0] != draws[2][0]


def test_temperature_sampling_follows_the_distribution() -> None:
    s = Sampler(torch.device("cpu"), seed=3)
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    p = SamplingParams(temperature=1.0)
    n = 3000
    counts = torch.bincount(torch.tensor([s.sample(logits, [p], [0])[0] for _ in range(n)]), minlength=3)
    expect = logits[0].softmax(-1) * n
    # 5 standard deviations of a binomial count: fails only if sampling is actually wrong.
    sd = (expect * (1 - expect / n)).sqrt()
    assert ((counts - expect).abs() < 5 * sd).all(), (counts, expect)


def test_stop_reason() -> None:
    p = SamplingParams(max_tokens=3, stop_token_ids=(9,))
    assert stop_reason(p, 2, 1, eos_token_ids=(2,)) == "eos"
    assert stop_reason(SamplingParams(ignore_eos=True), 2, 1, eos_token_ids=(2,)) is None
    assert stop_reason(p, 9, 1, eos_token_ids=(2,)) == "stop"
    assert stop_reason(p, 5, 3, eos_token_ids=(2,)) == "length"
    assert stop_reason(p, 5, 2, eos_token_ids=(2,)) is None


@pytest.mark.parametrize(
    "bad", [dict(temperature=-1.0), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5), dict(max_tokens=0)]
)
def test_invalid_params_are_rejected(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        SamplingParams(**bad)
