"""Our own trace schema (`OWN_COLUMNS`), as CSV or JSONL: reading it (`load_csv`, `load_jsonl`)
and writing it (`write_trace`), kept together so what we write is what we read back."""

from __future__ import annotations

import csv
import gzip
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from traces.rows import (
    _INT64_MAX,
    DEFAULT_MAX_LEN,
    _BadField,
    _check_hash_count,
    _check_lengths,
    _check_time,
    _convert_col,
    _fast_load,
    _finish,
    _int_col,
    _j_ids,
    _j_int,
    _j_time,
    _Problems,
    _read_csv,
    _read_jsonl,
)
from traces.schema import Trace

OWN_REQUIRED = ("arrival", "prompt_len", "output_len")
OWN_COLUMNS = (
    "arrival",
    "prompt_len",
    "output_len",
    "prefix_hashes",
    "hash_block_tokens",
    "priority",
    "tenant",
    "ttft_slo",
    "tpot_slo",
    "e2e_slo",
    "prompt_token_ids",
)
_SLO_COLUMNS = ("ttft_slo", "tpot_slo", "e2e_slo")


def _uniform_block(blocks: np.ndarray, present: np.ndarray, lines: np.ndarray, probs: _Problems) -> int:
    """All rows that give hash_block_tokens must agree: a Trace has one block size."""
    idx = np.flatnonzero(present & ~probs.bad_mask(lines))
    if len(idx) == 0:
        return 0
    first = int(blocks[idx[0]])
    for i in idx[blocks[idx] != first]:
        probs.add(
            lines[i],
            "hash_block_tokens",
            f"expected the same block size as earlier rows ({first}), got {blocks[i]}",
        )
    return first


def _check_hash_rows(
    hashes: list[tuple[int, ...]],
    prompt: np.ndarray,
    row_blocks: np.ndarray,
    block: int,
    lines: np.ndarray,
    probs: _Problems,
) -> None:
    """Every row with prefix hashes states its block size (0 = not given), and has no more blocks
    than its prompt can fill."""
    has = np.fromiter(map(len, hashes), dtype=np.int64, count=len(hashes)) > 0
    for i in np.flatnonzero(has & (row_blocks == 0)):
        probs.add(
            lines[i], "hash_block_tokens", "missing; expected a block size >= 1 for a row with prefix_hashes"
        )
    _check_hash_count(hashes, prompt, block, lines, "prefix_hashes", probs)


def _id_tuple(s: str) -> tuple[int, ...]:
    ids = tuple(map(int, s.split()))
    if any(x < 0 or x > _INT64_MAX for x in ids):
        raise ValueError
    return ids


