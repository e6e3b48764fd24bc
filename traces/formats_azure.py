"""Azure LLM inference traces 2023 and 2024 (Azure/AzurePublicDataset): CSV with header
``TIMESTAMP,ContextTokens,GeneratedTokens`` and wall-clock timestamps such as
``2023-11-16 18:15:46.6805900`` (7 fractional digits; an optional UTC offset is honoured)."""

from __future__ import annotations

from pathlib import Path

from traces.rows import DEFAULT_MAX_LEN, _check_lengths, _fast_load, _finish, _int_col, _Problems, _read_csv
from traces.schema import Trace
from traces.wallclock import _wallclock_col

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


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
