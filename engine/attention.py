"""Paged attention: the per-step metadata, the KV write, and the reference (pure PyTorch) path.

One layout serves every kind of step, as in vLLM V1: all new tokens of the batch are packed
into one [T, heads, head_dim] tensor; sequence b owns rows cu_seqlens_q[b]:cu_seqlens_q[b+1],
which are its positions context_len[b] - q_len[b] ... context_len[b] - 1. Its keys live in the
paged pools (Kwon et al., "Efficient Memory Management for LLM Serving with PagedAttention",
SOSP 2023) at the blocks listed in its block table. A full prefill, a chunk of a prefill, a
prefill after a prefix-cache hit, and a decode (q_len = 1) differ only in those numbers.

The reference path here gathers each sequence's blocks and calls
`torch.nn.functional.scaled_dot_product_attention` with an explicit causal mask shifted by
the cached prefix. It is the path on CPU and Ascend and the oracle the Triton kernel is tested
against; it loops over sequences in Python, so it is not meant to be fast.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class AttentionMetadata:
    """Everything a paged-attention call needs about one step's batch.

    Device tensors drive the kernels; the host lists mirror them so the reference path and
    launch-grid sizing never read back from the device.
    """

    slot_mapping: torch.Tensor  # [T] int64: pool slot (block * block_size + offset) of each new token
    cu_seqlens_q: torch.Tensor  # [B + 1] int32: row offsets of each sequence's new tokens
    context_lens: torch.Tensor  # [B] int32: keys attended after this step (cached + new)
    block_tables: torch.Tensor  # [B, max_blocks] int32, padded with a valid block id
    q_lens: list[int]
    context_lens_host: list[int]
    block_tables_host: list[list[int]]
    max_q_len: int
    max_context_len: int
    num_splits: int = 1  # split-KV parts for the Triton decode kernel (set by its prepare)
    # Batch-1 CUDA graphs: projections planned for split-K GEMV return partial sums that the next
    # kernel reduces (engine/model.py `_project`, engine/triton_splitk.py).
    split_gemv: bool = False
    # Backend-specific launch data (e.g. the Triton q-tile -> sequence map), filled by the backend.
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def num_seqs(self) -> int:
        return len(self.q_lens)

    @property
    def is_decode_only(self) -> bool:
        return self.max_q_len == 1


def build_metadata(
    q_lens: list[int],
    context_lens: list[int],
    block_tables: list[list[int]],
    block_size: int,
    device: torch.device,
    pad_block: int = 0,
) -> AttentionMetadata:
    """Build the metadata of one step from per-sequence host lists.

    `context_lens[b]` counts the sequence's keys after this step, so its new tokens occupy
    positions context_lens[b] - q_lens[b] .. context_lens[b] - 1 and must all fall inside the
    blocks of its table.
    """
    if not (len(q_lens) == len(context_lens) == len(block_tables)):
        raise ValueError(
            f"metadata lists disagree: {len(q_lens)} q_lens, {len(context_lens)} context_lens, "
            f"{len(block_tables)} block tables"
        )
    slots: list[int] = []
    cu = [0]
    for b, (n, ctx, table) in enumerate(zip(q_lens, context_lens, block_tables, strict=True)):
        if n < 1 or ctx < n:
            raise ValueError(
                f"sequence {b}: q_len={n} and context_len={ctx} (need 1 <= q_len <= context_len)"
            )
        if len(table) * block_size < ctx:
            raise ValueError(
                f"sequence {b}: {len(table)} blocks of {block_size} cannot hold {ctx} tokens of context"
            )
        if n <= 16:
            for pos in range(ctx - n, ctx):
                slots.append(table[pos // block_size] * block_size + pos % block_size)
        else:  # long prefills: vectorized (a Python loop costs ~0.3 us a token)
            pos = np.arange(ctx - n, ctx)
            slots.extend((np.asarray(table, dtype=np.int64)[pos // block_size] * block_size
                          + pos % block_size).tolist())  # fmt: skip
        cu.append(cu[-1] + n)
    return AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=device),
        context_lens=torch.tensor(context_lens, dtype=torch.int32, device=device),
        block_tables=torch.from_numpy(padded_tables(block_tables, pad_block)).to(device),
        q_lens=list(q_lens),
        context_lens_host=list(context_lens),
        block_tables_host=[list(t) for t in block_tables],
        max_q_len=max(q_lens, default=0),
        max_context_len=max(context_lens, default=0),
    )


def padded_tables(block_tables: list[list[int]], pad_block: int) -> np.ndarray:
    """[B, longest table] int32 with each row's table, padded with `pad_block`.

    Built with one fill and one masked store: padding Python lists and handing torch a nested list
    cost ~60 ns an element of the padded matrix, and a step's host preparation runs before the
    device has anything to do (H200 host Z: 3.5 ms of a 31 ms mixed step of 128 decodes beside a
    512-token chunk over a 4k prefix; on host AA the step went 25.2 -> 22.9 ms with this)."""
    lens = np.fromiter(map(len, block_tables), dtype=np.int64, count=len(block_tables))
    width = max(1, int(lens.max(initial=0)))
    out = np.full((len(block_tables), width), pad_block, dtype=np.int32)
    flat = np.fromiter(itertools.chain.from_iterable(block_tables), dtype=np.int32, count=int(lens.sum()))
    out[np.arange(width) < lens[:, None]] = flat  # row-major: each row's blocks in order
    return out


def write_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Scatter the new tokens' K/V ([T, kv_heads, head_dim]) into the pools at `slot_mapping`."""
    kv_heads, head_dim = k_cache.shape[-2], k_cache.shape[-1]
    k_cache.view(-1, kv_heads, head_dim).index_copy_(0, slot_mapping, k.to(k_cache.dtype))
    v_cache.view(-1, kv_heads, head_dim).index_copy_(0, slot_mapping, v.to(v_cache.dtype))


