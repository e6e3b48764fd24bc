"""Tiny model specs and a hand-driven step loop, for the engine's tests and the Triton checks.

The step driver does by hand what the scheduler does in production (look up the prefix cache,
allocate blocks, build a ScheduledBatch, advance computed counts), so a test can force any
mix of full prefills, chunks, prefix hits and decodes in one step and read back the logits of
every computed token.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch

from engine.config import EngineConfig
from engine.model_runner import ModelRunner
from engine.model_spec import DecoderSpec, RopeScaling
from policies.kv.block_manager import BlockManager
from policies.scheduling.batch import ScheduledBatch
from policies.sequence import Sequence
from traces.schema import Request


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one CPU thread: tiny tensors gain nothing from more, and OpenMP threads
    spinning against other busy processes on a 2-core machine can slow a test 50-fold."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def tiny_spec(family: str = "llama", **overrides) -> DecoderSpec:
    """A 2-layer GQA model (4 query heads, 2 KV heads) of the given family, small enough for CPU tests.

    The llama variant carries Llama-3.1 rope scaling with a short original context so that
    all three frequency bands occur at head_dim 16.
    """
    base = DecoderSpec(
        family=family,
        vocab_size=101,
        hidden_size=64,
        intermediate_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        rope_scaling=RopeScaling(4.0, 1.0, 4.0, 64) if family == "llama" else None,
        max_position_embeddings=512,
        tie_word_embeddings=family == "qwen3",
        qkv_bias=family == "qwen2",
        qk_norm=family == "qwen3",
        eos_token_ids=(0,),
        name=f"tiny-{family}",
    )
    return replace(base, **overrides)


def tiny_engine_config(device: str = "cpu", **overrides) -> EngineConfig:
    """An engine of `tiny_spec("llama")` with a small KV pool (40 blocks of 4 tokens) and small
    budgets (48 tokens, 6 sequences a step), so that a profile's grid and limits stay small."""
    base: dict = dict(
        model=tiny_spec("llama"),
        device=device,
        block_size=4,
        num_kv_blocks=40,
        max_num_batched_tokens=48,
        max_num_seqs=6,
    )
    return EngineConfig(**(base | overrides))


def make_seq(req_id: int, prompt: list[int], output_len: int = 8) -> Sequence:
    return Sequence(
        Request(id=req_id, arrival=0.0, prompt_len=len(prompt), output_len=output_len), token_ids=list(prompt)
    )


class StepDriver:
    """Runs hand-built steps through a ModelRunner with a real BlockManager."""

    def __init__(self, runner: ModelRunner, enable_prefix_caching: bool = True) -> None:
        self.runner = runner
        self.kv = BlockManager(runner.num_blocks, runner.block_size, enable_prefix_caching)

    def admit(self, seq: Sequence) -> int:
        """Attach prefix-cache hits to a new sequence; returns the tokens it may skip."""
        cached = self.kv.lookup(seq)
        if not self.kv.allocate(seq, 0, cached):
            raise RuntimeError("KV pool too small for the cached prefix")
        return len(cached) * self.kv.block_size

    def step(self, plan: list[tuple[Sequence, int]]) -> torch.Tensor:
        """Compute n more tokens of each sequence; returns logits of all computed tokens [T, V]."""
        for seq, n in plan:
            if not self.kv.allocate(seq, n):
                raise RuntimeError("KV pool too small for the test plan")
        batch = ScheduledBatch([s for s, _ in plan], [n for _, n in plan])
        logits = self.runner.logits_of(batch)
        for seq, n in plan:
            seq.num_computed_tokens += n
            self.kv.cache_blocks(seq)
        return logits

    def append(self, seq: Sequence, token: int) -> None:
        """Record a sampled token (what ReplicaCore.complete does in production)."""
        assert seq.token_ids is not None
        seq.token_ids.append(token)
        seq.num_output_tokens += 1

    def release(self, seq: Sequence) -> None:
        self.kv.free(seq)
