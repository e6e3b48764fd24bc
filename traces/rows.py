"""Shared row-validation machinery for every trace loader: read text, CSV tables and JSON lines,
convert columns, check lengths, times and order, record bad rows, and assemble the `Trace`.

Each format module (`traces.formats_*`) only says which columns mean what; the rules for bad rows
live here so every format reports them the same way: `TraceFormatError` naming file, line and
field, or with ``skip_bad_rows=True`` a ``meta["skipped_rows"]`` summary. Nothing is dropped silently.

Speed matters because real traces have millions of rows: CSV rows are split by the C `csv`
module and converted column-wise (``map(int, ...)`` into numpy); the slow per-row path runs only
to name the bad rows.
"""

from __future__ import annotations

import csv
import functools
import gc
import gzip
import io
import json
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from traces.errors import TraceFormatError
from traces.schema import Trace

DEFAULT_MAX_LEN = 10_000_000  # tokens; longer prompts/outputs are almost surely corrupt rows
MAX_SKIP_REASONS = 5  # how many skipped-row reasons to keep in meta
_INT64_MAX = 2**63 - 1


_F = TypeVar("_F", bound=Callable[..., Trace])


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building millions of small row objects.

    None of them form cycles, yet each allocation burst triggers full generational scans: on a
    1M-row CSV that alone triples the parse time. Restores the previous state on exit.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _fast_load(fn: _F) -> _F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Trace:
        with _gc_paused():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Bad-row bookkeeping
# --------------------------------------------------------------------------------------------


