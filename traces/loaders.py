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

This module is the public entry point: dispatch (`load_trace`, `detect_format`, `FORMATS`) and the
bundled slices. Each format lives in its own module (`traces.formats_azure`, `formats_mooncake`,
`formats_burstgpt`, `formats_own` for our schema and `write_trace`); the shared bad-row rules and
Trace assembly are in `traces.rows`, wall-clock parsing in `traces.wallclock`. Every public name
is re-exported here, so callers import from `traces.loaders` only.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Callable
from pathlib import Path

from traces.errors import TraceFormatError
from traces.formats_azure import AZURE_COLUMNS, load_azure
from traces.formats_burstgpt import BURSTGPT_COLUMNS, load_burstgpt
from traces.formats_mooncake import MOONCAKE_BLOCK_TOKENS, MOONCAKE_KEYS, load_mooncake
from traces.formats_own import OWN_COLUMNS, OWN_REQUIRED, load_csv, load_jsonl, write_trace
from traces.rows import DEFAULT_MAX_LEN
from traces.rows import MAX_SKIP_REASONS as MAX_SKIP_REASONS
from traces.schema import Trace
from traces.wallclock import parse_wallclock_ns

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

DATA_DIR = Path(__file__).resolve().parent / "data"
BUNDLED = {
    "azure_conv_2023": "azure_conv_2023_slice.csv",
    "mooncake_conv": "mooncake_conv_slice.jsonl",
}


# --------------------------------------------------------------------------------------------
# Dispatch and bundled data
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
