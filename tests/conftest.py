"""Shared fixtures: paths to the bundled and shared traces, and a toy cost model whose
iteration times can be computed by hand."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from backends.cost_model import BatchShape, OverlapParts, ParallelLayout

ROOT = Path(__file__).resolve().parents[1]
SHARED_TRACES = ROOT.parent / "shared" / "traces"


@pytest.fixture
def shared_traces() -> Path:
    if not SHARED_TRACES.is_dir():
        pytest.skip(f"shared traces not found at {SHARED_TRACES}")
    return SHARED_TRACES


@dataclass
class LinearCost:
    """t = fixed + per_token * tokens + per_ctx * (decode context + prefill context)."""

    fixed: float = 0.010
    per_token: float = 0.001
    per_ctx: float = 0.0
    name: str = "linear-test"
    layout: ParallelLayout = ParallelLayout()

    def stage_time(self, shape: BatchShape) -> float:
        ctx = shape.decode_context + sum(n + c for n, c in shape.prefill)
        return self.fixed + self.per_token * shape.num_tokens + self.per_ctx * ctx

    def decode_line(self, num_decode: int) -> tuple[float, float]:
        return self.fixed + self.per_token * num_decode, self.per_ctx

    def overlap_parts(self, shape: BatchShape) -> OverlapParts:
        return OverlapParts(0.0, 0.0, self.stage_time(shape), 0.0, True)


@pytest.fixture
def linear_cost() -> LinearCost:
    return LinearCost()