class AttentionBackend(Protocol):
    name: str

    def prepare(self, meta: AttentionMetadata) -> None:
        """Add backend launch data to `meta` once per step (shared by all layers)."""
        ...

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        """Write k/v ([T, kv_heads, D]) into the layer's pools, return attention output [T, heads, D]."""
        ...


def gather_context(cache: torch.Tensor, table: list[int], ctx: int) -> torch.Tensor:
    """The first `ctx` tokens of a sequence's K or V, [ctx, kv_heads, D], from its blocks."""
    block_size = cache.shape[1]
    nblk = -(-ctx // block_size)
    idx = torch.tensor(table[:nblk], dtype=torch.long, device=cache.device)
    return cache.index_select(0, idx).flatten(0, 1)[:ctx]


def paged_attention_reference(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float
) -> torch.Tensor:
    """Attention of the packed queries over their sequences' paged K/V (already written)."""
    num_heads = q.shape[1]
    kv_heads = k_cache.shape[2]
    group = num_heads // kv_heads
    out = torch.empty_like(q)
    start = 0
    for n, ctx, table in zip(meta.q_lens, meta.context_lens_host, meta.block_tables_host, strict=True):
        keys = gather_context(k_cache, table, ctx).to(q.dtype)
        vals = gather_context(v_cache, table, ctx).to(q.dtype)
        if group > 1:
            keys = keys.repeat_interleave(group, dim=1)
            vals = vals.repeat_interleave(group, dim=1)
        qs = q[start : start + n].transpose(0, 1)  # [H, n, D]
        # Query i sits at position ctx - n + i and may see keys 0 .. ctx - n + i.
        qpos = torch.arange(ctx - n, ctx, device=q.device)[:, None]
        kpos = torch.arange(ctx, device=q.device)[None, :]
        mask = kpos <= qpos
        o = F.scaled_dot_product_attention(
            qs, keys.transpose(0, 1), vals.transpose(0, 1), attn_mask=mask, scale=scale
        )
        out[start : start + n] = o.transpose(0, 1)
        start += n
    return out


class TorchPagedAttention:
    """Reference backend: index_copy for the KV write, per-sequence SDPA for attention."""

    name = "torch"

    def prepare(self, meta: AttentionMetadata) -> None:
        return None

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        write_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        return paged_attention_reference(q, k_cache, v_cache, meta, scale)
