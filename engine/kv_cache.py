"""The paged K/V pools and how many blocks fit.

Layout [layers, num_blocks + 1, block_size, kv_heads, head_dim] per pool (K and V apart):
one contiguous allocation per pool, a layer's slice is what its attention reads, and within a
block a token's heads are contiguous, which is what the Triton kernel's loads want.

The block count follows vLLM's rule: the engine may use `gpu_memory_utilization` of the
device's total memory; what is left of that after the weights (already resident when this
runs) and the activation peak of the largest step goes to KV. `num_blocks` is exactly the
number the block manager gets, so the simulator can mirror the engine's pool one to one.
One extra block past `num_blocks` is a scratch block the block manager never hands out;
padded rows of CUDA-graph batches write their K/V there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.device import Device
from engine.model_spec import DecoderSpec


def kv_bytes_per_block(spec: DecoderSpec, block_size: int, dtype: torch.dtype) -> int:
    """K and V bytes of one block over all layers."""
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * spec.num_layers * block_size * spec.num_kv_heads * spec.head_dim * elem


@dataclass(frozen=True)
class KVPlan:
    num_blocks: int
    bytes_per_block: int
    budget_bytes: int  # what was available for KV
    reason: str  # how the number was chosen, for logs and result files


def plan_num_blocks(
    spec: DecoderSpec,
    device: Device,
    dtype: torch.dtype,
    block_size: int,
    *,
    num_kv_blocks: int | None,
    gpu_memory_utilization: float,
    cpu_kv_fraction: float,
    activation_bytes: int,
) -> KVPlan:
    """Number of usable KV blocks (the scratch block excluded)."""
    per = kv_bytes_per_block(spec, block_size, dtype)
    if num_kv_blocks is not None:
        return KVPlan(num_kv_blocks, per, num_kv_blocks * per, "explicit num_kv_blocks")
    free, total = device.memory_info()
    if device.kind == "cpu":
        budget = int(free * cpu_kv_fraction) - activation_bytes
        reason = f"cpu: {cpu_kv_fraction:.2f} x {free / 2**30:.1f} GiB available - activations"
    else:
        used = total - free  # weights, CUDA context, anything else already resident
        budget = int(total * gpu_memory_utilization) - used - activation_bytes
        reason = (
            f"{device.kind}: {gpu_memory_utilization:.2f} x {total / 2**30:.1f} GiB "
            f"- {used / 2**30:.2f} GiB used "
            f"- {activation_bytes / 2**30:.2f} GiB activation peak"
        )
    n = budget // per - 1  # one block is the scratch block
    if n < 1:
        raise RuntimeError(
            f"no room for a KV cache on {device.kind}: budget {budget / 2**20:.1f} MiB, one block needs "
            f"{per / 2**20:.2f} MiB ({reason}); lower max_num_batched_tokens, raise the memory share, "
            f"or set num_kv_blocks"
        )
    return KVPlan(int(n), per, int(budget), reason)


class KVCache:
    """The K and V pools of all layers, plus the scratch block at index `num_blocks`."""

    def __init__(
        self, spec: DecoderSpec, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        if num_blocks < 1:
            raise ValueError(f"KV cache needs >= 1 block, got {num_blocks}")
        shape = (spec.num_layers, num_blocks + 1, block_size, spec.num_kv_heads, spec.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.scratch_block = num_blocks

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2
