"""The engine's overlapped loop (EngineConfig.async_scheduling) on CPU: step n+1 is launched with
step n's sampled ids still PENDING on the host, so they must reach it through the runner's device
buffer. Outputs must equal the dense oracle's greedy decoding, with chunked prefill, prefix hits,
preemption and stop ids on the way, and a trace replay must serve every request in full."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine.config import EngineConfig  # noqa: E402
from engine.llm_engine import LLMEngine  # noqa: E402
from engine.reference import dense_greedy  # noqa: E402
from engine.sampling import SamplingParams  # noqa: E402
from engine.testing import single_thread, tiny_spec  # noqa: E402
from engine.weights import hf_state_dict_of  # noqa: E402
from traces.schema import Trace  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def _engine(blocks: int, caching: bool = True, **kw) -> LLMEngine:
    return LLMEngine(
        EngineConfig(
            model=tiny_spec("llama"), device="cpu", block_size=4, num_kv_blocks=blocks,
            max_num_batched_tokens=16, max_num_seqs=4, enable_prefix_caching=caching,
            async_scheduling="all", **kw,
        )  # fmt: skip
    )


def _prompts(seed: int, lens: list[int]) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 101, (n,), generator=g).tolist() for n in lens]


def test_async_generate_equals_dense_greedy_with_prefix_hits() -> None:
    eng = _engine(64)
    prompts = _prompts(0, [5, 13, 30, 9, 22])
    prompts.append(prompts[2][:24] + [1, 2, 3])  # shares 6 full blocks with prompt 2
    outs = eng.generate(prompts, SamplingParams(max_tokens=10, ignore_eos=True))
    sd = hf_state_dict_of(eng.runner.model)
    for p, o in zip(prompts, outs, strict=True):
        assert o.output_token_ids == dense_greedy(eng.spec, sd, p, 10)
    assert outs[-1].num_cached_tokens == 24
    eng.kv.check_invariants()
    assert eng.kv.num_used_blocks == 0


def test_async_generate_with_preemption_and_stops() -> None:
    eng = _engine(14, caching=False)  # too small for four 12-token prompts growing by 16 each
    prompts = _prompts(1, [12, 12, 12, 12])
    sd = hf_state_dict_of(eng.runner.model)
    free = [dense_greedy(eng.spec, sd, p, 16) for p in prompts]
    outs = eng.generate(prompts, SamplingParams(max_tokens=16, ignore_eos=True))
    assert sum(o.num_preemptions for o in outs) > 0, "the test must actually preempt"
    assert [o.output_token_ids for o in outs] == free
    # Stop ids that fire mid-run, while the next step of that request is already in flight.
    params = [SamplingParams(max_tokens=16, stop_token_ids=(f[k],), ignore_eos=True) for f, k in
              zip(free, (2, 5, 0, 9), strict=True)]  # fmt: skip
    outs = eng.generate(prompts, params)
    for f, p, o in zip(free, params, outs, strict=True):
        cut = f.index(p.stop_token_ids[0]) + 1
        assert o.output_token_ids == f[:cut] and o.finish_reason == "stop"
    eng.kv.check_invariants()
    assert eng.kv.num_used_blocks == 0


def test_async_replay_serves_every_request_in_full() -> None:
    trace = Trace(
        arrival=np.array([0.0, 0.0, 0.01, 0.02, 5.0, 5.0]),
        prompt_len=np.array([20, 24, 9, 33, 20, 8]),
        output_len=np.array([4, 7, 1, 3, 5, 2]),
        prefix_hashes=[(11, 12), (11, 12, 13), (), (21, 22, 23, 24), (11, 12), ()],
        hash_block_tokens=8,
        name="tiny",
    )
    eng = _engine(80)
    res = eng.replay(trace)
    req = res.requests
    assert list(req["status"]) == ["finished"] * 6
    assert req["output_tokens"].tolist() == [4, 7, 1, 3, 5, 2]
    assert (req["first_token"] >= req["arrival"]).all() and (req["finish"] >= req["first_token"]).all()
    assert req["cached_tokens"][4] == 16
    assert len(res.iterations["start"]) == res.meta["iterations"] > 0
    assert (np.diff(res.iterations["end"]) >= 0).all()
    eng.kv.check_invariants()
    eng.reset_kv()
    log: list = []
    res = eng.replay(trace, step_log=log)
    assert len(log) == res.meta["iterations"]  # one per iteration: its shape and its period
    assert all(t.execute_s > 0 and t.schedule_s == 0 == t.complete_s for t in log)
    assert sum(t.num_tokens for t in (x.as_sample().shape for x in log)) == sum(
        int(p) + int(o) - 1 for p, o in zip(trace.prompt_len, trace.output_len, strict=True)
    ) - int(res.requests["cached_tokens"].sum())  # every computed token was logged once


def test_graphs_mode_runs_eager_steps_one_at_a_time() -> None:
    """On CPU every step is eager, so "graphs" collects the step in flight before each launch: no
    id is ever pending at a launch, and the outputs are the oracle's."""
    eng = _engine(64)
    eng.config.async_scheduling = "graphs"
    launch = eng.runner.launch
    pending_at_launch = []

    def spy(batch):
        pending_at_launch.append(sum(s.num_pending for s in batch.seqs))
        return launch(batch)

    eng.runner.launch = spy  # type: ignore[method-assign]
    prompts = _prompts(4, [7, 19, 3])
    outs = eng.generate(prompts, SamplingParams(max_tokens=6, ignore_eos=True))
    sd = hf_state_dict_of(eng.runner.model)
    assert [o.output_token_ids for o in outs] == [dense_greedy(eng.spec, sd, p, 6) for p in prompts]
    assert pending_at_launch and not any(pending_at_launch)
