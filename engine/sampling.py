"""Token sampling (greedy, temperature, top-k, top-p) and the per-request stop rule.

Top-p is nucleus sampling (Holtzman et al., "The Curious Case of Neural Text Degeneration",
ICLR 2020): keep the smallest set of most likely tokens whose probability reaches p. Greedy
rows never touch a random generator, so a batch of greedy requests is deterministic and
matches `transformers`' `do_sample=False`. A request with its own seed draws from its own
generator, so its tokens do not depend on what else shares the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    max_tokens: int = 16
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    ignore_eos: bool = False  # keep generating past EOS (trace replay forces output lengths)
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"SamplingParams.max_tokens must be >= 1, got {self.max_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


GREEDY = SamplingParams()


def stop_reason(
    params: SamplingParams, token: int, num_output: int, eos_token_ids: tuple[int, ...]
) -> str | None:
    """Why generation ends after `token` (the `num_output`-th output), or None to go on."""
    if not params.ignore_eos and token in eos_token_ids:
        return "eos"
    if token in params.stop_token_ids:
        return "stop"
    if num_output >= params.max_tokens:
        return "length"
    return None


@cache
def _triton_argmax():
    try:
        from engine.triton_argmax import argmax_rows
    except ImportError:  # CUDA without triton
        return None
    return argmax_rows


def greedy_ids(logits: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out = logits.argmax(-1) ([R, V] -> int64 [R]); on CUDA through engine/triton_argmax.py, whose
    two-stage reduction of a 128k vocabulary is ~9x faster than torch.argmax's at batch 1."""
    fast = _triton_argmax() if logits.is_cuda else None
    if fast is None:
        return torch.argmax(logits, dim=-1, out=out)
    return fast(logits, out)


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k / nucleus of one row ([V]) to -inf."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the mass strictly before it already reaches p (the top token always stays).
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    return logits


class Sampler:
    """Samples one token per logits row, with a per-request or engine-wide generator."""

    def __init__(self, device: torch.device, seed: int) -> None:
        self.device = device
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self._seeded: dict[int, torch.Generator] = {}

    def forget(self, request_id: int) -> None:
        self._seeded.pop(request_id, None)

    def _generator(self, request_id: int, params: SamplingParams) -> torch.Generator:
        if params.seed is None:
            return self.generator
        g = self._seeded.get(request_id)
        if g is None:
            g = torch.Generator(device=self.device).manual_seed(params.seed)
            self._seeded[request_id] = g
        return g

    def sample(self, logits: torch.Tensor, params: list[SamplingParams], request_ids: list[int]) -> list[int]:
        """logits [S, V] (any float dtype) -> S token ids."""
        if logits.shape[0] != len(params):
            raise ValueError(f"{logits.shape[0]} logits rows but {len(params)} sampling params")
        if all(p.greedy for p in params):
            return logits.argmax(dim=-1).tolist()
        out = logits.argmax(dim=-1)
        for i, p in enumerate(params):
            if p.greedy:
                continue
            row = filter_logits(logits[i].float() / p.temperature, p.top_k, p.top_p)
            probs = row.softmax(-1)
            out[i] = torch.multinomial(probs, 1, generator=self._generator(request_ids[i], p))[0]
        return out.tolist()
