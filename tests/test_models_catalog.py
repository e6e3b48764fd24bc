"""Model catalog: exact parameter counts, KV sizes, and the Hugging Face config round trip."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.models import ModelArch, get_model, model_names

# Totals as reported for the released checkpoints (sum of safetensors tensor sizes).
EXACT_PARAMS = {
    "llama-3.1-8b": 8_030_261_248,
    "llama-3.1-70b": 70_553_706_496,
    "llama-2-7b": 6_738_415_616,
    "llama-2-70b": 68_976_648_192,
    "qwen2.5-7b": 7_615_616_512,
    "qwen3-8b": 8_190_735_360,
    "qwen3-0.6b": 596_049_920,
    "smollm2-135m": 134_515_008,
}

# config.json contents of the Hugging Face repositories (fields that are irrelevant here included,
# as they appear in the files, to show they are tolerated).
HF_CONFIGS = {
    "llama-3.1-8b": {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096,
        "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 131072,
        "mlp_bias": False, "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32,
        "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "use_cache": True, "vocab_size": 128256,
    },
    "qwen2.5-7b": {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02,
        "intermediate_size": 18944, "max_position_embeddings": 131072, "max_window_layers": 28,
        "model_type": "qwen2", "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 131072,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True, "use_mrope": False,
        "use_sliding_window": False, "vocab_size": 152064,
    },
    "qwen3-0.6b": {
        "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
        "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072,
        "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
        "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
        "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
    },
    "smollm2-135m": {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 0, "eos_token_id": 0, "hidden_act": "silu", "hidden_size": 576,
        "initializer_range": 0.041666666666666664, "intermediate_size": 1536, "is_llama_config": True,
        "max_position_embeddings": 8192, "mlp_bias": False, "model_type": "llama", "num_attention_heads": 9,
        "num_hidden_layers": 30, "num_key_value_heads": 3, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
        "rope_interleaved": False, "rope_scaling": None, "rope_theta": 100000, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 49152,
    },
}


def test_catalog_names() -> None:
    assert set(EXACT_PARAMS) == set(model_names())


@pytest.mark.parametrize("name,total", sorted(EXACT_PARAMS.items()))
def test_num_params_exact(name: str, total: int) -> None:
    assert get_model(name).num_params == total


def test_headline_sizes() -> None:
    assert get_model("qwen3-8b").num_params == pytest.approx(8.19e9, rel=1e-3)
    assert get_model("qwen3-0.6b").num_params == pytest.approx(0.596e9, rel=1e-3)


def test_tied_embeddings_counted_once() -> None:
    m = get_model("qwen3-0.6b")
    untied = dataclasses.replace(m, tie_word_embeddings=False)
    assert untied.num_params - m.num_params == m.vocab_size * m.hidden_size


def test_kv_and_weight_bytes() -> None:
    m = get_model("llama-3.1-8b")
    assert m.kv_bytes_per_token(2) == 2 * 32 * 8 * 128 * 2 == 131072
    assert get_model("llama-2-7b").kv_bytes_per_token(2) == 2 * 32 * 32 * 128 * 2
    assert m.weight_bytes(2) == 2 * 8_030_261_248
    assert m.weight_bytes(1) == 8_030_261_248


def test_lookup_aliases_and_errors() -> None:
    assert get_model("Qwen/Qwen3-8B") is get_model("qwen3-8b")
    assert get_model("LLAMA-3.1-8B") is get_model("llama-3.1-8b")
    with pytest.raises(KeyError) as e:
        get_model("gpt-5")
    assert "gpt-5" in str(e.value) and "llama-3.1-8b" in str(e.value)


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_from_hf_config_matches_catalog(name: str) -> None:
    built = ModelArch.from_hf_config(HF_CONFIGS[name], name=name)
    assert built == get_model(name)


@pytest.mark.parametrize("name", sorted(EXACT_PARAMS))
def test_hf_round_trip(name: str) -> None:
    m = get_model(name)
    cfg = m.to_hf_config()
    assert json.loads(json.dumps(cfg)) == cfg  # plain JSON
    assert ModelArch.from_hf_config(cfg) == m


def test_transformers_v5_rope_parameters() -> None:
    cfg = dict(HF_CONFIGS["llama-3.1-8b"])
    scaling = cfg.pop("rope_scaling")
    theta = cfg.pop("rope_theta")
    cfg["rope_parameters"] = {"rope_theta": theta, **scaling}
    assert ModelArch.from_hf_config(cfg, name="llama-3.1-8b") == get_model("llama-3.1-8b")
    cfg = dict(HF_CONFIGS["qwen3-0.6b"])
    cfg.pop("rope_theta")
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 1000000.0}
    assert ModelArch.from_hf_config(cfg, name="qwen3-0.6b") == get_model("qwen3-0.6b")


@pytest.mark.parametrize(
    "change,match",
    [
        ({"model_type": "mixtral"}, "model_type"),
        ({"hidden_size": None}, "hidden_size"),
        ({"num_hidden_layers": "32"}, "num_hidden_layers"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"num_key_value_heads": 5}, "num_kv_heads"),
    ],
)
def test_from_hf_config_errors(change: dict, match: str) -> None:
    cfg = dict(HF_CONFIGS["llama-3.1-8b"])
    cfg.update(change)
    with pytest.raises(ValueError, match=match):
        ModelArch.from_hf_config(cfg)


def test_missing_field_and_sliding_window() -> None:
    cfg = dict(HF_CONFIGS["qwen2.5-7b"])
    del cfg["vocab_size"]
    with pytest.raises(ValueError, match="vocab_size"):
        ModelArch.from_hf_config(cfg, source="qwen/config.json")
    cfg = dict(HF_CONFIGS["qwen2.5-7b"], use_sliding_window=True)
    with pytest.raises(ValueError, match="use_sliding_window"):
        ModelArch.from_hf_config(cfg)


def test_from_hf_json_names_file(tmp_path: Path) -> None:
    good = tmp_path / "config.json"
    good.write_text(json.dumps(HF_CONFIGS["smollm2-135m"]))
    assert ModelArch.from_hf_json(good, name="smollm2-135m") == get_model("smollm2-135m")
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "model_type": "llama",\n  "hidden_size": ,\n}')
    with pytest.raises(ValueError, match=r"bad\.json:3"):
        ModelArch.from_hf_json(bad)
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="missing.json"):
        ModelArch.from_hf_json(missing)


def test_family_invariants() -> None:
    m = get_model("qwen2.5-7b")
    with pytest.raises(ValueError, match="qwen2"):
        dataclasses.replace(m, attention_bias=False)
    with pytest.raises(ValueError, match="qwen3"):
        dataclasses.replace(get_model("qwen3-8b"), qk_norm=False)
    with pytest.raises(ValueError, match="num_layers"):
        dataclasses.replace(get_model("llama-2-7b"), num_layers=0)


@st.composite
def archs(draw: st.DrawFn) -> ModelArch:
    family = draw(st.sampled_from(["llama", "qwen2", "qwen3"]))
    kv = draw(st.integers(1, 8))
    heads = kv * draw(st.integers(1, 8))
    return ModelArch(
        name="random",
        num_layers=draw(st.integers(1, 96)),
        hidden_size=draw(st.integers(1, 64)) * 64,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=draw(st.sampled_from([32, 64, 128, 256])),
        intermediate_size=draw(st.integers(1, 30000)),
        vocab_size=draw(st.integers(1, 200000)),
        max_position_embeddings=draw(st.integers(1, 1 << 20)),
        rope_theta=draw(st.floats(1.0, 1e7)),
        rope_scaling=None,
        tie_word_embeddings=draw(st.booleans()),
        qk_norm=family == "qwen3",
        attention_bias=family == "qwen2" or (family != "qwen2" and draw(st.booleans())),
        rms_norm_eps=draw(st.sampled_from([1e-5, 1e-6])),
        family=family,
    )


def _state_dict_shapes(m: ModelArch) -> list[tuple[int, ...]]:
    """Tensor shapes of the Hugging Face state dict, enumerated by name as transformers builds it."""
    h, q, kv, i = m.hidden_size, m.num_heads * m.head_dim, m.num_kv_heads * m.head_dim, m.intermediate_size
    shapes: list[tuple[int, ...]] = [(m.vocab_size, h)]  # model.embed_tokens.weight
    for _ in range(m.num_layers):
        shapes += [(q, h), (kv, h), (kv, h), (h, q)]  # q/k/v/o_proj.weight
        if m.attention_bias:
            shapes += [(q,), (kv,), (kv,)]  # q/k/v_proj.bias
        if m.qk_norm:
            shapes += [(m.head_dim,), (m.head_dim,)]  # q_norm.weight, k_norm.weight
        shapes += [(i, h), (i, h), (h, i)]  # gate/up/down_proj.weight
        shapes += [(h,), (h,)]  # input_layernorm, post_attention_layernorm
    shapes.append((h,))  # model.norm.weight
    if not m.tie_word_embeddings:
        shapes.append((m.vocab_size, h))  # lm_head.weight
    return shapes


@settings(max_examples=100, deadline=None)
@given(archs())
def test_round_trip_and_state_dict_count(m: ModelArch) -> None:
    assert ModelArch.from_hf_config(m.to_hf_config()) == m
    total = 0
    for shape in _state_dict_shapes(m):
        n = 1
        for d in shape:
            n *= d
        total += n
    assert m.num_params == total
