"""Where a model's weights come from: a Hugging Face directory, a GGUF file, or nowhere (random).

Every source yields tensors under Hugging Face parameter names (`model.layers.0.self_attn.q_proj.weight`
...), so `load_into` has one mapping onto the engine's merged q/k/v and gate/up layout and the
dense reference (`engine/reference.py`) reads the same dict. GGUF files are dequantized to
float32 with the `gguf` package; llama.cpp's converter stores the q/k projections of the
`llama` architecture with rows permuted for its interleaved rope (see its
`convert_hf_to_gguf.py`, `LlamaModel.permute`), so they are permuted back here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.model import DecoderModel
from engine.model_spec import DecoderSpec, spec_from_catalog, spec_from_gguf_metadata, spec_from_hf_dir

TensorIter = Iterator[tuple[str, torch.Tensor]]


@dataclass
class WeightSource:
    """A model's spec plus a re-startable iterator over its (HF name, tensor) pairs.

    `tensors` is None for random weights. `path` names the file or directory, for messages.
    """

    spec: DecoderSpec
    tensors: Callable[[], TensorIter] | None
    path: str = ""
    kind: str = "random"  # "hf" | "gguf" | "random"
    gguf_metadata: dict[str, Any] | None = None


# -- Hugging Face directories -------------------------------------------------------------------


def read_hf_dir(path: str | Path) -> WeightSource:
    """A directory with config.json and *.safetensors shards (sharded index optional)."""
    d = Path(path)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: model directory does not exist")
    spec = spec_from_hf_dir(d)
    files = sorted(d.glob("*.safetensors"))
    if not files:
        present = ", ".join(sorted(p.name for p in d.iterdir())) or "nothing"
        raise FileNotFoundError(f"{d}: no *.safetensors weight files (found: {present})")

    def tensors() -> TensorIter:
        from safetensors import safe_open

        for f in files:
            try:
                handle = safe_open(str(f), framework="pt")
            except Exception as e:  # safetensors raises its own error types for bad headers
                raise ValueError(f"{f}: cannot read safetensors file ({e})") from None
            with handle:
                for name in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                    yield name, handle.get_tensor(name)

    return WeightSource(spec=spec, tensors=tensors, path=str(d), kind="hf")


# -- GGUF ---------------------------------------------------------------------------------------

_GGUF_GLOBAL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_GGUF_LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def gguf_to_hf_name(name: str) -> str:
    if name in _GGUF_GLOBAL:
        return _GGUF_GLOBAL[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _GGUF_LAYER:
        return f"model.layers.{parts[1]}.{_GGUF_LAYER[parts[2]]}"
    raise KeyError(name)


def unpermute_rope_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation for one projection ([n_heads*head_dim, ...]).

    Within each head llama.cpp reorders rows from [first half | second half] (HF's rotate-half
    pairing) to interleaved pairs (r0, r_{d/2}, r1, r_{d/2+1}, ...). Viewing each head's rows
    as (d/2, 2) and transposing to (2, d/2) restores the halves.
    """
    rows = w.shape[0]
    head_dim = rows // n_heads
    rest = w.shape[1:]
    return w.reshape(n_heads, head_dim // 2, 2, *rest).transpose(1, 2).reshape(rows, *rest)


def _gguf_field(field: Any) -> Any:
    return field.contents()


def read_gguf(path: str | Path) -> WeightSource:
    """A llama.cpp GGUF file of architecture llama, qwen2 or qwen3, any quantization `gguf` can dequantize."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: GGUF file does not exist")
    import gguf

    try:
        reader = gguf.GGUFReader(str(p))
    except Exception as e:
        raise ValueError(f"{p}: not a readable GGUF file ({e})") from None
    meta: dict[str, Any] = {}
    for k, f in reader.fields.items():
        try:
            meta[k] = _gguf_field(f)
        except Exception as e:
            raise ValueError(f"{p}: metadata field {k!r} cannot be decoded ({e})") from None
    names = {t.name for t in reader.tensors}
    spec = spec_from_gguf_metadata(meta, where=str(p), has_output_weight="output.weight" in names)
    permuted = spec.family == "llama"
    if "rope_freqs.weight" in names:
        raise ValueError(f"{p}: tensor 'rope_freqs.weight' (GGUF rope frequency factors) is not supported")

    def tensors() -> TensorIter:
        from gguf.quants import dequantize

        for t in reader.tensors:
            try:
                hf = gguf_to_hf_name(t.name)
            except KeyError:
                raise ValueError(f"{p}: tensor {t.name!r} has no counterpart in the engine's model") from None
            try:
                arr = dequantize(t.data, t.tensor_type)
            except NotImplementedError:
                raise ValueError(
                    f"{p}: tensor {t.name!r} has quantization {t.tensor_type.name}, "
                    "which gguf cannot dequantize"
                ) from None
            w = torch.from_numpy(arr.astype("float32", copy=False).copy())
            if permuted and hf.endswith("q_proj.weight"):
                w = unpermute_rope_rows(w, spec.num_heads)
            elif permuted and hf.endswith("k_proj.weight"):
                w = unpermute_rope_rows(w, spec.num_kv_heads)
            yield hf, w

    return WeightSource(spec=spec, tensors=tensors, path=str(p), kind="gguf", gguf_metadata=meta)


# -- loading into the engine's model ----------------------------------------------------------


def _target(spec: DecoderSpec, model: DecoderModel, name: str) -> tuple[torch.Tensor, int, int] | None:
    """(parameter, row start, row end) that HF tensor `name` fills, or None if it is ignorable."""
    if name == "model.embed_tokens.weight":
        return model.embed_tokens.weight, 0, spec.vocab_size
    if name == "model.norm.weight":
        return model.norm.weight, 0, spec.hidden_size
    if name == "lm_head.weight":
        if model.lm_head is None:
            return None  # tied: the embedding is the head
        return model.lm_head.weight, 0, spec.vocab_size
    if not name.startswith("model.layers."):
        raise KeyError(name)
    rest = name[len("model.layers.") :]
    idx_s, _, sub = rest.partition(".")
    if not idx_s.isdigit() or int(idx_s) >= spec.num_layers:
        raise KeyError(name)
    layer = model.layers[int(idx_s)]
    attn, mlp = layer.self_attn, layer.mlp
    q, kv, inter = spec.q_size, spec.kv_size, spec.intermediate_size
    table: dict[str, tuple[torch.Tensor | None, int, int]] = {
        "input_layernorm.weight": (layer.input_layernorm.weight, 0, spec.hidden_size),
        "post_attention_layernorm.weight": (layer.post_attention_layernorm.weight, 0, spec.hidden_size),
        "self_attn.q_proj.weight": (attn.qkv_proj.weight, 0, q),
        "self_attn.k_proj.weight": (attn.qkv_proj.weight, q, q + kv),
        "self_attn.v_proj.weight": (attn.qkv_proj.weight, q + kv, q + 2 * kv),
        "self_attn.q_proj.bias": (attn.qkv_proj.bias, 0, q),
        "self_attn.k_proj.bias": (attn.qkv_proj.bias, q, q + kv),
        "self_attn.v_proj.bias": (attn.qkv_proj.bias, q + kv, q + 2 * kv),
        "self_attn.o_proj.weight": (attn.o_proj.weight, 0, spec.hidden_size),
        "self_attn.q_norm.weight": (attn.q_norm.weight if attn.q_norm else None, 0, spec.head_dim),
        "self_attn.k_norm.weight": (attn.k_norm.weight if attn.k_norm else None, 0, spec.head_dim),
        "mlp.gate_proj.weight": (mlp.gate_up_proj.weight, 0, inter),
        "mlp.up_proj.weight": (mlp.gate_up_proj.weight, inter, 2 * inter),
        "mlp.down_proj.weight": (mlp.down_proj.weight, 0, spec.hidden_size),
    }
    if sub.endswith("rotary_emb.inv_freq"):
        return None
    if sub not in table or table[sub][0] is None:
        raise KeyError(name)
    p, a, b = table[sub]
    assert p is not None
    return p, a, b


@torch.no_grad()
def load_into(model: DecoderModel, tensors: TensorIter, where: str) -> None:
    """Copy every tensor into the model; error on unknown names, shape mismatches or gaps."""
    spec = model.spec
    filled: dict[int, int] = {}  # id(param) -> rows filled
    for name, t in tensors:
        try:
            tgt = _target(spec, model, name)
        except KeyError:
            raise ValueError(
                f"{where}: tensor {name!r} does not fit model {spec.name!r} ({spec.family})"
            ) from None
        if tgt is None:
            continue
        p, a, b = tgt
        want = (b - a, *p.shape[1:])
        if tuple(t.shape) != want:
            raise ValueError(f"{where}: tensor {name!r} has shape {tuple(t.shape)}, expected {want}")
        p[a:b].copy_(t.to(device=p.device, dtype=p.dtype))
        filled[id(p)] = filled.get(id(p), 0) + (b - a)
    missing = [n for n, p in model.named_parameters() if filled.get(id(p), 0) != p.shape[0]]
    if missing:
        raise ValueError(
            f"{where}: weights missing or incomplete for {', '.join(missing[:8])}"
            + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        )


def read_state_dict(source: WeightSource) -> dict[str, torch.Tensor]:
    """All of a source's tensors in one HF-named dict (for the dense reference and tests)."""
    if source.tensors is None:
        raise ValueError("random-weight sources have no state dict; build the model and read its parameters")
    return dict(source.tensors())


def hf_state_dict_of(model: DecoderModel) -> dict[str, torch.Tensor]:
    """The model's weights under HF names (inverse of `load_into`), e.g. for random-weight references."""
    spec = model.spec
    sd: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": model.embed_tokens.weight.detach(),
        "model.norm.weight": model.norm.weight.detach(),
    }
    if model.lm_head is not None:
        sd["lm_head.weight"] = model.lm_head.weight.detach()
    q, kv, inter = spec.q_size, spec.kv_size, spec.intermediate_size
    for i, layer in enumerate(model.layers):
        pre = f"model.layers.{i}."
        a, m = layer.self_attn, layer.mlp
        w = a.qkv_proj.weight.detach()
        sd[pre + "self_attn.q_proj.weight"] = w[:q]
        sd[pre + "self_attn.k_proj.weight"] = w[q : q + kv]
        sd[pre + "self_attn.v_proj.weight"] = w[q + kv :]
        if a.qkv_proj.bias is not None:
            bias = a.qkv_proj.bias.detach()
            sd[pre + "self_attn.q_proj.bias"] = bias[:q]
            sd[pre + "self_attn.k_proj.bias"] = bias[q : q + kv]
            sd[pre + "self_attn.v_proj.bias"] = bias[q + kv :]
        sd[pre + "self_attn.o_proj.weight"] = a.o_proj.weight.detach()
        if a.q_norm is not None and a.k_norm is not None:
            sd[pre + "self_attn.q_norm.weight"] = a.q_norm.weight.detach()
            sd[pre + "self_attn.k_norm.weight"] = a.k_norm.weight.detach()
        gu = m.gate_up_proj.weight.detach()
        sd[pre + "mlp.gate_proj.weight"] = gu[:inter]
        sd[pre + "mlp.up_proj.weight"] = gu[inter:]
        sd[pre + "mlp.down_proj.weight"] = m.down_proj.weight.detach()
        sd[pre + "input_layernorm.weight"] = layer.input_layernorm.weight.detach()
        sd[pre + "post_attention_layernorm.weight"] = layer.post_attention_layernorm.weight.detach()
    return sd