@_fast_load
def load_csv(path: str | Path, *, skip_bad_rows: bool = False, max_len: int = DEFAULT_MAX_LEN) -> Trace:
    """Our CSV schema (`OWN_COLUMNS`); ids lists are space-separated, empty optional cells mean unset."""
    path = Path(path)
    probs = _Problems(path)
    tab = _read_csv(path, probs, OWN_REQUIRED, OWN_COLUMNS)
    c, lines = tab.columns, tab.lines
    n = len(lines)
    arrival = _convert_col(c["arrival"], lines, "arrival", probs, float, np.float64, "a time in seconds")
    _check_time(arrival, lines, "arrival", probs)
    prompt = _int_col(c["prompt_len"], lines, "prompt_len", probs, "token count")
    output = _int_col(c["output_len"], lines, "output_len", probs, "token count")
    _check_lengths(prompt, lines, "prompt_len", probs, max_len)
    _check_lengths(output, lines, "output_len", probs, max_len)
    extra: dict[str, Any] = {}
    if "priority" in c:
        extra["priority"] = _convert_col(
            c["priority"], lines, "priority", probs, int, np.int64, "an integer", empty=0
        )
    if "tenant" in c:
        extra["tenant"] = list(c["tenant"])
    for name in _SLO_COLUMNS:
        if name in c:
            v = _convert_col(
                c[name], lines, name, probs, float, np.float64, "a time in seconds", empty=np.nan
            )
            for i in np.flatnonzero(~np.isnan(v) & ~(np.isfinite(v) & (v > 0))):
                probs.add(
                    lines[i], name, f"expected a finite SLO in seconds > 0 or an empty cell, got {v[i]}"
                )
            extra[name] = v
    block = 0
    blocks = np.zeros(n, dtype=np.int64)
    if "hash_block_tokens" in c:
        present = np.fromiter((bool(s.strip()) for s in c["hash_block_tokens"]), dtype=bool, count=n)
        blocks = _convert_col(
            c["hash_block_tokens"], lines, "hash_block_tokens", probs, int, np.int64, "an integer", empty=0
        )
        for i in np.flatnonzero(present & (blocks < 1)):
            probs.add(lines[i], "hash_block_tokens", f"expected a block size >= 1 token, got {blocks[i]}")
        block = _uniform_block(blocks, present, lines, probs)
    for name in ("prefix_hashes", "prompt_token_ids"):
        if name not in c:
            continue
        ids: list[tuple[int, ...]] = [()] * n
        for i, s in enumerate(c[name]):
            try:
                ids[i] = _id_tuple(s)
            except (ValueError, OverflowError):
                probs.add(lines[i], name, f"expected space-separated integers >= 0, got {s!r}")
        extra[name] = ids
    if "prefix_hashes" in extra:
        _check_hash_rows(extra["prefix_hashes"], prompt, blocks, block, lines, probs)
    if "prompt_token_ids" in extra:
        _check_token_ids(extra["prompt_token_ids"], prompt, lines, probs)
    return _finish(
        path, "csv", probs, lines, arrival, 1.0, "arrival", prompt, output, skip_bad_rows, extra, block
    )


def _check_token_ids(
    ids: list[tuple[int, ...]], prompt: np.ndarray, lines: np.ndarray, probs: _Problems
) -> None:
    counts = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    for i in np.flatnonzero(counts != prompt):
        probs.add(
            lines[i], "prompt_token_ids", f"expected prompt_len = {prompt[i]} token ids, got {counts[i]}"
        )


@_fast_load
def load_jsonl(path: str | Path, *, skip_bad_rows: bool = False, max_len: int = DEFAULT_MAX_LEN) -> Trace:
    """Our JSONL schema: one object per line with `OWN_COLUMNS` keys; absent or null means unset."""
    path = Path(path)
    probs = _Problems(path)
    objs, lines = _read_jsonl(path, probs)
    n = len(objs)
    arrival = np.zeros(n)
    prompt = np.ones(n, dtype=np.int64)
    output = np.ones(n, dtype=np.int64)
    priority = np.zeros(n, dtype=np.int64)
    tenant = [""] * n
    slos = {name: np.full(n, np.nan) for name in _SLO_COLUMNS}
    blocks = np.zeros(n, dtype=np.int64)
    ids: dict[str, list[tuple[int, ...] | None]] = {"prefix_hashes": [()] * n, "prompt_token_ids": [None] * n}
    seen: set[str] = set()
    allowed = set(OWN_COLUMNS)
    tok = "a token count"
    for i, raw in enumerate(objs):
        obj = {k: v for k, v in raw.items() if v is not None}
        try:
            unknown = sorted(set(obj) - allowed)
            if unknown:
                raise _BadField(unknown[0], f"unknown key; expected only these: {', '.join(OWN_COLUMNS)}")
            seen.update(obj)
            arrival[i] = _j_time(obj, "arrival", "a time in seconds")
            prompt[i] = _j_int(obj, "prompt_len", tok, 1, max_len)
            output[i] = _j_int(obj, "output_len", tok, 1, max_len)
            if "priority" in obj:
                priority[i] = _j_int(obj, "priority", "an integer")
            if "tenant" in obj:
                if not isinstance(obj["tenant"], str):
                    raise _BadField("tenant", f"expected a string, got {obj['tenant']!r}")
                tenant[i] = obj["tenant"]
            for name in _SLO_COLUMNS:
                if name in obj:
                    v = obj[name]
                    if (
                        isinstance(v, bool)
                        or not isinstance(v, (int, float))
                        or not (math.isfinite(v) and v > 0)
                    ):
                        raise _BadField(name, f"expected a finite SLO in seconds > 0 or null, got {v!r}")
                    slos[name][i] = v
            if "hash_block_tokens" in obj:
                blocks[i] = _j_int(obj, "hash_block_tokens", "a block size in tokens", 1)
            for name in ids:
                if name in obj:
                    ids[name][i] = _j_ids(obj, name, "ids")
        except _BadField as e:
            probs.add(lines[i], e.field, e.problem)
    extra: dict[str, Any] = {}
    if "priority" in seen:
        extra["priority"] = priority
    if "tenant" in seen:
        extra["tenant"] = tenant
    for name in _SLO_COLUMNS:
        if name in seen:
            extra[name] = slos[name]
    block = _uniform_block(blocks, blocks > 0, lines, probs)
    if "prefix_hashes" in seen:
        hashes = ids["prefix_hashes"]
        _check_hash_rows(hashes, prompt, blocks, block, lines, probs)  # type: ignore[arg-type]
        extra["prefix_hashes"] = hashes
    if "prompt_token_ids" in seen:
        tids = ids["prompt_token_ids"]
        for i in range(n):
            if tids[i] is None:
                probs.add(
                    lines[i],
                    "prompt_token_ids",
                    "missing; other rows have token ids, expected them on every row",
                )
                tids[i] = ()
        _check_token_ids(tids, prompt, lines, probs)  # type: ignore[arg-type]
        extra["prompt_token_ids"] = tids
    return _finish(
        path, "jsonl", probs, lines, arrival, 1.0, "arrival", prompt, output, skip_bad_rows, extra, block
    )


