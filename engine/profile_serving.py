"""The serving phase of a profile: the engine's real loop under a ramp of synthetic load.

The grid (engine/profiler.py) times each iteration shape in isolation. Two things only show up
when the engine serves: the CPU phases of its loop run several times slower than in a tight
timing loop (after every wait on the device the host's caches and clocks are cold), and steps
meet shapes the grid does not hold (uneven decode contexts, chunks over cached prefixes next to
many decodes). So the profile ends with a short replay through `LLMEngine.replay`, whose step log
(`ServingStep` records) the calibrated cost model fits with the grid.

The workload is synthetic and seeded, unrelated to any validation trace: groups of requests
sharing a system prompt (SGLang's generated-shared-prefix benchmark), log-normal suffix and output
lengths, and Poisson arrivals whose rate ramps linearly from 20% to 120% of a capacity estimated
from the grid samples, so that the log spans light load (small decode batches) to overload (full
batches, long queues, chunked prefills beside many decodes).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from backends.profile import ServingStep, ShapeSample
from traces.generators import LogNormal, shared_prefix_trace
from traces.schema import Trace
from traces.transforms import replace_arrivals

if TYPE_CHECKING:
    from engine.llm_engine import LLMEngine

RAMP = (0.2, 1.2)  # arrival rate at the start and at the end, as fractions of the estimated capacity


def workload_lengths(max_model_len: int) -> dict[str, int]:
    """Prefix, suffix and output sizes of the workload, scaled down for short context windows."""
    prefix = min(1024, max_model_len // 8)
    suffix = max(1, min(384, max_model_len // 8))
    output = max(1, min(128, max_model_len // 16))
    out_cap = max(1, min(1024, max_model_len // 4))
    suffix_cap = max(1, max_model_len - prefix - out_cap)
    return {
        "prefix": prefix, "suffix": suffix, "suffix_cap": suffix_cap, "output": output, "output_cap": out_cap
    }


def estimate_capacity(samples: list[ShapeSample], mean_new_prompt: float, mean_output: float) -> float:
    """Requests/s the engine could serve, roughly: each request's uncached prompt at the best
    prefill rate of the grid plus its output at the best decode rate (tokens/s)."""
    pre = [s.prefill[0][0] / s.median_s for s in samples if not s.num_decode and len(s.prefill) == 1]
    dec = [s.num_decode / s.median_s for s in samples if not s.prefill and s.num_decode]
    if not pre or not dec:
        raise ValueError("the serving phase needs prefill-only and decode-only grid samples to size its load")
    return 1.0 / (mean_new_prompt / max(pre) + mean_output / max(dec))


def ramp_arrivals(n: int, capacity: float, seconds: float, seed: int) -> np.ndarray:
    """Arrival times of a Poisson process whose rate rises linearly from RAMP[0] to RAMP[1] times
    `capacity` over `seconds` (unit-rate arrivals mapped through the inverse cumulative rate)."""
    lo, hi = RAMP[0] * capacity, RAMP[1] * capacity
    u = np.cumsum(np.random.default_rng([seed, 7]).exponential(1.0, n))
    a = (hi - lo) / (2.0 * seconds)  # cumulative rate: lo * t + a * t^2
    return (-lo + np.sqrt(lo * lo + 4.0 * a * u)) / (2.0 * a)


def serving_workload(
    samples: list[ShapeSample], max_model_len: int, seconds: float, seed: int = 0
) -> tuple[Trace, float]:
    """(trace, capacity estimate in req/s) of the ramp workload for a `seconds`-long serving phase."""
    if seconds <= 0:
        raise ValueError(f"serving phase length must be > 0 s, got {seconds}")
    ln = workload_lengths(max_model_len)
    suffix = LogNormal(sigma=1.0, median=ln["suffix"], max_len=ln["suffix_cap"])
    output = LogNormal(sigma=0.8, median=ln["output"], max_len=ln["output_cap"])
    mean_suffix = min(ln["suffix_cap"], ln["suffix"] * math.exp(0.5))
    mean_output = min(ln["output_cap"], ln["output"] * math.exp(0.32))
    # Shared prefixes are cached after their group's first request: count the suffix only.
    cap = estimate_capacity(samples, mean_suffix, mean_output)
    n = int(math.ceil(1.3 * cap * seconds * sum(RAMP) / 2)) + 8
    trace = shared_prefix_trace(
        n, 1.0, num_groups=16, prefix_len=ln["prefix"], suffix_dist=suffix, output_dist=output,
        seed=seed, name="profile-serving-ramp",
    )  # fmt: skip
    return replace_arrivals(trace, ramp_arrivals(n, cap, seconds, seed)), cap


def profile_serving(
    engine: LLMEngine, samples: list[ShapeSample], seconds: float, seed: int = 0
) -> tuple[list[ServingStep], str]:
    """Replay the ramp workload on `engine` for `seconds` of engine time, one step at a time (async
    scheduling off for it); returns the step log and a note for the profile header. The engine's
    block manager is reset before and after."""
    trace, cap = serving_workload(samples, engine.max_model_len, seconds, seed)
    engine.reset_kv()
    steps: list[ServingStep] = []
    overlap = engine.config.async_scheduling
    engine.config.async_scheduling = "off"  # the phases are timed one step at a time
    try:
        res = engine.replay(trace, seed=seed, time_limit=seconds, step_log=steps)
    finally:
        engine.config.async_scheduling = overlap
        engine.reset_kv()  # a replay cut by its time limit leaves sequences holding blocks
    done = int((res.requests["status"] == "finished").sum())
    ln = workload_lengths(engine.max_model_len)
    note = (
        f"serving phase: {len(steps)} iterations in {seconds:g} s of engine time, {done} requests "
        f"finished; workload: 16 groups sharing a {ln['prefix']}-token prefix, log-normal suffix "
        f"(median {ln['suffix']}) and output (median {ln['output']}) lengths, Poisson arrivals ramping "
        f"from {RAMP[0]:g}x to {RAMP[1]:g}x an estimated capacity of {cap:.3g} req/s (seed {seed})"
    )
    return steps, note
