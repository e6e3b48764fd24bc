"""Read request traces into `Trace`: published formats as they are, plus our own CSV/JSONL schema.

Supported formats (`load_trace(path, format=...)`):

- ``azure``: Azure LLM inference traces 2023 and 2024 (Azure/AzurePublicDataset), CSV with header
  ``TIMESTAMP,ContextTokens,GeneratedTokens`` and wall-clock timestamps such as
  ``2023-11-16 18:15:46.6805900`` (7 fractional digits; an optional UTC offset is honoured).
- ``mooncake``: Mooncake FAST'25 traces (kvcache-ai/Mooncake), JSONL with ``timestamp`` (ms),
  ``input_length``, ``output_length``, ``hash_ids`` (one id per 512-token block, chained: equal id
  means equal prefix up to the end of that block).
- ``burstgpt``: BurstGPT (Wang et al., "BurstGPT: A Real-world Workload Dataset to Optimize LLM
  Serving Systems", 2024), CSV ``Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type``
  with Timestamp in seconds. ``Model`` becomes the request's ``tenant``.
- ``csv`` / ``jsonl``: our own schema, written by `write_trace` (see `OWN_COLUMNS`).

Every loader returns arrivals in seconds shifted so the first kept request arrives at 0.0, in file
order. Any bad row (malformed, missing field, non-integer or out-of-range length, negative or
decreasing time) raises `TraceFormatError` naming file, line and field, unless
``skip_bad_rows=True``: then the row is dropped and counted in ``trace.meta["skipped_rows"]``
(``{"count": n, "first": [reasons...]}``, present only when n > 0) for the caller to report.
Nothing is dropped silently.
Other meta keys: ``format``, ``rows_read``, ``time_offset_s`` (the first kept arrival in the
file's clock, in s) and, for wall-clock traces, ``start_time``. Any file may be gzipped (.gz).

Speed matters because real traces have millions of rows: CSV rows are split by the C `csv`
module and converted column-wise (``map(int, ...)`` into numpy), and wall-clock timestamps are
parsed vectorised on their bytes; the slow per-row path runs only to name the bad rows.
"""

from __future__ import annotations

import csv
import functools
import gc
import gzip
import io
import json
import math
import re
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

__all__ = [
    "BUNDLED",
    "DEFAULT_MAX_LEN",
    "FORMATS",
    "MOONCAKE_BLOCK_TOKENS",
    "OWN_COLUMNS",
    "TraceFormatError",
    "bundled",
    "bundled_path",
    "default_trace_path",
    "detect_format",
    "load_azure",
    "load_burstgpt",
    "load_csv",
    "load_jsonl",
    "load_mooncake",
    "load_trace",
    "parse_wallclock_ns",
    "write_trace",
]

DEFAULT_MAX_LEN = 10_000_000  # tokens; longer prompts/outputs are almost surely corrupt rows
MOONCAKE_BLOCK_TOKENS = 512  # Mooncake trace README: one hash id per 512-token block
MAX_SKIP_REASONS = 5  # how many skipped-row reasons to keep in meta

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
BURSTGPT_COLUMNS = ("Timestamp", "Request tokens", "Response tokens")
MOONCAKE_KEYS = ("timestamp", "input_length", "output_length", "hash_ids")
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
_INT64_MAX = 2**63 - 1

DATA_DIR = Path(__file__).resolve().parent / "data"
BUNDLED = {
    "azure_conv_2023": "azure_conv_2023_slice.csv",
    "mooncake_conv": "mooncake_conv_slice.jsonl",
}


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
# Wall-clock timestamps (Azure): 'YYYY-MM-DD HH:MM:SS[.fffffff][Z|+HH:MM]' -> int ns since epoch
# --------------------------------------------------------------------------------------------

_WALLCLOCK_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}(?::?\d{2})?)?"
)
_WALLCLOCK_EXPECTED = "a wall-clock time like '2023-11-16 18:15:46.6805900' (optional +HH:MM offset)"
_MONTH_DAYS = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)
_NS = 1_000_000_000


def _days_from_civil(y: Any, m: Any, d: Any) -> Any:
    """Days since 1970-01-01 of a proleptic Gregorian date; works on ints and numpy int arrays.

    Algorithm from Howard Hinnant, "chrono-Compatible Low-Level Date Algorithms" (days_from_civil),
    written with floor division so it vectorises.
    """
    y = y - (m <= 2)
    era = y // 400
    yoe = y - era * 400
    mp = (m + 9) % 12
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _days_in_month(y: Any, m: Any) -> Any:
    leap = (y % 4 == 0) & ((y % 100 != 0) | (y % 400 == 0))
    return _MONTH_DAYS[m - 1] + ((m == 2) & leap)


