"""Derive a new Trace from an existing one: rescale time, cut a window, cap lengths, swap arrivals.

Every transform returns a new Trace (inputs are never modified) and appends a short description
to ``meta["transforms"]``, so a result file can say exactly which workload produced it.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from traces.schema import Trace

__all__ = ["cap_lengths", "head", "mean_rate", "replace_arrivals", "scale_to_rate", "time_window"]


def _derive(trace: Trace, idx: np.ndarray | None, note: str, **changes: Any) -> Trace:
    """Copy of `trace` (rows `idx`, or all) with `changes` applied and `note` recorded in meta."""
    out = trace.select(np.arange(len(trace)) if idx is None else idx)
    meta = dict(out.meta)
    meta["transforms"] = [*trace.meta.get("transforms", []), note]
    return replace(out, meta=meta, **changes)


def mean_rate(trace: Trace) -> float:
    """Mean arrival rate in requests/s: (n - 1) gaps over the span from first to last arrival.

    Counting gaps rather than requests makes a Poisson trace generated at rate r measure r.
    """
    if len(trace) < 2:
        raise ValueError(f"trace {trace.name!r}: need at least 2 requests to define an arrival rate")
    span = float(trace.arrival[-1] - trace.arrival[0])
    if span <= 0:
        raise ValueError(f"trace {trace.name!r}: all requests arrive at the same time; the rate is infinite")
    return (len(trace) - 1) / span


def scale_to_rate(trace: Trace, rate: float) -> Trace:
    """Stretch or compress time (about the first arrival) so the mean rate becomes `rate` req/s.

    Relative burstiness (the shape of the inter-arrival distribution, its CV) is unchanged.
    """
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be a finite number > 0 requests/s, got {rate}")
    factor = mean_rate(trace) / rate
    t0 = trace.arrival[0]
    return _derive(trace, None, f"scale_to_rate({rate:g})", arrival=t0 + (trace.arrival - t0) * factor)


def time_window(trace: Trace, start: float, end: float) -> Trace:
    """Requests with start <= arrival < end; times become seconds since `start`.

    Keeping the offset from `start` (instead of re-zeroing at the first request) preserves any
    idle time at the start of the window.
    """
    if not end > start:
        raise ValueError(f"time_window needs end > start, got start={start}, end={end}")
    idx = np.flatnonzero((trace.arrival >= start) & (trace.arrival < end))
    out = _derive(trace, idx, f"time_window({start:g}, {end:g})")
    out.arrival = out.arrival - start
    return out


def head(trace: Trace, n: int) -> Trace:
    """The first `n` requests (all of them if the trace is shorter)."""
    if n < 0:
        raise ValueError(f"head needs n >= 0, got {n}")
    return _derive(trace, np.arange(min(n, len(trace))), f"head({n})")


def replace_arrivals(trace: Trace, arrivals: np.ndarray) -> Trace:
    """Same requests (lengths, hashes, ...) at new arrival times, e.g. Poisson ones from
    `traces.generators.poisson_arrivals(len(trace), rate, seed)`."""
    a = np.asarray(arrivals, dtype=np.float64)
    if a.shape != (len(trace),):
        raise ValueError(f"replace_arrivals needs {len(trace)} arrival times, got shape {a.shape}")
    if len(a) and (not np.all(np.isfinite(a)) or a.min() < 0):
        raise ValueError("replace_arrivals needs finite arrival times >= 0")
    if np.any(np.diff(a) < 0):
        i = int(np.flatnonzero(np.diff(a) < 0)[0]) + 1
        raise ValueError(f"replace_arrivals needs non-decreasing times; arrivals[{i}] < arrivals[{i - 1}]")
    return _derive(trace, None, "replace_arrivals", arrival=a.copy())


def _truncate_hashes(
    hashes: tuple[int, ...], new_len: int, block: int, fresh: dict[tuple[int, int], int], next_id: list[int]
) -> tuple[int, ...]:
    """Hashes of a prompt cut to `new_len` tokens, keeping the ceil(len / block) convention.

    Whole blocks keep their ids. A block cut in the middle gets a new id shared by exactly the
    prompts whose original block had the same id and that are cut at the same offset: equal
    original id means equal tokens through that block, hence through the cut too.
    """
    whole, rem = divmod(new_len, block)
    kept = hashes[:whole]
    if rem and len(hashes) > whole:
        key = (hashes[whole], rem)
        if key not in fresh:
            fresh[key] = next_id[0]
            next_id[0] += 1
        kept += (fresh[key],)
    return kept


def cap_lengths(
    trace: Trace, max_prompt: int | None = None, max_output: int | None = None, max_total: int | None = None
) -> Trace:
    """Truncate prompts and outputs so that prompt <= max_prompt, output <= max_output and
    prompt + output <= max_total (e.g. a model's context length).

    For max_total the prompt is shortened first (down to 1 token), then the output, on the view
    that a serving system keeps the requested output and truncates the input. Prefix hashes and
    token ids are cut to match. ``meta["capped"]`` counts the affected requests.
    """
    for nm, v in (("max_prompt", max_prompt), ("max_output", max_output)):
        if v is not None and v < 1:
            raise ValueError(f"{nm} must be >= 1, got {v}")
    if max_total is not None and max_total < 2:
        raise ValueError(f"max_total must be >= 2 (one prompt and one output token), got {max_total}")
    p, o = trace.prompt_len.copy(), trace.output_len.copy()
    p0, o0 = p.copy(), o.copy()
    if max_prompt is not None:
        np.minimum(p, max_prompt, out=p)
    if max_output is not None:
        np.minimum(o, max_output, out=o)
    over_total = np.zeros(len(p), dtype=bool)
    if max_total is not None:
        over_total = p + o > max_total
        p = np.where(over_total, np.maximum(1, max_total - o), p)
        o = np.where(over_total, max_total - p, o)
    cut_p = p < p0
    counts = {
        "prompt": int(cut_p.sum()),
        "output": int((o < o0).sum()),
        "total": int(over_total.sum()),
        "requests": int((cut_p | (o < o0)).sum()),
    }
    changes: dict[str, Any] = {"prompt_len": p, "output_len": o}
    if trace.prefix_hashes is not None and trace.hash_block_tokens > 0 and cut_p.any():
        all_ids = [h for hs in trace.prefix_hashes for h in hs]
        next_id = [max(all_ids) + 1 if all_ids else 0]
        fresh: dict[tuple[int, int], int] = {}
        hashes = list(trace.prefix_hashes)
        for i in np.flatnonzero(cut_p):
            hashes[i] = _truncate_hashes(hashes[i], int(p[i]), trace.hash_block_tokens, fresh, next_id)
        changes["prefix_hashes"] = hashes
    if trace.prompt_token_ids is not None and cut_p.any():
        tids = list(trace.prompt_token_ids)
        for i in np.flatnonzero(cut_p):
            tids[i] = tids[i][: int(p[i])]
        changes["prompt_token_ids"] = tids
    note = f"cap_lengths(max_prompt={max_prompt}, max_output={max_output}, max_total={max_total})"
    out = _derive(trace, None, note, **changes)
    out.meta["capped"] = counts
    return out
