"""Trace loaders: real published files, bundled slices, hand-written good and bad files, round trips."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from traces.errors import TraceFormatError
from traces.generators import Fixed, Uniform, shared_prefix_trace
from traces.loaders import (
    DATA_DIR,
    bundled,
    bundled_path,
    default_trace_path,
    detect_format,
    load_azure,
    load_burstgpt,
    load_csv,
    load_jsonl,
    load_mooncake,
    load_trace,
    parse_wallclock_ns,
    write_trace,
)
from traces.schema import Trace

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
BURST_HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def _assert_error(
    exc: pytest.ExceptionInfo[TraceFormatError], path: Path, line: int, field: str, *words: str
):
    err = exc.value
    msg = str(err)
    assert err.line == line and err.field == field, msg
    assert path.name in msg and f"line {line}" in msg and repr(field) in msg, msg
    for w in words:
        assert w in msg, msg


# ------------------------------------------------------------------------------------------
# Real shared traces and bundled slices
# ------------------------------------------------------------------------------------------


def test_azure_real_file(shared_traces: Path) -> None:
    path = shared_traces / "azure_llm_2023_conv.csv"
    t0 = time.perf_counter()
    tr = load_trace(path)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0
    assert len(tr) == 19366
    assert tr.meta["format"] == "azure" and "skipped_rows" not in tr.meta and tr.meta["rows_read"] == 19366
    assert tr.arrival[0] == 0.0 and np.all(np.diff(tr.arrival) >= 0)
    # rows 1-2: 18:15:46.6805900 (374, 44) and 18:15:50.9951690 (396, 109)
    assert tr.arrival[1] == pytest.approx(4.314579, abs=1e-9)
    assert (tr.prompt_len[:2].tolist(), tr.output_len[:2].tolist()) == ([374, 396], [44, 109])
    assert tr.meta["start_time"] == "2023-11-16 18:15:46.680590"
    assert 3400 < tr.arrival[-1] < 3700  # about one hour


def test_mooncake_real_file(shared_traces: Path) -> None:
    path = shared_traces / "mooncake_conversation.jsonl"
    t0 = time.perf_counter()
    tr = load_trace(path)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0
    assert len(tr) == 12031 and tr.meta["format"] == "mooncake"
    assert tr.hash_block_tokens == 512
    assert tr.prefix_hashes is not None and tr.prefix_hashes[0] == tuple(range(14))
    assert tr.request(0).prompt_len == 6758 and tr.request(0).output_len == 500
    assert tr.arrival[-1] == pytest.approx(3536.999)
    blocks = np.array([len(h) for h in tr.prefix_hashes])
    assert np.all(blocks == -(-tr.prompt_len // 512))


def test_bundled_slices_match_shared_files(shared_traces: Path) -> None:
    az = bundled("azure_conv_2023")
    full = load_azure(shared_traces / "azure_llm_2023_conv.csv")
    assert len(az) == 600
    np.testing.assert_array_equal(az.arrival, full.arrival[:600])
    np.testing.assert_array_equal(az.prompt_len, full.prompt_len[:600])
    mc = bundled("mooncake_conv_slice.jsonl")
    full_mc = load_mooncake(shared_traces / "mooncake_conversation.jsonl")
    assert len(mc) == 300 and mc.prefix_hashes == full_mc.prefix_hashes[:300]


def test_bundled_paths_and_attribution() -> None:
    assert default_trace_path() == bundled_path("azure_conv_2023")
    assert default_trace_path().is_file() and detect_format(default_trace_path()) == "azure"
    assert detect_format(bundled_path("mooncake_conv")) == "mooncake"
    text = (DATA_DIR / "ATTRIBUTION.md").read_text()
    for needle in ("AzureLLMInferenceTrace_conv.csv", "CC-BY 4.0", "Splitwise", "conversation_trace.jsonl",
                   "Apache License 2.0", "Mooncake"):  # fmt: skip
        assert needle in text
    with pytest.raises(ValueError, match="no bundled trace"):
        bundled_path("nope")


# ------------------------------------------------------------------------------------------
# Wall-clock timestamps
# ------------------------------------------------------------------------------------------


def _ref_ns(dt: datetime, frac9: int, offset_min: int | None) -> int:
    base = (dt.replace(microsecond=0) - datetime(1970, 1, 1)) // timedelta(seconds=1) * 10**9 + frac9
    return base - (offset_min or 0) * 60 * 10**9


@settings(max_examples=150, deadline=None)
@given(
    st.datetimes(min_value=datetime(1901, 1, 1), max_value=datetime(2199, 12, 31)),
    st.integers(0, 9),
    st.integers(0, 10**9 - 1),
    st.sampled_from([None, 0, 120, -330, 59]),
    st.sampled_from([" ", "T"]),
)
def test_wallclock_parser_matches_datetime(
    dt: datetime, digits: int, frac: int, offset_min: int | None, sep: str
) -> None:
    frac9 = frac // 10 ** (9 - digits) * 10 ** (9 - digits) if digits else 0
    s = dt.strftime(f"%Y-%m-%d{sep}%H:%M:%S")
    if digits:
        s += "." + str(frac9).zfill(9)[:digits]
    if offset_min is not None:
        sign = "+" if offset_min >= 0 else "-"
        s += f"{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"
    assert parse_wallclock_ns(s) == _ref_ns(dt, frac9, offset_min)


def test_azure_timestamp_variants_vectorised_and_slow_path(tmp_path: Path) -> None:
    # Mixed layouts in one file: 7 digits, 6 digits + UTC offset (2024 style), 'T', trimmed zeros.
    rows = [
        "2024-05-10 00:00:00.0000000,10,1",
        "2024-05-10 00:00:00.500000+00:00,10,1",
        "2024-05-10T03:00:01+02:00,10,1",  # = 01:00:01 UTC
        "2024-05-10 01:00:01.25Z,10,1",
        "2024-05-10 01:00:02.1234567,10,1",
    ]
    p = _write(tmp_path, "a24.csv", AZURE_HEADER + "\n".join(rows) + "\n")
    tr = load_trace(p)
    np.testing.assert_allclose(tr.arrival, [0, 0.5, 3601, 3601.25, 3602.1234567], rtol=0, atol=1e-9)


# ------------------------------------------------------------------------------------------
# Bad input: each error names file, line and field
# ------------------------------------------------------------------------------------------


AZ_OK = "2023-11-16 18:15:46.6805900,374,44\n"


@pytest.mark.parametrize(
    ("row", "field", "words"),
    [
        ("2023-13-16 18:15:47.0000000,10,5", "TIMESTAMP", ("valid calendar date",)),
        ("2023-02-29 18:15:47.0000000,10,5", "TIMESTAMP", ("valid calendar date",)),
        ("16/11/2023 18:15:47,10,5", "TIMESTAMP", ("expected a wall-clock time",)),
        (
            "2023-11-16 18:15:47.0000000,12.5,5",
            "ContextTokens",
            ("expected an integer token count", "'12.5'"),
        ),
        ("2023-11-16 18:15:47.0000000,10,", "GeneratedTokens", ("expected an integer token count",)),
        ("2023-11-16 18:15:47.0000000,0,5", "ContextTokens", ("between 1 and 10000000", "got 0")),
        ("2023-11-16 18:15:47.0000000,10,20000000", "GeneratedTokens", ("between 1 and",)),
        ("2023-11-16 18:15:40.0000000,10,5", "TIMESTAMP", ("backwards by 6.68059 s", "non-decreasing")),
    ],
)
def test_azure_bad_rows(tmp_path: Path, row: str, field: str, words: tuple[str, ...]) -> None:
    p = _write(tmp_path, "bad.csv", AZURE_HEADER + AZ_OK + row + "\n" + AZ_OK.replace("46.68", "59.68"))
    with pytest.raises(TraceFormatError) as exc:
        load_trace(p)
    _assert_error(exc, p, 3, field, *words)


def test_wrong_field_count_and_missing_column(tmp_path: Path) -> None:
    p = _write(tmp_path, "short.csv", AZURE_HEADER + AZ_OK + "2023-11-16 18:15:47.0,10\n")
    with pytest.raises(TraceFormatError, match=r"short\.csv, line 3: expected 3 comma-separated fields"):
        load_azure(p)
    p = _write(tmp_path, "nocol.csv", "TIMESTAMP,ContextTokens\n" + "2023-11-16 18:15:47.0,10\n")
    with pytest.raises(TraceFormatError) as exc:
        load_azure(p)
    _assert_error(exc, p, 1, "GeneratedTokens", "missing column")


def test_first_bad_line_is_reported(tmp_path: Path) -> None:
    rows = [
        AZ_OK,
        "2023-11-16 18:15:48.0,10,5\n",
        "2023-11-16 18:15:49.0,x,5\n",
        "2023-11-16 18:15:40.0,1,5\n",
    ]
    p = _write(tmp_path, "two.csv", AZURE_HEADER + "".join(rows))
    with pytest.raises(TraceFormatError) as exc:
        load_azure(p)
    assert exc.value.line == 4 and exc.value.field == "ContextTokens"


def test_max_len_cap(tmp_path: Path) -> None:
    p = _write(tmp_path, "cap.csv", AZURE_HEADER + AZ_OK)
    with pytest.raises(TraceFormatError, match="between 1 and 100, got 374"):
        load_azure(p, max_len=100)


def test_skip_bad_rows_counts_and_reasons(tmp_path: Path) -> None:
    rows = [
        "2023-11-16 18:15:40.0,5,5",  # line 2: kept, time origin
        "2023-11-16 18:15:41.0,0,5",  # line 3: prompt 0
        "2023-11-16 18:15:42.0,7",  # line 4: field count
        "",  # line 5: blank, ignored
        "2023-11-16 18:15:39.0,7,7",  # line 6: goes backwards
        "2023-11-16 18:15:43.5,8,8",  # line 7: kept
        "not a time,8,8",  # line 8: bad timestamp
    ]
    p = _write(tmp_path, "mixed.csv", AZURE_HEADER + "\n".join(rows) + "\n")
    with pytest.raises(TraceFormatError):
        load_azure(p)
    tr = load_trace(p, skip_bad_rows=True)
    assert len(tr) == 2 and tr.prompt_len.tolist() == [5, 8]
    np.testing.assert_allclose(tr.arrival, [0.0, 3.5])
    skipped = tr.meta["skipped_rows"]
    assert skipped["count"] == 4 and tr.meta["rows_read"] == 6
    assert [int(re.search(r"line (\d+)", r).group(1)) for r in skipped["first"]] == [3, 4, 6, 8]
    assert "'ContextTokens'" in skipped["first"][0] and "backwards" in skipped["first"][2]


def test_all_rows_bad_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    p = _write(tmp_path, "allbad.csv", AZURE_HEADER + "2023-11-16 18:15:41.0,0,5\n")
    with pytest.raises(TraceFormatError, match="no valid requests.*1 bad rows skipped.*line 2"):
        load_azure(p, skip_bad_rows=True)


def test_empty_and_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="empty file"):
        load_trace(_write(tmp_path, "empty.csv", "\n\n"))
    with pytest.raises(TraceFormatError, match="unrecognised header"):
        load_trace(_write(tmp_path, "odd.csv", "a,b,c\n1,2,3\n"))
    with pytest.raises(TraceFormatError, match="unrecognised JSON keys"):
        load_trace(_write(tmp_path, "odd.jsonl", '{"x": 1}\n'))
    with pytest.raises(ValueError, match="unknown trace format"):
        load_trace(_write(tmp_path, "x.csv", AZURE_HEADER + AZ_OK), format="parquet")
    p = tmp_path / "latin1.csv"
    p.write_bytes((AZURE_HEADER + AZ_OK).encode() + b"2023-11-16 18:15:47.0,1\xe9,5\n")
    with pytest.raises(TraceFormatError, match=r"line 3: not UTF-8"):
        load_azure(p)


MC = '{"timestamp": %s, "input_length": %s, "output_length": %s, "hash_ids": %s}\n'


@pytest.mark.parametrize(
    ("row", "field", "words"),
    [
        (MC % (-5, 100, 5, "[0]"), "timestamp", ("a finite number >= 0",)),
        (MC % (5, 100.5, 5, "[0]"), "input_length", ("expected a token count", "100.5")),
        (MC % (5, 100, 0, "[0]"), "output_length", ("between 1 and",)),
        (MC % (5, 100, 5, "[0, 1]"), "hash_ids", ("2 hash blocks of 512 tokens exceed the prompt of 100",)),
        (MC % (5, 100, 5, '["a"]'), "hash_ids", ("integers >= 0",)),
        ('{"timestamp": 5, "input_length": 100, "output_length": 5}\n', "hash_ids", ("missing key",)),
        (
            '{"timestamp": 4, "input_length": 100, "output_length": 5, "hash_ids": [0]}\n',
            "timestamp",
            ("backwards",),
        ),
    ],
)
def test_mooncake_bad_rows(tmp_path: Path, row: str, field: str, words: tuple[str, ...]) -> None:
    p = _write(tmp_path, "mc.jsonl", MC % (5, 1000, 5, "[0, 1]") + row)
    with pytest.raises(TraceFormatError) as exc:
        load_mooncake(p)
    _assert_error(exc, p, 2, field, *words)


def test_mooncake_malformed_json_line(tmp_path: Path) -> None:
    p = _write(tmp_path, "mc.jsonl", MC % (0, 10, 5, "[0]") + '{"timestamp": 1,\n' + "[1, 2]\n")
    with pytest.raises(TraceFormatError, match=r"mc\.jsonl, line 2: malformed JSON"):
        load_trace(p)
    tr = load_trace(p, skip_bad_rows=True)
    assert len(tr) == 1 and tr.meta["skipped_rows"]["count"] == 2
    assert "line 3: expected a JSON object, got list" in tr.meta["skipped_rows"]["first"][1]


def test_burstgpt_failures_are_bad_rows(tmp_path: Path) -> None:
    rows = [
        "5,ChatGPT,472,18,490,Conversation log",
        "45,ChatGPT,1087,0,1087,Conversation log",  # failed request: 0 response tokens
        "118,GPT-4,417,276,693,API log",
    ]
    p = _write(tmp_path, "burst.csv", BURST_HEADER + "\n".join(rows) + "\n")
    assert detect_format(p) == "burstgpt"
    with pytest.raises(TraceFormatError) as exc:
        load_trace(p)
    _assert_error(exc, p, 3, "Response tokens", "between 1 and", "got 0")
    tr = load_burstgpt(p, skip_bad_rows=True)
    assert tr.arrival.tolist() == [0.0, 113.0] and tr.tenant == ["ChatGPT", "GPT-4"]
    assert tr.meta["skipped_rows"]["count"] == 1 and tr.meta["time_offset_s"] == 5.0
    assert tr.meta["log_types_read"] == {"API log": 1, "Conversation log": 2}


# ------------------------------------------------------------------------------------------
# Our own schema
# ------------------------------------------------------------------------------------------


def _full_trace() -> Trace:
    base = shared_prefix_trace(
        40, 3.0, num_groups=3, prefix_len=40, suffix_dist=Uniform(1, 30), output_dist=Fixed(7),
        hash_block_tokens=16, token_ids=True, vocab_size=500, seed=3,
    )  # fmt: skip
    n = len(base)
    slo = np.where(np.arange(n) % 3 == 0, np.nan, 0.25 + np.arange(n) / 7)
    base.arrival = base.arrival - base.arrival[0]
    base.priority = np.arange(n) % 4 - 1
    base.tenant = [f'team "{i % 2}", west' if i % 5 else "" for i in range(n)]
    base.ttft_slo = slo
    base.tpot_slo = slo / 10
    base.e2e_slo = np.full(n, 30.0)
    return base


@pytest.mark.parametrize("name", ["t.csv", "t.jsonl", "t.csv.gz", "t.jsonl.gz"])
def test_write_read_round_trip(tmp_path: Path, name: str) -> None:
    tr = _full_trace()
    p = write_trace(tr, tmp_path / name)
    back = load_trace(p)
    assert back.meta["format"] == ("csv" if ".csv" in name else "jsonl")
    np.testing.assert_array_equal(back.arrival, tr.arrival)
    for col in ("prompt_len", "output_len", "priority", "ttft_slo", "tpot_slo", "e2e_slo"):
        np.testing.assert_array_equal(getattr(back, col), getattr(tr, col), err_msg=col)
    assert back.prefix_hashes == tr.prefix_hashes and back.hash_block_tokens == 16
    assert back.prompt_token_ids == tr.prompt_token_ids and back.tenant == tr.tenant
    assert list(back) == list(tr)


def test_round_trip_minimal_columns(tmp_path: Path) -> None:
    tr = Trace(arrival=[0.0, 0.1, 0.1, 2.5], prompt_len=[1, 2, 3, 4], output_len=[4, 3, 2, 1])
    for name in ("m.csv", "m.jsonl"):
        back = load_trace(write_trace(tr, tmp_path / name))
        assert back.prefix_hashes is None and back.priority is None and back.tenant is None
        assert back.ttft_slo is None and back.prompt_token_ids is None
        assert list(back) == list(tr)
    assert (tmp_path / "m.csv").read_text().splitlines()[0] == "arrival,prompt_len,output_len"
    with pytest.raises(ValueError, match="expected a .csv or .jsonl"):
        write_trace(tr, tmp_path / "m.parquet")


OWN = "arrival,prompt_len,output_len,prefix_hashes,hash_block_tokens,ttft_slo,prompt_token_ids\n"


@pytest.mark.parametrize(
    ("row", "field", "words"),
    [
        ("1.0,3,2,1 x,4,,1 2 3", "prefix_hashes", ("space-separated integers", "'1 x'")),
        ("1.0,3,2,1,8,,1 2 3", "hash_block_tokens", ("same block size as earlier rows (4), got 8",)),
        ("1.0,3,2,1,,,1 2 3", "hash_block_tokens", ("block size >= 1",)),
        ("1.0,3,2,1 2,4,,1 2 3", "prefix_hashes", ("2 hash blocks of 4 tokens exceed the prompt of 3",)),
        ("1.0,3,2,,,-1,1 2 3", "ttft_slo", ("SLO in seconds > 0",)),
        ("1.0,3,2,,,,1 2", "prompt_token_ids", ("prompt_len = 3 token ids, got 2",)),
        ("-1.0,3,2,,,,1 2 3", "arrival", ("time >= 0",)),
        ("nan,3,2,,,,1 2 3", "arrival", ("finite time",)),
        ("0.5,3,2,,,,1 2 3", "arrival", ("backwards by 0.5 s",)),
    ],
)
def test_own_csv_bad_rows(tmp_path: Path, row: str, field: str, words: tuple[str, ...]) -> None:
    p = _write(tmp_path, "own.csv", OWN + "1.0,5,2,7 8,4,0.5,1 2 3 4 5\n" + row + "\n")
    with pytest.raises(TraceFormatError) as exc:
        load_csv(p)
    _assert_error(exc, p, 3, field, *words)


def test_own_csv_quoted_newlines_crlf_and_nul(tmp_path: Path) -> None:
    tr = Trace(
        arrival=[0.0, 1.0], prompt_len=[3, 4], output_len=[1, 2], tenant=['multi\nline, "quoted"', "b"]
    )
    back = load_trace(write_trace(tr, tmp_path / "q.csv"))
    assert back.tenant == tr.tenant
    p = tmp_path / "crlf.csv"
    p.write_bytes(b"arrival,prompt_len,output_len,tenant\r\n0,1,1,a\r\n0.5,2,2,b\r\n")
    assert load_trace(p).tenant == ["a", "b"]
    p.write_bytes(b'arrival,prompt_len,output_len,tenant\r\n0,1,1,a\r\n0.5,2,2,"b\r\nc"\r\n1,\x003,3,d\r\n')
    with pytest.raises(TraceFormatError) as exc:
        load_trace(p)
    assert exc.value.line == 5
    tr = load_trace(p, skip_bad_rows=True)
    assert tr.tenant == ["a", "b\r\nc"] and tr.meta["skipped_rows"]["count"] == 1


def test_own_csv_unknown_column(tmp_path: Path) -> None:
    p = _write(tmp_path, "own.csv", "arrival,prompt_len,output_len,ttft_slo_s\n0,1,1,2\n")
    with pytest.raises(TraceFormatError) as exc:
        load_trace(p)
    _assert_error(exc, p, 1, "ttft_slo_s", "unknown column")


@pytest.mark.parametrize(
    ("row", "field", "words"),
    [
        ('{"arrival": 1, "prompt_len": 3, "output_len": 2, "ttft": 1}', "ttft", ("unknown key",)),
        ('{"arrival": 1, "prompt_len": true, "output_len": 2}', "prompt_len", ("expected a token count",)),
        ('{"arrival": 1, "output_len": 2}', "prompt_len", ("missing key",)),
        ('{"arrival": 1, "prompt_len": 3, "output_len": 2, "tenant": 5}', "tenant", ("expected a string",)),
        ('{"arrival": 1, "prompt_len": 3, "output_len": 2, "e2e_slo": 0}', "e2e_slo", ("> 0 or null",)),
        ('{"arrival": 1, "prompt_len": 3, "output_len": 2}', "prompt_token_ids", ("missing; other rows",)),
    ],
)
def test_own_jsonl_bad_rows(tmp_path: Path, row: str, field: str, words: tuple[str, ...]) -> None:
    first = '{"arrival": 0.5, "prompt_len": 2, "output_len": 1, "prompt_token_ids": [4, 5]}\n'
    p = _write(tmp_path, "own.jsonl", first + row + "\n")
    with pytest.raises(TraceFormatError) as exc:
        load_jsonl(p)
    _assert_error(exc, p, 2, field, *words)


def test_own_jsonl_nulls_mean_unset(tmp_path: Path) -> None:
    rows = [
        '{"arrival": 2.0, "prompt_len": 3, "output_len": 2, "ttft_slo": null, "tenant": "a"}',
        '{"arrival": 2.5, "prompt_len": 4, "output_len": 1.0, "ttft_slo": 0.2}',
    ]
    tr = load_trace(_write(tmp_path, "n.jsonl", "\n".join(rows) + "\n"))
    assert tr.arrival.tolist() == [0.0, 0.5] and tr.output_len.tolist() == [2, 1]
    assert tr.request(0).ttft_slo is None and tr.request(1).ttft_slo == 0.2
    assert tr.tenant == ["a", ""] and tr.meta["time_offset_s"] == 2.0


# ------------------------------------------------------------------------------------------
# Speed
# ------------------------------------------------------------------------------------------


def _azure_text(n: int) -> str:
    """n rows in the Azure layout: 7 fractional digits, random gaps of up to 1 s."""
    rng = np.random.default_rng(0)
    ns = np.cumsum(rng.integers(0, 10**9, size=n)) + 1_700_000_000 * 10**9
    epoch = datetime(1970, 1, 1)

    def stamp(t: int) -> str:
        return f"{(epoch + timedelta(seconds=t // 10**9)):%Y-%m-%d %H:%M:%S}.{t % 10**9 // 100:07d}"

    prompts, outputs = rng.integers(1, 5000, n).tolist(), rng.integers(1, 900, n).tolist()
    rows = [f"{stamp(t)},{p},{o}" for t, p, o in zip(ns.tolist(), prompts, outputs, strict=True)]
    return AZURE_HEADER + "\n".join(rows) + "\n"


def test_azure_100k_rows_fast(tmp_path: Path) -> None:
    p = _write(tmp_path, "big.csv", _azure_text(100_000))
    t0 = time.perf_counter()
    tr = load_trace(p)
    elapsed = time.perf_counter() - t0
    assert len(tr) == 100_000 and np.all(np.diff(tr.arrival) >= 0)
    assert elapsed < 1.0, f"100k Azure rows took {elapsed:.2f} s"


@pytest.mark.slow
def test_one_million_rows(tmp_path: Path) -> None:
    # Load speed is a benchmark figure, not a test assertion; this checks size handling only.
    p = _write(tmp_path, "huge.csv", _azure_text(1_000_000))
    tr = load_trace(p)
    assert len(tr) == 1_000_000
    own = write_trace(tr, tmp_path / "huge_own.csv")
    t0 = time.perf_counter()
    back = load_trace(own)
    assert time.perf_counter() - t0 < 5.0
    np.testing.assert_array_equal(back.arrival, tr.arrival)