def parse_wallclock_ns(s: str) -> int:
    """One timestamp to integer nanoseconds since 1970-01-01 (UTC when an offset is given).

    Integer nanoseconds keep all 7 fractional digits of the Azure traces exactly, which a float of
    epoch seconds (about 0.2 us resolution in 2023) would not.
    """
    m = _WALLCLOCK_RE.fullmatch(s.strip())
    if m is None:
        raise ValueError(f"expected {_WALLCLOCK_EXPECTED}, got {s!r}")
    y, mo, d, hh, mi, ss = (int(g) for g in m.groups()[:6])
    if not 1 <= mo <= 12 or not 1 <= d <= int(_days_in_month(y, mo)):
        raise ValueError(f"expected a valid calendar date, got {s!r}")
    if hh > 23 or mi > 59 or ss > 59:
        raise ValueError(f"expected a valid time of day, got {s!r}")
    frac, tz = m.group(7), m.group(8)
    ns = (((_days_from_civil(y, mo, d) * 24 + hh) * 60 + mi) * 60 + ss) * _NS
    if frac:
        ns += int(frac.ljust(9, "0"))
    if tz and tz != "Z":
        digits = tz[1:].replace(":", "")
        off_h, off_m = int(digits[:2]), int(digits[2:] or 0)
        if off_h > 23 or off_m > 59:
            raise ValueError(f"expected a valid UTC offset, got {s!r}")
        off = (off_h * 3600 + off_m * 60) * _NS
        ns -= off if tz[0] == "+" else -off
    return ns


def _wallclock_layout(s: str) -> tuple[list[int], dict[int, bytes], int, int, int] | None:
    """Byte layout of a well-formed timestamp: digit positions, literal positions and sub-fields."""
    m = _WALLCLOCK_RE.fullmatch(s)
    if m is None or not s.isascii():
        return None
    digits = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]
    literal = {4: b"-", 7: b"-", 10: b" T", 13: b":", 16: b":"}
    frac_len = len(m.group(7) or "")
    pos = 19
    if frac_len:
        literal[19] = b"."
        digits += list(range(20, 20 + frac_len))
        pos = 20 + frac_len
    tz = m.group(8) or ""
    tz_pos = pos
    if tz == "Z":
        literal[pos] = b"Z"
    elif tz:
        literal[pos] = b"+-"
        digits += [pos + 1, pos + 2]
        if len(tz) == 6:
            literal[pos + 3] = b":"
            digits += [pos + 4, pos + 5]
        elif len(tz) == 5:
            digits += [pos + 3, pos + 4]
    return digits, literal, frac_len, tz_pos, len(tz)


def _wallclock_col(values: Sequence[str], lines: np.ndarray, field: str, probs: _Problems) -> np.ndarray:
    """Timestamps to int64 ns, vectorised per group of equal-length strings sharing one layout."""
    n = len(values)
    out = np.zeros(n, dtype=np.int64)
    lens = np.fromiter(map(len, values), dtype=np.int64, count=n)
    slow: list[np.ndarray] = []
    for length in np.unique(lens):
        idx = np.flatnonzero(lens == length)
        layout = _wallclock_layout(values[idx[0]])
        if layout is None:
            slow.append(idx)
            continue
        group = values if len(idx) == n else [values[i] for i in idx.tolist()]
        try:
            raw = np.array(group, dtype=f"S{int(length)}")
        except UnicodeEncodeError:
            slow.append(idx)
            continue
        b = raw.view(np.uint8).reshape(len(idx), int(length))
        digit_pos, literal, frac_len, tz_pos, tz_len = layout
        dig = b[:, digit_pos]
        ok = np.all((dig >= 48) & (dig <= 57), axis=1)
        for p, allowed in literal.items():
            ok &= np.isin(b[:, p], np.frombuffer(allowed, dtype=np.uint8))

        def num(p: int, k: int, b: np.ndarray = b) -> np.ndarray:
            v = np.zeros(len(b), dtype=np.int64)
            for j in range(k):
                v = v * 10 + (b[:, p + j].astype(np.int64) - 48)
            return v

        y, mo, dd = num(0, 4), num(5, 2), num(8, 2)
        hh, mi, ss = num(11, 2), num(14, 2), num(17, 2)
        mo_safe = np.clip(mo, 1, 12)
        ok &= (mo >= 1) & (mo <= 12) & (dd >= 1) & (dd <= _days_in_month(y, mo_safe))
        ok &= (hh <= 23) & (mi <= 59) & (ss <= 59)
        ns = (((_days_from_civil(y, mo_safe, dd) * 24 + hh) * 60 + mi) * 60 + ss) * _NS
        if frac_len:
            ns += num(20, frac_len) * 10 ** (9 - frac_len)
        if tz_len > 1:
            off_h = num(tz_pos + 1, 2)
            off_m = num(tz_pos + (4 if tz_len == 6 else 3), 2) if tz_len > 3 else 0
            ok &= (off_h <= 23) & (off_m <= 59)
            sign = np.where(b[:, tz_pos] == ord("+"), 1, -1)
            ns -= sign * (off_h * 3600 + off_m * 60) * _NS
        out[idx[ok]] = ns[ok]
        slow.append(idx[~ok])
    for i in np.concatenate(slow) if slow else ():
        try:
            out[i] = parse_wallclock_ns(values[i])
        except ValueError as e:
            probs.add(lines[i], field, str(e))
    return out


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
# Published formats
# --------------------------------------------------------------------------------------------