class _Problems:
    """Bad rows found so far, keyed by line number; the first problem of a row is the one kept."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.by_line: dict[int, tuple[str | None, str]] = {}

    def __len__(self) -> int:
        return len(self.by_line)

    def add(self, line: int, field: str | None, problem: str) -> None:
        self.by_line.setdefault(int(line), (field, problem))

    def bad_mask(self, lines: np.ndarray) -> np.ndarray:
        if not self.by_line:
            return np.zeros(len(lines), dtype=bool)
        return np.isin(lines, np.fromiter(self.by_line, dtype=np.int64, count=len(self.by_line)))

    def error(self, line: int) -> TraceFormatError:
        field, problem = self.by_line[line]
        return TraceFormatError(self.path, line, field, problem)

    def summary(self) -> dict[str, Any]:
        first = sorted(self.by_line)[:MAX_SKIP_REASONS]
        return {
            "count": len(self.by_line),
            "first": [TraceFormatError.describe(self.path, ln, *self.by_line[ln]) for ln in first],
        }


def _settle(probs: _Problems, lines: np.ndarray, skip_bad_rows: bool) -> np.ndarray:
    """Raise on the earliest bad row, or (skipping) return indices of the good rows."""
    if probs and not skip_bad_rows:
        raise probs.error(min(probs.by_line))
    keep = np.flatnonzero(~probs.bad_mask(lines))
    if len(keep) == 0:
        detail = f"; {len(probs)} bad rows skipped, first: {probs.summary()['first'][0]}" if probs else ""
        raise TraceFormatError(probs.path, None, None, f"no valid requests in the file{detail}")
    return keep


# --------------------------------------------------------------------------------------------
# Reading text, CSV tables and JSON lines
# --------------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    """Whole file as text (gzip if it ends in .gz), BOM removed; decoding errors name the line."""
    try:
        data = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    except OSError as e:
        raise TraceFormatError(path, None, None, f"cannot read file ({e})") from e
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise TraceFormatError(path, line, None, f"not UTF-8 text ({e.reason}); expected a text trace") from e


@dataclass
class _CsvTable:
    header: list[str]
    header_line: int
    columns: dict[str, list[str]]
    lines: np.ndarray  # int64 line number of each well-formed data row


def _read_csv(
    path: Path, probs: _Problems, required: Sequence[str], allowed: Sequence[str] | None
) -> _CsvTable:
    """Split a CSV file into columns of strings; rows with the wrong field count become bad rows.

    ``allowed=None`` accepts extra columns (published formats grow columns); otherwise an unknown
    column is an error, so a typo in our own schema cannot be silently ignored.
    """
    text = _read_text(path)
    fast = _csv_rows_fast(text.split("\n"), probs)
    header, header_line, rows, lines = fast if fast is not None else _csv_rows_slow(text, probs)
    if header is None:
        raise TraceFormatError(
            path, None, None, f"empty file; expected a CSV header with {', '.join(required)}"
        )
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise TraceFormatError(path, header_line, name, "column appears twice in the header")
        seen.add(name)
        if allowed is not None and name not in allowed:
            raise TraceFormatError(
                path, header_line, name, f"unknown column; expected only these: {', '.join(allowed)}"
            )
    for name in required:
        if name not in seen:
            raise TraceFormatError(
                path, header_line, name, f"missing column; header must include {', '.join(required)}"
            )
    cols = {name: list(map(itemgetter(j), rows)) for j, name in enumerate(header)}
    return _CsvTable(header, header_line, cols, lines)


def _is_blank(row: list[str]) -> bool:
    return not row or (len(row) == 1 and not row[0].strip())


def _field_count_problem(header: list[str], got: int) -> str:
    return f"expected {len(header)} comma-separated fields ({','.join(header)}), got {got}"


_Rows = tuple[list[str] | None, int, list[list[str]], np.ndarray]


def _csv_rows_fast(src: list[str], probs: _Problems) -> _Rows | None:
    """Split all lines in one C-level pass. Returns None (use the slow path) if the csv module
    objects to a line or a quoted field spans lines: the lines were split without their endings,
    so such a field would lose its newline and line numbers could not be trusted."""
    reader = csv.reader(src)
    try:
        rows = list(reader)
    except csv.Error:
        return None
    if len(rows) != len(src):
        return None
    h = next((i for i, r in enumerate(rows) if not _is_blank(r)), None)
    if h is None:
        return None, 0, [], np.zeros(0, dtype=np.int64)
    header = [c.strip() for c in rows[h]]
    body = rows[h + 1 :]
    first_line = h + 2  # line number of body[0]
    lens = np.fromiter(map(len, body), dtype=np.int64, count=len(body))
    odd = np.flatnonzero(lens != len(header))
    for i in odd.tolist():
        if not _is_blank(body[i]):
            probs.add(first_line + i, None, _field_count_problem(header, len(body[i])))
    if len(odd):
        keep = np.flatnonzero(lens == len(header))
        return header, h + 1, [body[i] for i in keep.tolist()], keep + first_line
    return header, h + 1, body, np.arange(first_line, first_line + len(body), dtype=np.int64)


def _csv_rows_slow(text: str, probs: _Problems) -> _Rows:
    """Row by row from a newline-preserving stream (quoted newlines kept, any line ending),
    tracking the reader's line number and carrying on past csv errors."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    header_line = 0
    rows: list[list[str]] = []
    lines: list[int] = []
    while True:
        try:
            for row in reader:
                if _is_blank(row):
                    continue
                if header is None:
                    header = [h.strip() for h in row]
                    header_line = reader.line_num
                elif len(row) != len(header):
                    probs.add(reader.line_num, None, _field_count_problem(header, len(row)))
                else:
                    rows.append(row)
                    lines.append(reader.line_num)
            break
        except csv.Error as e:  # e.g. a NUL byte; the reader can carry on with the next line
            probs.add(reader.line_num, None, f"malformed CSV ({e})")
    return header, header_line, rows, np.asarray(lines, dtype=np.int64)


