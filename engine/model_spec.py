"""The decoder hyper-parameters the engine needs, from whichever source describes a model.

Three sources describe the same handful of numbers: a Hugging Face `config.json`, the
metadata block of a GGUF file (llama.cpp's key names), and the simulator's catalog entry
(`backends.models.ModelArch`). Parsing each into one `DecoderSpec` keeps the model code free
of source-specific branches. The families covered are the ones `engine/model.py` implements:
Llama 2/3/3.1/3.2 (optionally with Llama-3 rope scaling), Qwen2/2.5 (bias on q/k/v) and
Qwen3 (per-head RMSNorm on q and k, no bias).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from backends.models import ModelArch, get_model

SUPPORTED_FAMILIES = ("llama", "qwen2", "qwen3")


@dataclass(frozen=True)
class RopeScaling:
    """Llama-3.1 frequency-dependent rope scaling (Meta's Llama 3.1 release, `apply_scaling`)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclass(frozen=True)
class DecoderSpec:
    family: str  # "llama" | "qwen2" | "qwen3"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    name: str = ""

    def __post_init__(self) -> None:
        if self.family not in SUPPORTED_FAMILIES:
            raise ValueError(
                f"model family {self.family!r} is not supported; known: {', '.join(SUPPORTED_FAMILIES)}"
            )
        for f in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
        ):
            if int(getattr(self, f)) < 1:
                raise ValueError(f"model {self.name!r}: {f} must be >= 1, got {getattr(self, f)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"model {self.name!r}: num_heads={self.num_heads} is not a multiple of "
                f"num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"model {self.name!r}: head_dim={self.head_dim} must be even for rotary embeddings"
            )

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim


def _need(cfg: dict[str, Any], key: str, where: str) -> Any:
    if key not in cfg:
        raise ValueError(f"{where}: missing field {key!r}")
    return cfg[key]


def _eos_tuple(v: Any) -> tuple[int, ...]:
    if v is None:
        return ()
    if isinstance(v, int):
        return (v,)
    return tuple(int(x) for x in v)


def _rope_scaling(raw: dict[str, Any] | None, where: str) -> RopeScaling | None:
    if not raw:
        return None
    kind = raw.get("rope_type", raw.get("type"))
    if kind in (None, "default"):
        return None
    if kind != "llama3":
        raise ValueError(
            f"{where}: rope scaling type {kind!r} is not implemented by the engine (only 'llama3')"
        )
    try:
        return RopeScaling(
            factor=float(raw["factor"]),
            low_freq_factor=float(raw["low_freq_factor"]),
            high_freq_factor=float(raw["high_freq_factor"]),
            original_max_position_embeddings=int(raw["original_max_position_embeddings"]),
        )
    except KeyError as e:
        raise ValueError(f"{where}: llama3 rope scaling lacks field {e.args[0]!r}") from None


def spec_from_model_arch(arch: ModelArch, where: str | None = None) -> DecoderSpec:
    """The catalog / cost-model description, as the engine needs it (one source of truth for shapes)."""
    return DecoderSpec(
        family=arch.family,
        vocab_size=arch.vocab_size,
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_layers=arch.num_layers,
        num_heads=arch.num_heads,
        num_kv_heads=arch.num_kv_heads,
        head_dim=arch.head_dim,
        rms_norm_eps=arch.rms_norm_eps,
        rope_theta=arch.rope_theta,
        rope_scaling=_rope_scaling(arch.rope_scaling, where or f"model {arch.name!r}"),
        max_position_embeddings=arch.max_position_embeddings,
        tie_word_embeddings=arch.tie_word_embeddings,
        qkv_bias=arch.attention_bias,
        qk_norm=arch.qk_norm,
        name=arch.name,
    )


def spec_from_catalog(name: str) -> DecoderSpec:
    """Random-weight spec of a catalog architecture (`backends.models.get_model`); KeyError if unknown."""
    return spec_from_model_arch(get_model(name))


def spec_from_hf_config(cfg: dict[str, Any], where: str = "config.json") -> DecoderSpec:
    """Parse a Hugging Face `config.json` dict through `ModelArch.from_hf_config`, adding the
    token ids the engine needs to stop generation."""
    arch = ModelArch.from_hf_config(cfg, source=where)
    return replace(
        spec_from_model_arch(arch, where),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_ids=_eos_tuple(cfg.get("eos_token_id")),
    )


def spec_from_hf_dir(path: str | Path) -> DecoderSpec:
    p = Path(path) / "config.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no config.json in model directory {path}")
    try:
        cfg = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}:{e.lineno}: malformed JSON in model config: {e.msg}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{p}: expected a JSON object at top level")
    spec = spec_from_hf_config(cfg, where=str(p))
    if not spec.name or spec.name == cfg.get("model_type"):
        spec = replace(spec, name=Path(path).name)
    return spec


def spec_from_gguf_metadata(meta: dict[str, Any], where: str, has_output_weight: bool) -> DecoderSpec:
    """Parse llama.cpp GGUF metadata keys (`{arch}.block_count`, ...), see ggml's gguf docs."""
    arch = str(_need(meta, "general.architecture", where))
    if arch not in SUPPORTED_FAMILIES:
        raise ValueError(
            f"{where}: general.architecture is {arch!r}; the engine implements llama, qwen2, qwen3"
        )

    def key(k: str) -> Any:
        return _need(meta, f"{arch}.{k}", where)

    hidden = int(key("embedding_length"))
    heads = int(key("attention.head_count"))
    head_dim = int(meta.get(f"{arch}.attention.key_length", meta.get(f"{arch}.rope.dimension_count", 0)) or 0)
    head_dim = head_dim or hidden // heads
    vocab = meta.get(f"{arch}.vocab_size")
    if vocab is None:
        vocab = len(_need(meta, "tokenizer.ggml.tokens", where))
    scaling = None
    if meta.get(f"{arch}.rope.scaling.type") not in (None, "none"):
        raise ValueError(
            f"{where}: GGUF rope scaling {meta[f'{arch}.rope.scaling.type']!r} is not implemented"
        )
    eos = meta.get("tokenizer.ggml.eos_token_id")
    return DecoderSpec(
        family=arch,
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(key("feed_forward_length")),
        num_layers=int(key("block_count")),
        num_heads=heads,
        num_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv", heads)),
        head_dim=head_dim,
        rms_norm_eps=float(key("attention.layer_norm_rms_epsilon")),
        rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        rope_scaling=scaling,
        max_position_embeddings=int(meta.get(f"{arch}.context_length", 4096)),
        tie_word_embeddings=not has_output_weight,
        qkv_bias=arch == "qwen2",
        qk_norm=arch == "qwen3",
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_ids=_eos_tuple(eos),
        name=str(meta.get("general.name", arch)),
    )