def _csv_cells(name: str, values: list[Any]) -> list[Any]:
    """CSV cells of one column: id lists space-separated, unset values empty."""
    if name in ("prefix_hashes", "prompt_token_ids"):
        return [" ".join(map(str, ids)) if ids else "" for ids in values]
    return ["" if v is None else v for v in values]


def write_trace(trace: Trace, path: str | Path) -> Path:
    """Write our CSV or JSONL schema (chosen by suffix: .csv, .jsonl, optionally + .gz).

    Floats are written with repr (shortest round-tripping form), so `load_trace` reads back the
    same values; loading shifts arrivals so the first is 0.0, as for every loader.
    """
    path = Path(path)
    kind = path.suffixes[-2] if path.suffix == ".gz" and len(path.suffixes) > 1 else path.suffix
    if kind not in (".csv", ".jsonl"):
        raise ValueError(f"{path}: expected a .csv or .jsonl file name (optionally .gz) to choose the format")
    n = len(trace)
    cols: dict[str, list[Any]] = {
        "arrival": trace.arrival.tolist(),
        "prompt_len": trace.prompt_len.tolist(),
        "output_len": trace.output_len.tolist(),
    }
    if trace.prefix_hashes is not None:
        cols["prefix_hashes"] = list(trace.prefix_hashes)
        cols["hash_block_tokens"] = [trace.hash_block_tokens or None] * n
    elif trace.hash_block_tokens:
        cols["hash_block_tokens"] = [trace.hash_block_tokens] * n
    if trace.priority is not None:
        cols["priority"] = np.asarray(trace.priority, dtype=np.int64).tolist()
    if trace.tenant is not None:
        cols["tenant"] = list(trace.tenant)
    for name in _SLO_COLUMNS:
        v = getattr(trace, name)
        if v is not None:
            cols[name] = [None if math.isnan(x) else x for x in np.asarray(v, dtype=np.float64).tolist()]
    if trace.prompt_token_ids is not None:
        cols["prompt_token_ids"] = list(trace.prompt_token_ids)
    names = list(cols)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8", newline="") as f:  # type: ignore[operator]
        if kind == ".csv":
            w = csv.writer(f, lineterminator="\n")
            w.writerow(names)
            w.writerows(zip(*(_csv_cells(k, cols[k]) for k in names), strict=True))
        else:
            for row in zip(*(cols[k] for k in names), strict=True):
                obj = {
                    k: (list(map(int, v)) if isinstance(v, tuple) else v)
                    for k, v in zip(names, row, strict=True)
                    if v is not None
                }
                f.write(json.dumps(obj, separators=(",", ":")) + "\n")
    return path
