"""Decoder-only transformer architectures (Llama / Qwen2 / Qwen3) as the cost models see them.

A `ModelArch` carries exactly the shape information that decides FLOPs, weight bytes and KV-cache
bytes, taken field for field from the model's Hugging Face `config.json`, so the analytic cost
model, the KV-capacity helper and the real engine agree on one description of the network.
The catalog values were copied from the `config.json` files of the named Hugging Face repositories
(meta-llama/Llama-3.1-8B, meta-llama/Llama-3.1-70B, meta-llama/Llama-2-7b-hf,
meta-llama/Llama-2-70b-hf, Qwen/Qwen2.5-7B, Qwen/Qwen3-0.6B, Qwen/Qwen3-8B,
HuggingFaceTB/SmolLM2-135M).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FAMILIES: dict[str, str] = {
    # family -> the `architectures` entry transformers uses for it
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


@dataclass(frozen=True)
class ModelArch:
    """Shape of a dense decoder-only transformer with RMSNorm, RoPE, GQA and a SwiGLU MLP.

    Every layer is: RMSNorm -> QKV projection (-> per-head q/k RMSNorm for Qwen3) -> attention ->
    O projection -> residual -> RMSNorm -> gate/up projection -> SiLU*up -> down projection ->
    residual. A final RMSNorm precedes the LM head.
    """

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float
    rope_scaling: dict[str, Any] | None = field(default=None, hash=False, compare=True)
    tie_word_embeddings: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over each q and k head (weights of head_dim each)
    attention_bias: bool = False  # Qwen2/2.5: bias on the q, k and v projections
    rms_norm_eps: float = 1e-6
    family: str = "llama"

    def __post_init__(self) -> None:
        where = f"model {self.name!r}"
        for f in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
                  "intermediate_size", "vocab_size", "max_position_embeddings"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{where}: field {f} must be a positive integer, got {v!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"{where}: num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                f"({self.num_kv_heads}) for grouped-query attention"
            )
        if not self.rope_theta > 0:
            raise ValueError(f"{where}: field rope_theta must be > 0, got {self.rope_theta!r}")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"{where}: field rms_norm_eps must be > 0, got {self.rms_norm_eps!r}")
        if self.family not in FAMILIES:
            raise ValueError(f"{where}: field family must be one of {sorted(FAMILIES)}, got {self.family!r}")
        # Family invariants, so that to_hf_config() can always express the architecture.
        if self.family == "qwen2" and (not self.attention_bias or self.qk_norm):
            raise ValueError(f"{where}: family qwen2 has qkv bias and no q/k norm "
                             f"(got attention_bias={self.attention_bias}, qk_norm={self.qk_norm})")
        if self.family == "qwen3" and not self.qk_norm:
            raise ValueError(f"{where}: family qwen3 always has q/k RMSNorm (qk_norm=True)")
        if self.family == "llama" and self.qk_norm:
            raise ValueError(f"{where}: family llama has no q/k RMSNorm (qk_norm must be False)")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, dict):
            raise ValueError(f"{where}: field rope_scaling must be a dict or None, got {self.rope_scaling!r}")

    # ---------------------------------------------------------------- derived sizes
    @property
    def q_size(self) -> int:
        """Width of the query projection output (num_heads * head_dim; may differ from hidden_size)."""
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Width of each of the key and value projection outputs."""
        return self.num_kv_heads * self.head_dim

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def attn_params_per_layer(self) -> int:
        """q, k, v, o projection weights, the qkv bias (Qwen2) and the q/k norms (Qwen3)."""
        h = self.hidden_size
        n = h * (self.q_size + 2 * self.kv_size) + self.q_size * h
        if self.attention_bias:
            n += self.q_size + 2 * self.kv_size
        if self.qk_norm:
            n += 2 * self.head_dim
        return n

    @property
    def mlp_params_per_layer(self) -> int:
        """gate, up and down projections of the SwiGLU MLP (no biases in these families)."""
        return 3 * self.hidden_size * self.intermediate_size

    @property
    def params_per_layer(self) -> int:
        return self.attn_params_per_layer + self.mlp_params_per_layer + 2 * self.hidden_size

    @property
    def num_params(self) -> int:
        """Exact parameter count: embeddings, layers, final norm, and the LM head unless tied."""
        n = self.embedding_params + self.num_layers * self.params_per_layer + self.hidden_size
        if not self.tie_word_embeddings:
            n += self.embedding_params
        return n

    def weight_bytes(self, dtype_bytes: float = 2) -> float:
        """Bytes of all parameters stored at `dtype_bytes` each (tied embeddings stored once)."""
        return self.num_params * dtype_bytes

    def kv_bytes_per_token(self, dtype_bytes: float = 2) -> float:
        """KV-cache bytes one token occupies over the whole model: K and V of every layer."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes

    # ---------------------------------------------------------------- HF config I/O
    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any], name: str | None = None,
                       source: str = "<config dict>") -> ModelArch:
        """Build from a Hugging Face `config.json` dict (model_type llama, qwen2 or qwen3).

        Optional keys take transformers' defaults for that model type. Keys that change the
        computation in a way this description cannot express (MLP bias, a non-SiLU activation,
        Qwen sliding-window attention) raise instead of being silently ignored.
        """
        if not isinstance(cfg, dict):
            raise ValueError(f"{source}: expected a JSON object (dict), got {type(cfg).__name__}")
        model_type = cfg.get("model_type")
        if model_type not in FAMILIES:
            raise ValueError(f"{source}: field model_type must be one of {sorted(FAMILIES)}, "
                             f"got {model_type!r}")

        def req(key: str) -> Any:
            if key not in cfg:
                raise ValueError(f"{source}: required field {key!r} is missing (model_type {model_type})")
            return cfg[key]

        def intval(key: str, value: Any) -> int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{source}: field {key!r} must be an integer, got {value!r}")
            return value

        hidden = intval("hidden_size", req("hidden_size"))
        heads = intval("num_attention_heads", req("num_attention_heads"))
        kv_heads = intval("num_key_value_heads", cfg.get("num_key_value_heads") or heads)
        head_dim = cfg.get("head_dim")
        if head_dim is None:
            if hidden % heads:
                raise ValueError(f"{source}: no head_dim and hidden_size {hidden} is not a multiple of "
                                 f"num_attention_heads {heads}")
            head_dim = hidden // heads
        head_dim = intval("head_dim", head_dim)

        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"{source}: field hidden_act must be 'silu' (SwiGLU MLP), got {act!r}")
        if cfg.get("mlp_bias", False):
            raise ValueError(f"{source}: field mlp_bias=true is not supported (no MLP biases in this model)")
        if model_type in ("qwen2", "qwen3") and cfg.get("use_sliding_window", False):
            raise ValueError(f"{source}: field use_sliding_window=true is not supported "
                             f"(full attention only)")

        # transformers >= 5 nests rope_theta and the scaling dict under rope_parameters.
        rope_params = cfg.get("rope_parameters")
        if isinstance(rope_params, dict):
            rope_theta = rope_params.get("rope_theta", cfg.get("rope_theta", 10000.0))
            scaling = {k: v for k, v in rope_params.items() if k != "rope_theta"}
            if scaling.get("rope_type", scaling.get("type", "default")) == "default":
                scaling = None
        else:
            rope_theta = cfg.get("rope_theta", 10000.0)
            scaling = cfg.get("rope_scaling")
        if scaling is not None and not isinstance(scaling, dict):
            raise ValueError(f"{source}: field rope_scaling must be an object or null, got {scaling!r}")

        default_max_pos = 2048 if model_type == "llama" else 32768
        return cls(
            name=name or cfg.get("_name_or_path") or f"{model_type}-custom",
            num_layers=intval("num_hidden_layers", req("num_hidden_layers")),
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate_size=intval("intermediate_size", req("intermediate_size")),
            vocab_size=intval("vocab_size", req("vocab_size")),
            max_position_embeddings=intval("max_position_embeddings",
                                           cfg.get("max_position_embeddings", default_max_pos)),
            rope_theta=float(rope_theta),
            rope_scaling=dict(scaling) if scaling is not None else None,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qk_norm=model_type == "qwen3",
            # Qwen2 always has qkv bias (no config key); llama/qwen3 read attention_bias.
            attention_bias=True if model_type == "qwen2" else bool(cfg.get("attention_bias", False)),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            family=model_type,
        )

    @classmethod
    def from_hf_json(cls, path: str | Path, name: str | None = None) -> ModelArch:
        """Read a `config.json` file; errors name the file."""
        p = Path(path)
        try:
            cfg = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}:{e.lineno}: invalid JSON in model config: {e.msg}") from None
        return cls.from_hf_config(cfg, name=name, source=str(p))

    def to_hf_config(self) -> dict[str, Any]:
        """The inverse of `from_hf_config`: a config.json dict transformers can instantiate."""
        cfg: dict[str, Any] = {
            "_name_or_path": self.name,
            "architectures": [FAMILIES[self.family]],
            "model_type": self.family,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rope_scaling": dict(self.rope_scaling) if self.rope_scaling is not None else None,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": "bfloat16",
        }
        if self.family == "qwen2":
            cfg["use_sliding_window"] = False
        else:
            cfg["attention_bias"] = self.attention_bias
            cfg["mlp_bias"] = False
        return cfg


_LLAMA31_ROPE = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
}

_CATALOG: dict[str, ModelArch] = {
    m.name: m
    for m in (
        ModelArch("llama-3.1-8b", num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=8, head_dim=128,
                  intermediate_size=14336, vocab_size=128256, max_position_embeddings=131072,
                  rope_theta=500000.0, rope_scaling=dict(_LLAMA31_ROPE), tie_word_embeddings=False,
                  rms_norm_eps=1e-5, family="llama"),
        ModelArch("llama-3.1-70b", num_layers=80, hidden_size=8192, num_heads=64, num_kv_heads=8,
                  head_dim=128,
                  intermediate_size=28672, vocab_size=128256, max_position_embeddings=131072,
                  rope_theta=500000.0, rope_scaling=dict(_LLAMA31_ROPE), tie_word_embeddings=False,
                  rms_norm_eps=1e-5, family="llama"),
        ModelArch("llama-2-7b", num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=32, head_dim=128,
                  intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096,
                  rope_theta=10000.0, rope_scaling=None, tie_word_embeddings=False,
                  rms_norm_eps=1e-5, family="llama"),
        ModelArch("llama-2-70b", num_layers=80, hidden_size=8192, num_heads=64, num_kv_heads=8, head_dim=128,
                  intermediate_size=28672, vocab_size=32000, max_position_embeddings=4096,
                  rope_theta=10000.0, rope_scaling=None, tie_word_embeddings=False,
                  rms_norm_eps=1e-5, family="llama"),
        ModelArch("qwen2.5-7b", num_layers=28, hidden_size=3584, num_heads=28, num_kv_heads=4, head_dim=128,
                  intermediate_size=18944, vocab_size=152064, max_position_embeddings=131072,
                  rope_theta=1000000.0, rope_scaling=None, tie_word_embeddings=False, attention_bias=True,
                  rms_norm_eps=1e-6, family="qwen2"),
        ModelArch("qwen3-0.6b", num_layers=28, hidden_size=1024, num_heads=16, num_kv_heads=8, head_dim=128,
                  intermediate_size=3072, vocab_size=151936, max_position_embeddings=40960,
                  rope_theta=1000000.0, rope_scaling=None, tie_word_embeddings=True, qk_norm=True,
                  rms_norm_eps=1e-6, family="qwen3"),
        ModelArch("qwen3-8b", num_layers=36, hidden_size=4096, num_heads=32, num_kv_heads=8, head_dim=128,
                  intermediate_size=12288, vocab_size=151936, max_position_embeddings=40960,
                  rope_theta=1000000.0, rope_scaling=None, tie_word_embeddings=False, qk_norm=True,
                  rms_norm_eps=1e-6, family="qwen3"),
        ModelArch("smollm2-135m", num_layers=30, hidden_size=576, num_heads=9, num_kv_heads=3, head_dim=64,
                  intermediate_size=1536, vocab_size=49152, max_position_embeddings=8192,
                  rope_theta=100000.0, rope_scaling=None, tie_word_embeddings=True,
                  rms_norm_eps=1e-5, family="llama"),
    )
}

# Hugging Face repository ids resolve to the same entries.
_ALIASES: dict[str, str] = {
    "meta-llama/llama-3.1-8b": "llama-3.1-8b",
    "meta-llama/llama-3.1-8b-instruct": "llama-3.1-8b",
    "meta-llama/llama-3.1-70b": "llama-3.1-70b",
    "meta-llama/llama-3.1-70b-instruct": "llama-3.1-70b",
    "meta-llama/llama-2-7b-hf": "llama-2-7b",
    "meta-llama/llama-2-70b-hf": "llama-2-70b",
    "qwen/qwen2.5-7b": "qwen2.5-7b",
    "qwen/qwen3-0.6b": "qwen3-0.6b",
    "qwen/qwen3-8b": "qwen3-8b",
    "huggingfacetb/smollm2-135m": "smollm2-135m",
}


def model_names() -> list[str]:
    return sorted(_CATALOG)


def get_model(name: str) -> ModelArch:
    """Catalog entry by name (case-insensitive; Hugging Face repo ids of the catalog models work too)."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    try:
        return _CATALOG[key]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(model_names())}") from None
