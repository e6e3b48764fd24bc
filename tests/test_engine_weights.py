"""Weight loading: Hugging Face directories (and their error messages), the GGUF q/k permutation,
and the engine's model against `transformers`' own implementation of each family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from engine.config import EngineConfig  # noqa: E402
from engine.model_runner import ModelRunner  # noqa: E402
from engine.testing import (  # noqa: E402
    StepDriver,
    make_seq,
    single_thread,  # noqa: E402
    tiny_spec,
)
from engine.weights import hf_state_dict_of, save_hf_dir, unpermute_rope_rows  # noqa: E402

TINY_HF = {
    "llama": {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 101,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 4.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        "bos_token_id": 1,
        "eos_token_id": 2,
    },
    "qwen2": {
        "model_type": "qwen2",
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 101,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "use_sliding_window": False,
        "eos_token_id": 2,
    },
    "qwen3": {
        "model_type": "qwen3",
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "vocab_size": 101,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
        "attention_bias": False,
        "eos_token_id": [2, 3],
    },
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def _cpu(model, **kw) -> ModelRunner:
    return ModelRunner(EngineConfig(model=model, device="cpu", block_size=4, num_kv_blocks=32, **kw))


def test_hf_dir_roundtrip_gives_identical_logits(tmp_path: Path) -> None:
    src = _cpu(tiny_spec("qwen2"))
    save_hf_dir(
        tmp_path, dict(TINY_HF["qwen2"], rms_norm_eps=1e-5, rope_theta=10000.0), hf_state_dict_of(src.model)
    )
    dst = _cpu(str(tmp_path))
    assert dst.spec.qkv_bias and dst.spec.eos_token_ids == (2,)
    prompt = list(range(3, 20))
    a = StepDriver(src).step([(make_seq(0, prompt), len(prompt))])
    b = StepDriver(dst).step([(make_seq(0, prompt), len(prompt))])
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_missing_config_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        _cpu(str(tmp_path))


def test_malformed_config_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{\n "model_type": "llama",\n "hidden_size": ,\n}')
    with pytest.raises(ValueError, match=r"config.json:3"):
        _cpu(str(tmp_path))


def test_config_missing_field_is_named(tmp_path: Path) -> None:
    cfg = dict(TINY_HF["llama"])
    del cfg["intermediate_size"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="intermediate_size"):
        _cpu(str(tmp_path))


def test_no_safetensors_is_reported(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(TINY_HF["llama"]))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors.*pytorch_model.bin"):
        _cpu(str(tmp_path))


def test_corrupt_safetensors_is_reported(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(TINY_HF["llama"]))
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="model.safetensors"):
        _cpu(str(tmp_path))


def test_missing_and_misshapen_tensors_are_reported(tmp_path: Path) -> None:
    sd = hf_state_dict_of(_cpu(tiny_spec("llama")).model)
    cfg = dict(TINY_HF["llama"])
    gone = dict(sd)
    del gone["model.layers.1.mlp.up_proj.weight"]
    save_hf_dir(tmp_path / "a", cfg, gone)
    with pytest.raises(ValueError, match=r"missing or incomplete.*layers\.1\.mlp\.gate_up_proj"):
        _cpu(str(tmp_path / "a"))
    bad = dict(sd)
    bad["model.norm.weight"] = torch.ones(63)
    save_hf_dir(tmp_path / "b", cfg, bad)
    with pytest.raises(ValueError, match=r"model.norm.weight.*shape \(63,\), expected \(64,\)"):
        _cpu(str(tmp_path / "b"))
    extra = dict(sd)
    extra["model.layers.7.mlp.up_proj.weight"] = torch.ones(96, 64)
    save_hf_dir(tmp_path / "c", cfg, extra)
    with pytest.raises(ValueError, match=r"layers\.7.*does not fit"):
        _cpu(str(tmp_path / "c"))


def test_unknown_model_name_is_an_error() -> None:
    with pytest.raises(ValueError, match="neither an existing path"):
        _cpu("no-such-model-xyz")


def _llama_cpp_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """What llama.cpp's converter does to HF q/k rows: halves -> interleaved pairs, per head."""
    d = w.shape[0] // n_head
    out = torch.empty_like(w)
    for h in range(n_head):
        block = w[h * d : (h + 1) * d]
        out[h * d : (h + 1) * d : 2] = block[: d // 2]
        out[h * d + 1 : (h + 1) * d : 2] = block[d // 2 :]
    return out


@pytest.mark.parametrize("n_head", [1, 3, 4])
def test_gguf_unpermute_inverts_llama_cpp_permutation(n_head: int) -> None:
    w = torch.randn(n_head * 8, 5)
    assert torch.equal(unpermute_rope_rows(_llama_cpp_permute(w, n_head), n_head), w)
    bias = torch.randn(n_head * 8)
    assert torch.equal(unpermute_rope_rows(_llama_cpp_permute(bias, n_head), n_head), bias)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_engine_matches_transformers_model(family: str, tmp_path: Path) -> None:
    """transformers builds and saves a random model; the engine loads the directory and must
    reproduce transformers' logits for a prompt processed as two chunks plus a decode."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.AutoConfig.for_model(**TINY_HF[family])
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # make norms and biases non-trivial so their loading is tested
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path)
    runner = _cpu(str(tmp_path))
    prompt = torch.randint(0, 101, (21,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        want = model(torch.tensor([prompt])).logits[0]
    drv = StepDriver(runner)
    seq = make_seq(0, prompt[:20])
    got = torch.cat([drv.step([(seq, 13)]), drv.step([(seq, 7)])])
    drv.append(seq, prompt[20])
    got = torch.cat([got, drv.step([(seq, 1)])])
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)


def test_hf_dir_tokenizer_is_loaded(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    from engine.config import EngineConfig as Cfg
    from engine.llm_engine import LLMEngine
    from engine.sampling import SamplingParams

    src = _cpu(tiny_spec("llama"))
    save_hf_dir(tmp_path, TINY_HF["llama"], hf_state_dict_of(src.model))
    words = ["<unk>", "the", "cat", "sat", "on", "mat"] + [f"w{i}" for i in range(95)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(tmp_path / "tokenizer.json"))
    eng = LLMEngine(Cfg(model=str(tmp_path), device="cpu", block_size=4, num_kv_blocks=32))
    assert eng.tokenizer.encode("the cat sat") == [1, 2, 3]
    out = eng.generate_text(["the cat sat on"], SamplingParams(max_tokens=3, ignore_eos=True))[0]
    assert out.text == eng.tokenizer.decode(out.output_token_ids) and len(out.output_token_ids) == 3
    with pytest.raises(ValueError, match="ships no tokenizer"):
        _ = LLMEngine(Cfg(model=tiny_spec("llama"), device="cpu", block_size=4, num_kv_blocks=8)).tokenizer
