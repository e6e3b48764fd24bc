"""Wall-clock timestamps (Azure traces): 'YYYY-MM-DD HH:MM:SS[.fffffff][Z|+HH:MM]' -> int ns since epoch.

`parse_wallclock_ns` parses one string; `_wallclock_col` parses a whole CSV column vectorised on
its bytes (millions of rows), falling back to the per-string parser only for rows that do not fit
the common layout, so a bad one is named with the parser's message.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from traces.rows import _Problems

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
