"""Trace replay through the real engine: exact output lengths, trace prefix sharing turned into
real prefix-cache hits, and a RunResult in the simulator's format."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine.llm_engine import LLMEngine, synthesize_prompt  # noqa: E402
from engine.testing import single_thread, tiny_engine_config  # noqa: E402
from traces.schema import Request, Trace  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def _trace() -> Trace:
    return Trace(
        arrival=np.array([0.0, 0.0, 0.01, 0.02, 5.0, 5.0]),  # a 5 s idle gap the replay must skip
        prompt_len=np.array([20, 24, 9, 33, 20, 8]),
        output_len=np.array([4, 7, 1, 3, 5, 2]),
        prefix_hashes=[(11, 12), (11, 12, 13), (), (21, 22, 23, 24), (11, 12), ()],
        hash_block_tokens=8,
        name="tiny",
    )


def test_replay_serves_every_request_with_its_trace_lengths() -> None:
    eng = LLMEngine(tiny_engine_config(num_kv_blocks=80, max_num_batched_tokens=24, max_num_seqs=4))
    res = eng.replay(_trace())
    req = res.requests
    assert list(req["status"]) == ["finished"] * 6
    assert req["output_tokens"].tolist() == [4, 7, 1, 3, 5, 2]
    assert req["prompt_tokens"].tolist() == [20, 24, 9, 33, 20, 8]
    assert (req["first_token"] >= req["arrival"]).all() and (req["finish"] >= req["first_token"]).all()
    # Request 4 arrives after the idle gap and shares request 0's two hashed trace blocks (16
    # tokens): the engine's content-hash cache must hit them. Request 1 shares them too but is
    # admitted in the same step as request 0, before those blocks hold KV, so it may miss.
    assert req["cached_tokens"][4] == 16
    assert req["cached_tokens"][1] in (0, 16)
    assert res.meta["kind"] == "engine" and res.meta["num_kv_blocks"] == 80
    assert res.meta["idle_skipped_seconds"] > 4.0  # the gap was skipped, not slept through
    assert len(res.iterations["start"]) == res.meta["iterations"] > 0
    eng.kv.check_invariants()


def test_step_log_times_every_iteration_and_keeps_the_clock() -> None:
    eng = LLMEngine(tiny_engine_config(num_kv_blocks=80, max_num_batched_tokens=24, max_num_seqs=4))
    log: list = []
    res = eng.replay(_trace(), step_log=log)
    it = res.iterations
    assert len(log) == len(it["start"]) == res.meta["iterations"]
    for t, i in zip(log, range(len(log))):
        # The shape is the one the iteration ran: its prefill and decode token counts.
        assert sum(n for n, _ in t.prefill) == it["prefill_tokens"][i]
        assert t.num_decode == it["decode_tokens"][i]
        assert t.schedule_s > 0 and t.execute_s > 0 and t.complete_s > 0
        # The engine stamps an iteration from the loop top to the end of the step.
        assert it["end"][i] - it["start"][i] == pytest.approx(t.schedule_s + t.execute_s, rel=1e-6, abs=1e-6)
    # The next iteration starts when this one's bookkeeping phase ends (back to back), or later
    # when the replica went idle until an arrival.
    gaps = np.diff(it["start"]) - (it["end"][:-1] - it["start"][:-1])
    phase = np.array([t.complete_s for t in log[:-1]])
    assert (gaps >= phase - 1e-6).all()
    assert (np.abs(gaps - phase) < 2e-4).mean() > 0.5
    eng.reset_kv()
    assert eng.kv.num_used_blocks == 0


def test_synthesized_prompts_share_exactly_the_hashed_prefix() -> None:
    a = Request(id=0, arrival=0, prompt_len=20, output_len=1, prefix_hashes=(1, 2, 3), hash_block_tokens=8)
    b = Request(id=1, arrival=0, prompt_len=30, output_len=1, prefix_hashes=(1, 2, 4, 5), hash_block_tokens=8)
    c = Request(id=2, arrival=0, prompt_len=20, output_len=1)
    ta, tb, tc = (synthesize_prompt(r, 1000) for r in (a, b, c))
    assert len(ta) == 20 and len(tb) == 30 and len(tc) == 20
    assert ta[:16] == tb[:16] and ta[16:20] != tb[16:20]
    assert ta[:8] != tc[:8]
    assert synthesize_prompt(a, 1000) == ta  # deterministic
    given = Request(id=3, arrival=0, prompt_len=3, output_len=1, prompt_token_ids=(5, 6, 7))
    assert synthesize_prompt(given, 1000) == [5, 6, 7]