@_fast_load
def load_azure(path: str | Path, *, skip_bad_rows: bool = False, max_len: int = DEFAULT_MAX_LEN) -> Trace:
    """Azure LLM inference trace 2023/2024 CSV (Patel et al., "Splitwise", ISCA 2024; Stojkovic et al.,
    "DynamoLLM", HPCA 2025). ``meta["start_time"]`` keeps the first kept request's wall-clock time."""
    path = Path(path)
    probs = _Problems(path)
    tab = _read_csv(path, probs, AZURE_COLUMNS, None)
    ts = _wallclock_col(tab.columns["TIMESTAMP"], tab.lines, "TIMESTAMP", probs)
    prompt = _int_col(tab.columns["ContextTokens"], tab.lines, "ContextTokens", probs, "token count")
    output = _int_col(tab.columns["GeneratedTokens"], tab.lines, "GeneratedTokens", probs, "token count")
    _check_lengths(prompt, tab.lines, "ContextTokens", probs, max_len)
    _check_lengths(output, tab.lines, "GeneratedTokens", probs, max_len)
    return _finish(path, "azure", probs, tab.lines, ts, 1e9, "TIMESTAMP", prompt, output, skip_bad_rows)


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


# --------------------------------------------------------------------------------------------
# Our own schema
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Dispatch, writing, bundled data
# --------------------------------------------------------------------------------------------

FORMATS: dict[str, Callable[..., Trace]] = {
    "azure": load_azure,
    "mooncake": load_mooncake,
    "burstgpt": load_burstgpt,
    "csv": load_csv,
    "jsonl": load_jsonl,
}


def _first_line(path: Path) -> tuple[int, str]:
    try:
        f = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
        with f:
            for ln, raw in enumerate(f, start=1):
                s = raw.decode("utf-8-sig", errors="replace").strip()
                if s:
                    return ln, s
    except OSError as e:
        raise TraceFormatError(path, None, None, f"cannot read file ({e})") from e
    raise TraceFormatError(path, None, None, "empty file; expected a trace")


def detect_format(path: str | Path) -> str:
    """Name of the format in `FORMATS`, from the first non-blank line (CSV header or JSON keys)."""
    path = Path(path)
    ln, first = _first_line(path)
    if first.startswith("{"):
        try:
            keys = set(json.loads(first))
        except ValueError as e:
            raise TraceFormatError(path, ln, None, "malformed JSON; expected one JSON object per line") from e
        if {"timestamp", "input_length", "output_length"} <= keys:
            return "mooncake"
        if set(OWN_REQUIRED) <= keys:
            return "jsonl"
        raise TraceFormatError(
            path,
            ln,
            None,
            f"unrecognised JSON keys {sorted(keys)}; expected Mooncake ({', '.join(MOONCAKE_KEYS)}) "
            f"or our schema ({', '.join(OWN_REQUIRED)}, ...)",
        )
    header = {h.strip() for h in next(csv.reader([first]))}
    for fmt, cols in (("azure", AZURE_COLUMNS), ("burstgpt", BURSTGPT_COLUMNS), ("csv", OWN_REQUIRED)):
        if set(cols) <= header:
            return fmt
    raise TraceFormatError(
        path,
        ln,
        None,
        f"unrecognised header {first!r}; expected Azure ({','.join(AZURE_COLUMNS)}), BurstGPT "
        f"({','.join(BURSTGPT_COLUMNS)}, ...) or our schema ({','.join(OWN_REQUIRED)}, ...)",
    )


def load_trace(
    path: str | Path, format: str = "auto", *, skip_bad_rows: bool = False, max_len: int = DEFAULT_MAX_LEN
) -> Trace:
    """Load any supported trace; ``format="auto"`` detects it from the header or JSON keys."""
    path = Path(path)
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in FORMATS:
        raise ValueError(f"unknown trace format {format!r}; expected 'auto' or one of {', '.join(FORMATS)}")
    return FORMATS[fmt](path, skip_bad_rows=skip_bad_rows, max_len=max_len)


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


def default_trace_path() -> Path:
    """The bundled default trace: first 600 requests of the Azure 2023 conversation trace."""
    return bundled_path("azure_conv_2023")


def bundled_path(name: str) -> Path:
    """Path of a bundled trace slice by short name (`BUNDLED` keys) or file name."""
    file = BUNDLED.get(name) or BUNDLED.get(name.split(".")[0].removesuffix("_slice")) or name
    p = DATA_DIR / file
    if file not in BUNDLED.values() or not p.is_file():
        raise ValueError(f"no bundled trace {name!r}; expected one of {', '.join(BUNDLED)}")
    return p


def bundled(name: str) -> Trace:
    """A bundled trace slice, loaded (see traces/data/ATTRIBUTION.md for sources and licences)."""
    return load_trace(bundled_path(name))
