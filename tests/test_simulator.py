"""Simulator: a hand-computed timeline, determinism, the decode-jump equivalence, and that
every request ends finished or rejected with a reason."""

from __future__ import annotations

import numpy as np
import pytest

from backends.cost_model import ParallelLayout
from sim.config import SimConfig
from sim.simulator import simulate
from traces.schema import Trace


def random_trace(n: int, rate: float, seed: int = 0, max_prompt: int = 600, max_out: int = 300) -> Trace:
    rng = np.random.default_rng(seed)
    return Trace(
        np.cumsum(rng.exponential(1 / rate, n)), rng.integers(1, max_prompt, n), rng.integers(1, max_out, n)
    )


def test_hand_computed_timeline(linear_cost):
    # fixed 10 ms + 1 ms per token, no context term.
    tr = Trace(arrival=[0.0, 0.05], prompt_len=[100, 50], output_len=[3, 2])
    r = simulate(tr, SimConfig(num_kv_blocks=100), linear_cost)
    q = r.requests
    # it1: prefill 100 -> 0.110 (req0 token 1). it2: decode req0 + prefill 50 = 51 tokens
    # -> 0.171 (req0 token 2, req1 token 1). it3: two decodes -> 0.183 (both finish).
    assert q["first_token"] == pytest.approx([0.110, 0.171])
    assert q["finish"] == pytest.approx([0.183, 0.183])
    assert q["first_scheduled"] == pytest.approx([0.0, 0.110])
    assert list(q["status"]) == ["finished", "finished"]
    assert r.itl.n == 3  # req0: 2 gaps, req1: 1 gap
    assert r.itl.total == pytest.approx((0.171 - 0.110) + (0.183 - 0.171) + (0.183 - 0.171))
    assert r.meta["iterations"] == 3


@pytest.mark.parametrize(
    ("pp", "rate", "blocks"), [(1, 2.0, 2000), (2, 2.0, 2000), (2, 6.0, 150), (3, 3.0, 2000), (4, 1.0, 300)]
)
def test_jump_gives_the_same_timeline(linear_cost, pp, rate, blocks):
    linear_cost.per_ctx = 1e-6
    linear_cost.layout = ParallelLayout(1, pp)
    tr = random_trace(400, rate=rate, seed=pp)
    cfg = dict(num_kv_blocks=blocks, max_num_batched_tokens=256, num_replicas=2, router="least-work", pp=pp)
    a = simulate(tr, SimConfig(jump=False, **cfg), linear_cost)
    b = simulate(tr, SimConfig(jump=True, **cfg), linear_cost)
    for k in ("first_scheduled", "first_token", "finish"):
        np.testing.assert_allclose(a.requests[k], b.requests[k], rtol=0, atol=1e-9)
    assert np.array_equal(a.requests["replica"], b.requests["replica"])
    assert a.meta["iterations"] == b.meta["iterations"]
    np.testing.assert_array_equal(a.requests["preemptions"], b.requests["preemptions"])
    assert a.itl.n == b.itl.n and a.itl.total == pytest.approx(b.itl.total, rel=1e-9)
    assert len(b.iterations["start"]) < len(a.iterations["start"])  # it did jump


def test_jump_respects_kv_limit(linear_cost):
    # A small pool forces decode runs to stop where blocks run out, and preemptions follow.
    tr = random_trace(200, rate=5.0, seed=3, max_prompt=200, max_out=400)
    cfg = dict(num_kv_blocks=120, block_size=16, max_num_batched_tokens=512)
    a = simulate(tr, SimConfig(jump=False, **cfg), linear_cost)
    b = simulate(tr, SimConfig(jump=True, **cfg), linear_cost)
    assert a.requests["preemptions"].sum() > 0
    np.testing.assert_allclose(a.requests["finish"], b.requests["finish"], atol=1e-9)
    np.testing.assert_array_equal(a.requests["preemptions"], b.requests["preemptions"])


def test_deterministic(linear_cost):
    tr = random_trace(300, rate=4.0)
    cfg = SimConfig(num_kv_blocks=500, num_replicas=3, router="least-work", seed=7)
    a, b = simulate(tr, cfg, linear_cost), simulate(tr, cfg, linear_cost)
    for k in a.requests:
        np.testing.assert_array_equal(a.requests[k], b.requests[k])


def test_every_request_finishes_or_is_rejected(linear_cost):
    tr = Trace(arrival=[0, 0.1, 0.2, 0.3], prompt_len=[10, 5000, 20, 30], output_len=[5, 5, 9000, 3])
    r = simulate(tr, SimConfig(num_kv_blocks=64, block_size=16, max_model_len=4096), linear_cost)
    st = list(r.requests["status"])
    assert st == ["finished", "rejected", "rejected", "finished"]
    assert "max_model_len" in r.requests["reject_reason"][1]
    assert (r.requests["output_tokens"][[0, 3]] == [5, 3]).all()


def test_horizon_reports_unfinished(linear_cost):
    tr = random_trace(50, rate=20.0)
    r = simulate(tr, SimConfig(num_kv_blocks=500, horizon=0.5), linear_cost)
    st = r.requests["status"]
    assert (st == "unfinished").sum() > 0
    assert set(st) <= {"finished", "unfinished"}


def test_prefix_caching_skips_prefill(linear_cost):
    h = tuple(range(4))
    tr = Trace(arrival=[0.0, 10.0], prompt_len=[2048, 2048], output_len=[2, 2],
               prefix_hashes=[h, h], hash_block_tokens=512)
    on = simulate(tr, SimConfig(num_kv_blocks=400), linear_cost)
    off = simulate(tr, SimConfig(num_kv_blocks=400, enable_prefix_caching=False), linear_cost)
    assert on.requests["cached_tokens"][1] == 2047 // 16 * 16
    ttft_on = on.requests["first_token"][1] - 10.0
    ttft_off = off.requests["first_token"][1] - 10.0
    assert ttft_on < ttft_off / 10


def test_analytic_model_runs_the_bundled_trace():
    from traces.loaders import default_trace_path, load_trace

    tr = load_trace(default_trace_path())
    r = simulate(tr, SimConfig())
    assert (r.requests["status"] == "finished").all()
    assert r.meta["cost_model"] == "analytic"
