"""Mooncake FAST'25 traces (kvcache-ai/Mooncake): JSONL with ``timestamp`` (ms), ``input_length``,
``output_length``, ``hash_ids`` (one id per 512-token block, chained: equal id means equal prefix up
to the end of that block)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from traces.rows import (
    DEFAULT_MAX_LEN,
    _BadField,
    _check_hash_count,
    _fast_load,
    _finish,
    _j_ids,
    _j_int,
    _j_time,
    _Problems,
    _read_jsonl,
)
from traces.schema import Trace

MOONCAKE_BLOCK_TOKENS = 512  # Mooncake trace README: one hash id per 512-token block
MOONCAKE_KEYS = ("timestamp", "input_length", "output_length", "hash_ids")


@_fast_load
def load_mooncake(path: str | Path, *, skip_bad_rows: bool = False, max_len: int = DEFAULT_MAX_LEN) -> Trace:
    """Mooncake trace JSONL (Qin et al., "Mooncake", FAST 2025): ms timestamps, 512-token hash blocks."""
    path = Path(path)
    probs = _Problems(path)
    objs, lines = _read_jsonl(path, probs)
    n = len(objs)
    ts = np.zeros(n)
    prompt = np.ones(n, dtype=np.int64)
    output = np.ones(n, dtype=np.int64)
    hashes: list[tuple[int, ...]] = [()] * n
    tok = "a token count"
    for i, obj in enumerate(objs):
        try:
            ts[i] = _j_time(obj, "timestamp", "a time in milliseconds")
            prompt[i] = _j_int(obj, "input_length", tok, 1, max_len)
            output[i] = _j_int(obj, "output_length", tok, 1, max_len)
            if "hash_ids" not in obj:
                raise _BadField("hash_ids", "missing key; expected a list of prefix block ids")
            hashes[i] = _j_ids(obj, "hash_ids", "prefix block ids")
        except _BadField as e:
            probs.add(lines[i], e.field, e.problem)
    _check_hash_count(hashes, prompt, MOONCAKE_BLOCK_TOKENS, lines, "hash_ids", probs)
    return _finish(
        path,
        "mooncake",
        probs,
        lines,
        ts,
        1000.0,
        "timestamp",
        prompt,
        output,
        skip_bad_rows,
        {"prefix_hashes": hashes},
        hash_block_tokens=MOONCAKE_BLOCK_TOKENS,
    )
