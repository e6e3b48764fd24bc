"""Text <-> token ids for a loaded model: the model directory's `tokenizer.json`, or the BPE
vocabulary embedded in a GGUF file.

GGUF stores a GPT-2 style byte-level BPE as `tokenizer.ggml.tokens` + `tokenizer.ggml.merges`
plus a pre-tokenizer name (`tokenizer.ggml.pre`); it is rebuilt here with the `tokenizers`
library. Only pre-tokenizers whose splitting rule is known to be GPT-2's are accepted
("gpt2", "default", and "smollm", which additionally splits every digit on its own, like
SmolLM2's own tokenizer.json); anything else is refused rather than silently mis-tokenized.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.weights import WeightSource


class Tokenizer:
    def __init__(self, backend: Any, bos_token_id: int | None, add_bos: bool, source: str) -> None:
        self._tok = backend  # a tokenizers.Tokenizer
        self.bos_token_id = bos_token_id
        self.add_bos = add_bos
        self.source = source

    def encode(self, text: str) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if self.add_bos and self.bos_token_id is not None:
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)


def _from_hf_dir(d: Path) -> Tokenizer | None:
    f = d / "tokenizer.json"
    if not f.is_file():
        return None
    from tokenizers import Tokenizer as HFTokenizer

    try:
        tok = HFTokenizer.from_file(str(f))
    except Exception as e:
        raise ValueError(f"{f}: cannot load tokenizer ({e})") from None
    # tokenizer.json's post-processor adds BOS itself when the model wants one.
    return Tokenizer(tok, None, False, str(f))


_GPT2_PRE = {"gpt2", "default", "smollm"}


def _from_gguf(meta: dict[str, Any], where: str) -> Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(
            f"{where}: GGUF tokenizer model {kind!r} is not supported (only byte-level BPE 'gpt2')"
        )
    pre = str(meta.get("tokenizer.ggml.pre", "default"))
    if pre not in _GPT2_PRE:
        raise ValueError(f"{where}: GGUF pre-tokenizer {pre!r} is not supported (known: {sorted(_GPT2_PRE)})")
    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    types = meta.get("tokenizer.ggml.token_type")
    if types is not None:  # llama.cpp token types: 3 = control, 4 = user-defined
        from tokenizers import AddedToken

        special = [
            AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types) if int(t) == 3
        ]
        if special:
            tok.add_special_tokens(special)
    return Tokenizer(
        tok, meta.get("tokenizer.ggml.bos_token_id"), bool(meta.get("tokenizer.ggml.add_bos_token")), where
    )


def load_tokenizer(source: WeightSource) -> Tokenizer | None:
    """The tokenizer shipped with a model, or None (random-weight models have none)."""
    if source.kind == "hf":
        return _from_hf_dir(Path(source.path))
    if source.kind == "gguf" and source.gguf_metadata is not None:
        return _from_gguf(source.gguf_metadata, source.path)
    return None
