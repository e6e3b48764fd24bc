"""Simulation configuration: everything a run depends on, in one serialisable record."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

ASYNC_MODES = ("off", "graphs", "all")  # the engine loop's async scheduling modes


@dataclass
class SimConfig:
    # What runs where.
    model: str = "llama-3.1-8b"
    accelerator: str = "h100-sxm"
    cost_model: str = "analytic"  # or "calibrated" (fitted from a measured profile, see `profile`)
    profile: str | None = None  # profile file for the calibrated cost model
    dtype: str = "bf16"
    tp: int = 1
    pp: int = 1
    num_replicas: int = 1
    # Policies, by registered name.
    router: str = "round-robin"
    scheduler: str = "fcfs"
    # Scheduler budgets (vLLM names).
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    enable_chunked_prefill: bool = True
    # Schedule step k+1 while step k runs, as the engine's EngineConfig.async_scheduling: "off",
    # "graphs" (graph steps only) or "all"; pp = 1 only.
    async_scheduling: str = "off"
    # KV cache.
    block_size: int = 16
    num_kv_blocks: int | None = None  # per replica; None = what fits in device memory
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    max_model_len: int | None = None
    # Run control.
    seed: int = 0
    horizon: float | None = None  # stop the clock here (s); unfinished requests are reported
    jump: bool = True  # jump over steady decode stretches (same timeline, fewer events)
    record_iterations: bool = True

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> SimConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"{source}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> SimConfig:
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: line {e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(d, dict):
            raise ValueError(f"{p}: expected a JSON object of config fields")
        return cls.from_dict(d, str(p))

    def __post_init__(self) -> None:
        if self.async_scheduling not in ASYNC_MODES:
            raise ValueError(
                f"SimConfig.async_scheduling must be one of {ASYNC_MODES}, got {self.async_scheduling!r}"
            )
        if self.async_scheduling != "off" and self.pp > 1:
            raise ValueError("SimConfig.async_scheduling models the one-stage loop: it needs pp = 1")

    def to_dict(self) -> dict:
        return asdict(self)
