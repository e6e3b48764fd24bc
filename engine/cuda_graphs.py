"""CUDA graphs for decode-only steps, one per bucketed batch size.

A decode step of a small model is a few hundred tiny kernel launches whose CPU-side cost
exceeds their GPU time; replaying a captured graph removes it (the approach of vLLM and
gpt-fast). Graphs need fixed shapes and addresses, so each bucket owns slices of static input
buffers; a batch of b sequences runs in the smallest bucket >= b with the remaining rows
padded: they read and write only the KV cache's scratch block and their outputs are dropped.
The attention launch inside the graph uses the worst-case split count for its bucket, which
is safe because each program derives its key range from the context length it reads.
"""

from __future__ import annotations

import torch

from engine.attention import AttentionMetadata
from engine.kv_cache import KVCache
from engine.model import DecoderModel


def decode_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then multiples of 16 (of 32 past 128) up to and including max_batch's bucket."""
    sizes = [1, 2, 4, 8]
    s = 16
    while sizes[-1] < max_batch:
        sizes.append(s)
        s += 16 if s < 128 else 32
    return [b for b in sizes if b < max_batch] + [next(b for b in sizes if b >= max_batch)]


class DecodeGraphs:
    def __init__(self, model: DecoderModel, kv: KVCache, backend, max_model_len: int, max_batch: int) -> None:
        self.model = model
        self.kv = kv
        self.backend = backend
        self.buckets = decode_buckets(max_batch)
        big = self.buckets[-1]
        dev = kv.k.device
        bs = kv.block_size
        self.max_blocks = -(-max_model_len // bs)
        scratch = kv.scratch_block
        self.scratch_slot = scratch * bs
        self.input_ids = torch.zeros(big, dtype=torch.int64, device=dev)
        self.positions = torch.zeros(big, dtype=torch.int64, device=dev)
        self.slots = torch.full((big,), self.scratch_slot, dtype=torch.int64, device=dev)
        self.ctx = torch.ones(big, dtype=torch.int32, device=dev)
        self.tables = torch.full((big, self.max_blocks), scratch, dtype=torch.int32, device=dev)
        self.cu = torch.arange(big + 1, dtype=torch.int32, device=dev)
        self.tile_seq = torch.arange(big, dtype=torch.int32, device=dev)
        self.tile_q = torch.zeros(big, dtype=torch.int32, device=dev)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.max_model_len = max_model_len
        self._capture()

    def _meta(self, b: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slots[:b],
            cu_seqlens_q=self.cu[: b + 1],
            context_lens=self.ctx[:b],
            block_tables=self.tables[:b],
            q_lens=[1] * b,
            context_lens_host=[1] * b,
            block_tables_host=[[self.kv.scratch_block]] * b,
            max_q_len=1,
            max_context_len=self.max_model_len,
            num_splits=self.backend.num_splits(b, self.max_model_len),
            extra={"tile_seq": self.tile_seq[:b], "tile_q": self.tile_q[:b]},
        )

    @torch.inference_mode()
    def _capture(self) -> None:
        pool = None
        for b in reversed(self.buckets):  # largest first, so smaller graphs reuse its memory pool
            meta = self._meta(b)
            self.model(self.input_ids[:b], self.positions[:b], meta)  # warm up (Triton compiles here)
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                out = self.model(self.input_ids[:b], self.positions[:b], meta)
            pool = g.pool()
            self.graphs[b] = (g, out)
        torch.cuda.synchronize()

    def can_run(self, meta: AttentionMetadata) -> bool:
        return (
            meta.is_decode_only
            and meta.num_seqs <= self.buckets[-1]
            and meta.block_tables.shape[1] <= self.max_blocks
        )

    def run(self, inp) -> torch.Tensor:
        """Replay the bucket for `inp` (a decode-only StepInputs); returns hidden states [b, hidden]."""
        meta = inp.meta
        b = meta.num_seqs
        size = next(s for s in self.buckets if s >= b)
        g, out = self.graphs[size]
        self.input_ids[:b].copy_(inp.input_ids, non_blocking=True)
        self.positions[:b].copy_(inp.positions, non_blocking=True)
        self.slots[:b].copy_(meta.slot_mapping, non_blocking=True)
        self.ctx[:b].copy_(meta.context_lens, non_blocking=True)
        w = meta.block_tables.shape[1]
        self.tables[:b, :w].copy_(meta.block_tables, non_blocking=True)
        if size > b:  # padding rows: token 0 at position 0, reading and writing the scratch block
            self.input_ids[b:size].zero_()
            self.positions[b:size].zero_()
            self.slots[b:size].fill_(self.scratch_slot)
            self.ctx[b:size].fill_(1)
            self.tables[b:size, 0].fill_(self.kv.scratch_block)
        g.replay()
        return out[:b]