def save_hf_dir(path: str | Path, hf_config: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> None:
    """Write config.json + model.safetensors (used by tests to exercise `read_hf_dir`)."""
    from safetensors.torch import save_file

    d = Path(path)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(hf_config, indent=1))
    save_file({k: v.contiguous().clone() for k, v in state_dict.items()}, str(d / "model.safetensors"))


def resolve_source(model: str | DecoderSpec) -> WeightSource:
    """Turn EngineConfig.model into a weight source.

    A DecoderSpec or a catalog architecture name gives random weights; a directory is read as
    Hugging Face; a `.gguf` file as GGUF.
    """
    if isinstance(model, DecoderSpec):
        return WeightSource(spec=model, tensors=None, path=f"<random {model.name or model.family}>")
    p = Path(model)
    if p.is_dir():
        return read_hf_dir(p)
    if p.suffix == ".gguf":
        return read_gguf(p)
    if p.exists():
        raise ValueError(f"{p}: not a model directory or .gguf file")
    try:
        spec = spec_from_catalog(model)
    except KeyError as e:
        raise ValueError(
            f"model {model!r} is neither an existing path (HF directory or .gguf file) nor a catalog "
            f"architecture name ({e.args[0] if e.args else ''})"
        ) from None
    return WeightSource(spec=spec, tensors=None, path=f"<random {model}>")
