"""The paged, packed engine against the dense reference forward, on CPU in float32.

Every way a token can be computed (whole prefill, chunk by chunk, after a prefix-cache hit,
as a decode, mixed with other sequences in one step) must give the logits that a plain
full-sequence causal forward gives for that position.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from engine.config import EngineConfig  # noqa: E402
from engine.model_runner import ModelRunner  # noqa: E402
from engine.reference import dense_logits  # noqa: E402
from engine.testing import (  # noqa: E402
    StepDriver,
    make_seq,
    single_thread,  # noqa: E402
    tiny_spec,
)
from engine.weights import hf_state_dict_of  # noqa: E402

FAMILIES = ["llama", "qwen2", "qwen3"]
ATOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def _runner(family: str, block_size: int = 4, num_blocks: int = 96, **spec_kw) -> ModelRunner:
    spec = tiny_spec(family, **spec_kw)
    return ModelRunner(
        EngineConfig(model=spec, device="cpu", block_size=block_size, num_kv_blocks=num_blocks, seed=1234)
    )


@pytest.fixture(scope="module", params=FAMILIES)
def runner(request) -> ModelRunner:
    return _runner(request.param)


def _prompt(n: int, seed: int, vocab: int = 101) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=g).tolist()


def _ref(runner: ModelRunner, ids: list[int]) -> torch.Tensor:
    return dense_logits(runner.spec, hf_state_dict_of(runner.model), ids)


def test_full_prefill_matches_dense(runner: ModelRunner) -> None:
    prompt = _prompt(23, 0)
    drv = StepDriver(runner)
    seq = make_seq(0, prompt)
    logits = drv.step([(seq, len(prompt))])
    torch.testing.assert_close(logits, _ref(runner, prompt), atol=ATOL, rtol=1e-4)


def test_chunked_prefill_matches_dense(runner: ModelRunner) -> None:
    prompt = _prompt(30, 1)
    drv = StepDriver(runner)
    seq = make_seq(0, prompt)
    ref = _ref(runner, prompt)
    start = 0
    for n in (7, 1, 12, 10):  # chunks that start and end mid-block
        got = drv.step([(seq, n)])
        torch.testing.assert_close(got, ref[start : start + n], atol=ATOL, rtol=1e-4)
        start += n
    assert start == len(prompt)


def test_prefix_cache_hit_reuses_blocks(runner: ModelRunner) -> None:
    drv = StepDriver(runner)
    shared = _prompt(17, 2)
    a = make_seq(0, shared + _prompt(5, 3))
    drv.step([(a, a.num_tokens)])
    b = make_seq(1, shared + _prompt(9, 4))
    hit = drv.admit(b)
    assert hit == 16  # four full blocks of 4 tokens are shared (token 17 is in a partial block)
    assert b.block_table[:4] == a.block_table[:4]
    got = drv.step([(b, b.num_tokens - hit)])
    ref = _ref(runner, b.token_ids)
    torch.testing.assert_close(got, ref[hit:], atol=ATOL, rtol=1e-4)


def test_decode_steps_match_dense(runner: ModelRunner) -> None:
    drv = StepDriver(runner)
    prompt = _prompt(11, 5)
    seq = make_seq(0, prompt)
    logits = drv.step([(seq, len(prompt))])
    for _ in range(6):  # crosses two block boundaries at block_size 4
        tok = int(logits[-1].argmax())
        drv.append(seq, tok)
        logits = drv.step([(seq, 1)])
        ref = _ref(runner, seq.token_ids)[-1:]
        torch.testing.assert_close(logits, ref, atol=ATOL, rtol=1e-4)


def test_mixed_step_of_prefill_chunk_prefix_hit_and_decode(runner: ModelRunner) -> None:
    drv = StepDriver(runner)
    base = _prompt(12, 6)
    d = make_seq(0, base)  # will decode
    drv.step([(d, d.num_tokens)])
    drv.append(d, 7)
    c = make_seq(1, _prompt(20, 7))  # will be mid-prefill
    drv.step([(c, 9)])
    h = make_seq(2, base[:8] + _prompt(6, 8))  # prefix hit on d's first two blocks
    hit = drv.admit(h)
    assert hit == 8
    f = make_seq(3, _prompt(5, 9))  # a fresh whole prefill
    got = drv.step([(d, 1), (c, 6), (h, h.num_tokens - hit), (f, 5)])
    want = torch.cat(
        [
            _ref(runner, d.token_ids)[-1:],
            _ref(runner, c.token_ids)[9:15],
            _ref(runner, h.token_ids)[hit:],
            _ref(runner, f.token_ids),
        ]
    )
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    block_size=st.sampled_from([1, 3, 8, 16]),
    cuts=st.lists(st.integers(1, 9), min_size=1, max_size=6),
    prompt_len=st.integers(2, 40),
)
def test_logits_do_not_depend_on_chunking_or_block_size(
    block_size: int, cuts: list[int], prompt_len: int
) -> None:
    runner = _CHUNK_RUNNERS.setdefault(block_size, _runner("qwen3", block_size=block_size, num_blocks=48))
    prompt = _prompt(prompt_len, prompt_len)
    drv = StepDriver(runner, enable_prefix_caching=False)
    seq = make_seq(0, prompt)
    got = []
    left = prompt_len
    i = 0
    while left:
        n = min(left, cuts[i % len(cuts)])
        got.append(drv.step([(seq, n)]))
        left -= n
        i += 1
    torch.testing.assert_close(torch.cat(got), _ref(runner, prompt), atol=ATOL, rtol=1e-4)


_CHUNK_RUNNERS: dict[int, ModelRunner] = {}


def test_kv_written_to_the_slots_of_the_block_table() -> None:
    runner = _runner("llama", block_size=4, num_blocks=16)
    drv = StepDriver(runner)
    seq = make_seq(0, _prompt(6, 10))
    drv.step([(seq, 6)])
    k = runner.kv.k[0]  # layer 0, [blocks + 1, block_size, kv_heads, head_dim]
    written = {(b, o) for b in range(k.shape[0]) for o in range(4) if k[b, o].abs().sum() > 0}
    expect = {(seq.block_table[p // 4], p % 4) for p in range(6)}
    assert written == expect


def test_rejects_positions_past_max_model_len() -> None:
    spec = tiny_spec("llama")
    r = ModelRunner(EngineConfig(model=spec, device="cpu", block_size=4, num_kv_blocks=16, max_model_len=8))
    drv = StepDriver(r)
    seq = make_seq(0, _prompt(10, 11))
    with pytest.raises(ValueError, match="max_model_len"):
        drv.step([(seq, 10)])


def test_sequence_without_token_ids_is_an_error() -> None:
    from policies.scheduling.batch import ScheduledBatch
    from policies.sequence import Sequence
    from traces.schema import Request

    r = _runner("llama", num_blocks=8)
    seq = Sequence(Request(id=0, arrival=0.0, prompt_len=4, output_len=2))
    with pytest.raises(ValueError, match="no token ids"):
        r.execute(ScheduledBatch([seq], [4]))
