"""BurstGPT traces (Wang et al., "BurstGPT: A Real-world Workload Dataset to Optimize LLM Serving
Systems", 2024): CSV ``Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type`` with
Timestamp in seconds. ``Model`` becomes the request's ``tenant``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from traces.rows import (
    DEFAULT_MAX_LEN,
    _check_lengths,
    _check_time,
    _convert_col,
    _fast_load,
    _finish,
    _int_col,
    _Problems,
    _read_csv,
)
from traces.schema import Trace

BURSTGPT_COLUMNS = ("Timestamp", "Request tokens", "Response tokens")


@_fast_load
def load_burstgpt(path: str | Path, *, skip_bad_rows: bool = False, max_len: int = DEFAULT_MAX_LEN) -> Trace:
    """BurstGPT CSV. Rows with 0 response tokens (failed requests in BurstGPT) are bad rows here,
    as every request must produce >= 1 token; use ``skip_bad_rows=True`` to drop and count them."""
    path = Path(path)
    probs = _Problems(path)
    tab = _read_csv(path, probs, BURSTGPT_COLUMNS, None)
    ts = _convert_col(
        tab.columns["Timestamp"], tab.lines, "Timestamp", probs, float, np.float64, "a time in seconds"
    )
    _check_time(ts, tab.lines, "Timestamp", probs)
    prompt = _int_col(tab.columns["Request tokens"], tab.lines, "Request tokens", probs, "token count")
    output = _int_col(tab.columns["Response tokens"], tab.lines, "Response tokens", probs, "token count")
    _check_lengths(prompt, tab.lines, "Request tokens", probs, max_len)
    _check_lengths(output, tab.lines, "Response tokens", probs, max_len)
    extra: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    if "Model" in tab.columns:
        extra["tenant"] = [s.strip() for s in tab.columns["Model"]]
    if "Log Type" in tab.columns:
        kinds, counts = np.unique(np.asarray(tab.columns["Log Type"], dtype=str), return_counts=True)
        meta["log_types_read"] = {str(k): int(c) for k, c in zip(kinds, counts, strict=True)}
    return _finish(
        path,
        "burstgpt",
        probs,
        tab.lines,
        ts,
        1.0,
        "Timestamp",
        prompt,
        output,
        skip_bad_rows,
        extra,
        meta=meta,
    )