def _read_jsonl(path: Path, probs: _Problems) -> tuple[list[dict[str, Any]], np.ndarray]:
    """One JSON object per non-blank line; anything else is a bad row."""
    objs: list[dict[str, Any]] = []
    lines: list[int] = []
    loads = json.loads
    for ln, s in enumerate(_read_text(path).split("\n"), start=1):
        if not s.strip():
            continue
        try:
            obj = loads(s)
        except ValueError as e:
            msg = getattr(e, "msg", str(e))
            probs.add(ln, None, f"malformed JSON ({msg}); expected one JSON object per line")
            continue
        if not isinstance(obj, dict):
            probs.add(ln, None, f"expected a JSON object, got {type(obj).__name__}")
            continue
        objs.append(obj)
        lines.append(ln)
    if not objs and not probs:
        raise TraceFormatError(path, None, None, "empty file; expected one JSON object per line")
    return objs, np.asarray(lines, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Column converters (CSV): fast vectorised path, per-row path only to name the bad rows
# --------------------------------------------------------------------------------------------


def _convert_col(
    values: Sequence[str],
    lines: np.ndarray,
    field: str,
    probs: _Problems,
    conv: Callable[[str], Any],
    dtype: type,
    expected: str,
    empty: Any = None,
) -> np.ndarray:
    """Convert strings with `conv`; a failing cell is reported, or becomes `empty` if it is blank."""
    n = len(values)
    if empty is None:
        try:
            return np.fromiter(map(conv, values), dtype=dtype, count=n)
        except (ValueError, OverflowError):
            pass
    out = np.zeros(n, dtype=dtype)
    for i, v in enumerate(values):
        if empty is not None and not v.strip():
            out[i] = empty
            continue
        try:
            x = conv(v)
            if dtype is np.int64 and not -_INT64_MAX - 1 <= x <= _INT64_MAX:
                raise OverflowError
            out[i] = x
        except (ValueError, OverflowError):
            probs.add(lines[i], field, f"expected {expected}, got {v!r}")
    return out


def _int_col(values: Sequence[str], lines: np.ndarray, field: str, probs: _Problems, what: str) -> np.ndarray:
    return _convert_col(values, lines, field, probs, int, np.int64, f"an integer {what}")


def _check_lengths(arr: np.ndarray, lines: np.ndarray, field: str, probs: _Problems, max_len: int) -> None:
    for i in np.flatnonzero((arr < 1) | (arr > max_len)):
        probs.add(lines[i], field, f"expected a token count between 1 and {max_len}, got {arr[i]}")


def _check_time(times: np.ndarray, lines: np.ndarray, field: str, probs: _Problems) -> None:
    """Seconds-like times must be finite and >= 0."""
    for i in np.flatnonzero(~np.isfinite(times) | (times < 0)):
        probs.add(lines[i], field, f"expected a finite time >= 0, got {times[i]}")


def _check_order(times: np.ndarray, lines: np.ndarray, field: str, probs: _Problems, per_s: float) -> None:
    """Arrivals must not go backwards. Checked on rows still good, so a skipped row cannot hide one.

    A row earlier than the running maximum is the bad one (dropping it leaves the maximum
    unchanged), which matches reading the file top to bottom.
    """
    good = np.flatnonzero(~probs.bad_mask(lines))
    if len(good) < 2:
        return
    t = times[good]
    prev_max = np.maximum.accumulate(t)[:-1]
    for j in np.flatnonzero(t[1:] < prev_max):
        back = float(prev_max[j] - t[j + 1]) / per_s
        probs.add(
            lines[good[j + 1]],
            field,
            f"time goes backwards by {back:.6g} s; expected non-decreasing arrival times",
        )


# --------------------------------------------------------------------------------------------
# Assembling the Trace
# --------------------------------------------------------------------------------------------


def _take(col: np.ndarray | list | None, keep: np.ndarray) -> Any:
    """Rows `keep` of a column; a list is returned as is when no row was dropped."""
    if col is None:
        return None
    if isinstance(col, np.ndarray):
        return col[keep]
    if len(keep) == len(col):
        return col
    return [col[i] for i in keep.tolist()]


def _finish(
    path: Path,
    fmt: str,
    probs: _Problems,
    lines: np.ndarray,
    times: np.ndarray,
    per_s: float,
    time_field: str,
    prompt: np.ndarray,
    output: np.ndarray,
    skip_bad_rows: bool,
    extra: dict[str, Any] | None = None,
    hash_block_tokens: int = 0,
    meta: dict[str, Any] | None = None,
) -> Trace:
    """Check arrival order, drop or raise on bad rows, shift time to 0 and build the Trace.

    `times` are in the file's unit, `per_s` of them to a second (1e9 for integer ns wall-clock
    times, 1000 for Mooncake's ms); dividing the integer/float differences keeps them exact.
    """
    _check_order(times, lines, time_field, probs, per_s)
    keep = _settle(probs, lines, skip_bad_rows)
    t = times[keep]
    t0 = t[0]
    m: dict[str, Any] = {
        "format": fmt,
        "rows_read": len(keep) + len(probs),
        "time_offset_s": float(t0) / per_s,
    }
    if probs:  # only present when rows were dropped, so `if meta.get("skipped_rows")` means something
        m["skipped_rows"] = probs.summary()
    if t.dtype == np.int64:  # wall-clock ns: keep the start as a readable time (us precision)
        start = datetime(1970, 1, 1) + timedelta(microseconds=int(t0) // 1000)
        m["start_time"] = start.isoformat(sep=" ")
    m.update(meta or {})
    return Trace(
        arrival=(t - t0) / per_s,
        prompt_len=prompt[keep],
        output_len=output[keep],
        hash_block_tokens=hash_block_tokens,
        name=path.name.split(".")[0],
        source=str(path),
        meta=m,
        **{k: _take(v, keep) for k, v in (extra or {}).items()},
    )


def _check_hash_count(
    hashes: list[tuple[int, ...]],
    prompt: np.ndarray,
    block: int,
    lines: np.ndarray,
    field: str,
    probs: _Problems,
) -> None:
    """A prompt of L tokens has at most ceil(L / block) hashed blocks (Mooncake hashes the partial tail)."""
    if block <= 0:
        return
    counts = np.fromiter(map(len, hashes), dtype=np.int64, count=len(hashes))
    for i in np.flatnonzero(counts * block > prompt + block - 1):
        probs.add(
            lines[i],
            field,
            f"{counts[i]} hash blocks of {block} tokens exceed the prompt of {prompt[i]} tokens; "
            f"expected at most ceil(prompt / {block})",
        )


# --------------------------------------------------------------------------------------------
# JSON fields: one object at a time, the first bad field of a row is raised and recorded
# --------------------------------------------------------------------------------------------


class _BadField(Exception):
    def __init__(self, field: str | None, problem: str) -> None:
        self.field = field
        self.problem = problem


def _j_int(obj: dict[str, Any], key: str, what: str, lo: int | None = None, hi: int | None = None) -> int:
    if key not in obj:
        raise _BadField(key, f"missing key; expected {what}")
    v = obj[key]
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or not -_INT64_MAX - 1 <= v <= _INT64_MAX:
        raise _BadField(key, f"expected {what}, got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise _BadField(key, f"expected {what} between {lo} and {hi}, got {v}")
    return v


def _j_time(obj: dict[str, Any], key: str, what: str) -> float:
    if key not in obj:
        raise _BadField(key, f"missing key; expected {what}")
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise _BadField(key, f"expected {what} (a finite number >= 0), got {v!r}")
    return float(v)


def _j_ids(obj: dict[str, Any], key: str, what: str) -> tuple[int, ...]:
    v = obj[key]
    if not isinstance(v, list):
        raise _BadField(key, f"expected a list of {what}, got {type(v).__name__}")
    for x in v:
        if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x <= _INT64_MAX:
            raise _BadField(key, f"expected a list of {what} (integers >= 0), found {x!r}")
    return tuple(v)
