"""End to end through the replica step: LLMEngine.generate == greedy decoding of the dense oracle,
with chunked prefill, prefix-cache hits and preemption by recompute all happening on the way."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from engine.config import EngineConfig  # noqa: E402
from engine.llm_engine import LLMEngine  # noqa: E402
from engine.reference import dense_greedy  # noqa: E402
from engine.sampling import SamplingParams  # noqa: E402
from engine.testing import single_thread, tiny_spec  # noqa: E402
from engine.weights import hf_state_dict_of  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def _prompts(seed: int, lens: list[int], vocab: int = 101) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    # Token 0 is EOS in tiny_spec; keep it out of prompts so stop logic is only exercised on outputs.
    return [torch.randint(1, vocab, (n,), generator=g).tolist() for n in lens]


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_generate_equals_dense_greedy(family: str) -> None:
    spec = tiny_spec(family)
    eng = LLMEngine(
        EngineConfig(
            model=spec,
            device="cpu",
            block_size=4,
            num_kv_blocks=64,
            max_num_batched_tokens=16,
            max_num_seqs=4,
        )
    )
    prompts = _prompts(0, [5, 13, 30, 9, 22])
    prompts.append(prompts[2][:24] + [1, 2, 3])  # shares 6 full blocks with prompt 2
    outs = eng.generate(prompts, SamplingParams(max_tokens=10, ignore_eos=True))
    sd = hf_state_dict_of(eng.runner.model)
    for p, o in zip(prompts, outs, strict=True):
        assert o.output_token_ids == dense_greedy(spec, sd, p, 10)
        assert o.finish_reason == "length"
    assert outs[-1].num_cached_tokens == 24
    eng.kv.check_invariants()
    assert eng.kv.num_used_blocks == 0


def test_preemption_by_recompute_keeps_outputs_exact() -> None:
    spec = tiny_spec("llama")
    # 14 blocks of 4 tokens cannot hold four 12-token prompts growing by 16 tokens each at once.
    eng = LLMEngine(
        EngineConfig(
            model=spec,
            device="cpu",
            block_size=4,
            num_kv_blocks=14,
            max_num_batched_tokens=32,
            max_num_seqs=4,
            enable_prefix_caching=False,
        )
    )
    prompts = _prompts(1, [12, 12, 12, 12])
    outs = eng.generate(prompts, SamplingParams(max_tokens=16, ignore_eos=True))
    sd = hf_state_dict_of(eng.runner.model)
    assert sum(o.num_preemptions for o in outs) > 0, "the test must actually preempt"
    for p, o in zip(prompts, outs, strict=True):
        assert o.output_token_ids == dense_greedy(spec, sd, p, 16)


def test_eos_stops_generation_unless_ignored() -> None:
    spec = tiny_spec("qwen3")
    eng = LLMEngine(EngineConfig(model=spec, device="cpu", block_size=4, num_kv_blocks=64))
    prompt = _prompts(2, [7])[0]
    free_run = eng.generate([prompt], SamplingParams(max_tokens=12, ignore_eos=True))[0].output_token_ids
    stop_at = free_run[3]  # pretend the 4th generated token is a stop token
    out = eng.generate([prompt], SamplingParams(max_tokens=12, stop_token_ids=(stop_at,), ignore_eos=True))[0]
    first = free_run.index(stop_at)
    assert out.output_token_ids == free_run[: first + 1]
    assert out.finish_reason == "stop"


def test_each_request_keeps_its_own_stop_rules() -> None:
    spec = tiny_spec("qwen3")
    eng = LLMEngine(EngineConfig(model=spec, device="cpu", block_size=4, num_kv_blocks=64))
    prompt = _prompts(2, [7])[0]
    free_run = eng.generate([prompt], SamplingParams(max_tokens=12, ignore_eos=True))[0].output_token_ids
    stop_at = free_run[3]
    outs = eng.generate(
        [prompt, prompt],
        [SamplingParams(max_tokens=12, stop_token_ids=(stop_at,), ignore_eos=True),
         SamplingParams(max_tokens=12, ignore_eos=True)],
    )
    assert outs[0].output_token_ids == free_run[: free_run.index(stop_at) + 1]
    assert outs[0].finish_reason == "stop"
    assert outs[1].output_token_ids == free_run and outs[1].finish_reason == "length"


def test_seeded_sampling_is_reproducible_and_batch_independent() -> None:
    spec = tiny_spec("llama")
    eng = LLMEngine(EngineConfig(model=spec, device="cpu", block_size=4, num_kv_blocks=64))
    prompts = _prompts(3, [6, 9, 4])
    sp = SamplingParams(temperature=1.0, top_k=20, top_p=0.9, max_tokens=8, seed=7, ignore_eos=True)
    alone = eng.generate([prompts[1]], sp)[0].output_token_ids
    together = eng.generate(prompts, sp)[1].output_token_ids
    assert alone == together
    other = eng.generate([prompts[1]], SamplingParams(temperature=1.0, max_tokens=8, seed=8, ignore_eos=True))
    assert len(other[0].output_token_ids) == 8


def test_rejects_bad_prompts() -> None:
    eng = LLMEngine(EngineConfig(model=tiny_spec("llama"), device="cpu", block_size=4, num_kv_blocks=16))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        eng.generate([[1, 2, 500]], SamplingParams())
    with pytest.raises(ValueError, match="empty"):
        eng.generate([[]], SamplingParams())
    too_long = eng.generate([[1] * 100], SamplingParams(max_tokens=4))[0]
    assert too_long.finish_reason.startswith("rejected")
