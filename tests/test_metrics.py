"""benchmarks.metrics against values worked out by hand on a tiny run (vLLM definitions)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.metrics import SLO, compute_metrics, format_metrics
from sim.results import ITERATION_COLUMNS, REQUEST_COLUMNS, ItlHistogram, RunResult

NAN = float("nan")

REQUEST_DEFAULTS: dict[str, object] = {
    "replica": 0, "first_scheduled": NAN, "first_token": NAN, "finish": NAN, "prompt_tokens": 0,
    "output_tokens": 0, "cached_tokens": 0, "preemptions": 0, "ttft_slo": NAN, "tpot_slo": NAN,
    "e2e_slo": NAN, "status": "finished", "reject_reason": "",
}
ITERATION_DEFAULTS: dict[str, object] = {
    "replica": 0, "count": 1, "dur_first": NAN, "dur_last": NAN, "num_seqs": 1, "num_prefill_seqs": 0,
    "prefill_tokens": 0, "decode_tokens": 1, "kv_blocks_used": 0, "kv_blocks_total": 100, "preempted": 0,
}


def make_run(requests: list[dict], iterations: list[dict] = (), itl: dict[float, int] | None = None,
             meta: dict | None = None) -> RunResult:
    """A RunResult from row dicts (unnamed fields take REQUEST/ITERATION_DEFAULTS); ids are row numbers."""
    req_rows = [{**REQUEST_DEFAULTS, "id": i, **r} for i, r in enumerate(requests)]
    it_rows = []
    for r in iterations:
        row = {**ITERATION_DEFAULTS, **r}
        dur = (row["end"] - row["start"]) / row["count"]
        row["dur_first"] = dur if math.isnan(row["dur_first"]) else row["dur_first"]
        row["dur_last"] = dur if math.isnan(row["dur_last"]) else row["dur_last"]
        it_rows.append(row)
    reqs = {k: np.array([r[k] for r in req_rows], dtype=t) for k, t in REQUEST_COLUMNS.items()}
    its = {k: np.array([r[k] for r in it_rows], dtype=t) for k, t in ITERATION_COLUMNS.items()}
    h = ItlHistogram()
    for value, weight in (itl or {}).items():
        h.add(value, weight)
    return RunResult(meta=meta or {"name": "tiny"}, requests=reqs, iterations=its, itl=h)


# Times are dyadic fractions so the hand-computed latencies are exact in binary floating point.
TINY_REQUESTS = [
    # ttft 0.5, e2e 2.5, tpot (2.5 - 0.5) / 4 = 0.5, queue 0.125
    dict(arrival=0.0, first_scheduled=0.125, first_token=0.5, finish=2.5, prompt_tokens=100,
         output_tokens=5, cached_tokens=20),
    # ttft 0.25, e2e 1.25, tpot 1.0 / 4 = 0.25, queue 0
    dict(arrival=1.0, first_scheduled=1.0, first_token=1.25, finish=2.25, prompt_tokens=50,
         output_tokens=5, preemptions=1),
    # ttft 1.0, e2e 1.0, single token: no TPOT sample (TPOT 0 for goodput), queue 0.5
    dict(arrival=2.0, first_scheduled=2.5, first_token=3.0, finish=3.0, prompt_tokens=30,
         output_tokens=1, cached_tokens=10),
    dict(arrival=3.0, prompt_tokens=10_000, status="rejected", reject_reason="prompt_too_long"),
    dict(arrival=2.5, first_scheduled=2.625, first_token=2.875, prompt_tokens=40, output_tokens=3,
         preemptions=2, status="unfinished"),
]
# 30 x 10 ms, 40 x 20 ms, 26 x 50 ms, 4 x 200 ms: n = 100, exact mean 32 ms
TINY_ITL = {0.010: 30, 0.020: 40, 0.050: 26, 0.200: 4}
TINY_ITERATIONS = [
    dict(start=0.0, end=1.0, kv_blocks_used=10),  # 10% for 1 s
    dict(start=1.0, end=4.0, count=3, kv_blocks_used=40),  # jumped run: 40% for 3 s
    dict(start=5.0, end=6.0, kv_blocks_used=20),  # 20% for 1 s after an idle second
]


@pytest.fixture
def tiny() -> RunResult:
    return make_run(TINY_REQUESTS, TINY_ITERATIONS, TINY_ITL, meta={"name": "tiny", "kv": {"evictions": 7}})


def test_counts_and_throughputs(tiny: RunResult) -> None:
    m = compute_metrics(tiny)
    assert (m["num_requests"], m["finished"], m["rejected"], m["unfinished"]) == (5, 3, 1, 1)
    assert m["rejected_reasons"] == {"prompt_too_long": 1}
    assert m["duration_s"] == pytest.approx(3.0)  # max finish 3.0 - min arrival 0.0 (finished only)
    assert m["total_input_tokens"] == 180
    assert m["total_output_tokens"] == 11
    assert m["request_throughput"] == pytest.approx(1.0)
    assert m["output_throughput"] == pytest.approx(11 / 3)
    assert m["total_token_throughput"] == pytest.approx(191 / 3)
    assert m["request_goodput"] is None and m["goodput"] is None  # no SLO anywhere


def test_latency_stats_by_hand(tiny: RunResult) -> None:
    m = compute_metrics(tiny)
    ttft = m["ttft_ms"]  # samples 500, 250, 1000
    assert ttft["n"] == 3
    assert ttft["mean"] == pytest.approx(1750 / 3)
    assert ttft["median"] == pytest.approx(500) and ttft["p50"] == pytest.approx(500)
    assert ttft["std"] == pytest.approx(math.sqrt((250**2 + 1000**2 + 1250**2) / 27))
    assert ttft["p90"] == pytest.approx(900)  # rank 1.8 between 500 and 1000
    assert ttft["p95"] == pytest.approx(950)
    assert ttft["p99"] == pytest.approx(990)
    tpot = m["tpot_ms"]  # samples 500, 250; the single-token request is left out
    assert tpot["n"] == 2
    assert (tpot["mean"], tpot["median"], tpot["std"]) == pytest.approx((375, 375, 125))
    assert tpot["p90"] == pytest.approx(475)
    e2e = m["e2e_ms"]  # 2500, 1250, 1000
    assert e2e["mean"] == pytest.approx(4750 / 3)
    assert e2e["median"] == pytest.approx(1250)
    assert e2e["p90"] == pytest.approx(2250)
    q = m["queue_ms"]  # 125, 0, 500
    assert (q["mean"], q["median"]) == pytest.approx((625 / 3, 125))


def test_itl_from_histogram(tiny: RunResult) -> None:
    itl = compute_metrics(tiny)["itl_ms"]
    assert itl["n"] == 100
    assert itl["mean"] == pytest.approx(32.0, rel=1e-12)  # exact sum
    tol = 0.0023  # one bin's relative width
    assert itl["median"] == pytest.approx(20.0, rel=tol)
    assert itl["p50"] == pytest.approx(20.0, rel=tol)
    assert itl["p90"] == pytest.approx(50.0, rel=tol)
    assert itl["p95"] == pytest.approx(50.0, rel=tol)
    assert itl["p99"] == pytest.approx(200.0, rel=tol)
    # population std of the raw values is sqrt(1416) ms; bin centres move it by < 1 bin width
    assert itl["std"] == pytest.approx(math.sqrt(1416.0), rel=2 * tol)


def test_itl_bin_centres_match_histogram_percentiles() -> None:
    h = ItlHistogram()
    h.add(0.0123)
    i = int(np.flatnonzero(h.counts)[0])
    assert ItlHistogram.bin_centres(np.array([i]))[0] == pytest.approx(h.percentile(50), rel=1e-12)


def test_kv_metrics(tiny: RunResult) -> None:
    kv = compute_metrics(tiny)["kv"]
    assert kv["prefix_hit_rate"] == pytest.approx(30 / 180)
    assert kv["cached_tokens"] == 30
    assert kv["preemptions_total"] == 3
    assert kv["preemptions_per_request"] == pytest.approx(3 / 4)  # over the 4 admitted requests
    assert kv["preempted_requests"] == 2
    assert kv["evictions"] == 7
    assert kv["peak_use"] == pytest.approx(0.4)
    # (0.1 * 1 + 0.4 * 3 + 0.2 * 1) / (1 + 3 + 1): the idle second carries no weight
    assert kv["mean_use"] == pytest.approx(0.3)


def test_kv_two_replicas_and_no_accounting() -> None:
    reqs = [TINY_REQUESTS[0]]
    its = [dict(replica=0, start=0.0, end=2.0, kv_blocks_used=50),
           dict(replica=1, start=0.0, end=1.0, kv_blocks_used=20, kv_blocks_total=40)]
    kv = compute_metrics(make_run(reqs, its))["kv"]
    assert kv["peak_use"] == pytest.approx(0.5)
    assert kv["mean_use"] == pytest.approx((0.5 * 2 + 0.5 * 1) / 3)
    assert kv["evictions"] is None
    none = compute_metrics(make_run(reqs, [dict(start=0.0, end=1.0, kv_blocks_total=0)]))["kv"]
    assert none["peak_use"] is None and none["mean_use"] is None
    with pytest.raises(ValueError, match="kv_blocks_total"):
        mixed = [dict(start=0.0, end=1.0), dict(start=1.0, end=2.0, kv_blocks_total=0)]
        compute_metrics(make_run(reqs, mixed))


@pytest.mark.parametrize(
    ("slo", "good"),
    [
        (SLO(ttft=0.5), 2),  # inclusive: 0.5 <= 0.5 passes; the 1 s TTFT fails
        (SLO(ttft=0.5, tpot=0.25), 1),  # 0.5 s TPOT fails, 0.25 passes
        (SLO(tpot=0.25), 2),  # a single-token request passes a TPOT SLO (vLLM: TPOT 0)
        (SLO(e2e=1.0), 1),
        (SLO(ttft=2.0, tpot=1.0, e2e=3.0), 3),
    ],
)
def test_goodput_global(tiny: RunResult, slo: SLO, good: int) -> None:
    m = compute_metrics(tiny, slo)
    g = m["goodput"]
    assert g["good_requests"] == good
    assert m["request_goodput"] == pytest.approx(good / 3.0)
    assert g["slo_attainment"] == pytest.approx(good / 5)  # over all submitted requests
    assert g["per_request_columns"] == []


def test_goodput_per_request_columns(tiny: RunResult) -> None:
    tiny.requests["ttft_slo"][0] = 0.4  # request 0 (TTFT 0.5) misses
    tiny.requests["e2e_slo"][2] = 1.5  # request 2 (E2E 1.0) meets; request 1 has no SLO
    m = compute_metrics(tiny)
    assert m["goodput"]["good_requests"] == 2
    assert m["goodput"]["per_request_columns"] == ["ttft_slo", "e2e_slo"]
    # a global TTFT SLO replaces the column for TTFT only; the E2E column still applies
    m = compute_metrics(tiny, SLO(ttft=2.0))
    assert m["goodput"]["good_requests"] == 3
    tiny.requests["e2e_slo"][2] = 0.75
    assert compute_metrics(tiny, SLO(ttft=2.0))["goodput"]["good_requests"] == 2


def test_custom_percentiles_and_json(tiny: RunResult) -> None:
    m = compute_metrics(tiny, percentiles=(25, 99.9))
    assert set(m["ttft_ms"]) == {"n", "mean", "std", "median", "p25", "p99.9"}
    assert m["ttft_ms"]["p25"] == pytest.approx(375)
    json.dumps(m, allow_nan=False)  # strictly JSON: undefined values are None, not NaN
    with pytest.raises(ValueError, match="percentiles"):
        compute_metrics(tiny, percentiles=(101,))


def test_empty_run_is_well_defined() -> None:
    m = compute_metrics(make_run([dict(arrival=0.0, status="rejected", reject_reason="queue_full")]))
    assert m["finished"] == 0 and m["rejected_reasons"] == {"queue_full": 1}
    assert m["duration_s"] is None and m["request_throughput"] is None
    assert m["ttft_ms"]["mean"] is None and m["itl_ms"]["p99"] is None
    json.dumps(m, allow_nan=False)
    assert "n/a" in format_metrics(m)


def test_bad_input_is_named(tiny: RunResult) -> None:
    tiny.requests["status"][1] = "done"
    with pytest.raises(ValueError, match=r"request id 1 .*'status'.*'done'"):
        compute_metrics(tiny)
    broken = make_run([{**TINY_REQUESTS[0], "first_token": NAN}])
    with pytest.raises(ValueError, match=r"request id 0: field 'first_token'.*finite"):
        compute_metrics(broken)
    backwards = make_run([{**TINY_REQUESTS[0], "finish": 0.25}])
    with pytest.raises(ValueError, match=r"field 'finish'.*>= first_token"):
        compute_metrics(backwards)
    del tiny.requests["ttft_slo"]
    with pytest.raises(ValueError, match="lacks column.*ttft_slo"):
        compute_metrics(tiny)
    with pytest.raises(ValueError, match="SLO.ttft"):
        SLO(ttft=-1.0)


def test_format_metrics_vllm_layout(tiny: RunResult) -> None:
    text = format_metrics(compute_metrics(tiny, SLO(ttft=0.5)))
    assert text.splitlines()[0] == f"{' Serving Benchmark Result ':=^50}"
    assert "Successful requests:" in text and "Request goodput (req/s):" in text
    line = next(x for x in text.splitlines() if x.startswith("Mean TTFT (ms):"))
    assert line.split()[-1] == "583.33"
    assert "P99 E2EL (ms):" in text and "Time per Output Token (excl. 1st token)" in text
    assert "rejected (prompt_too_long):" in text


def test_round_trip_through_files(tiny: RunResult, tmp_path) -> None:
    before = compute_metrics(tiny, SLO(ttft=0.5))
    again = compute_metrics(RunResult.read(tiny.write(tmp_path / "run")), SLO(ttft=0.5))
    assert json.dumps(again, sort_keys=True) == json.dumps(before, sort_keys=True)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 5), st.floats(0, 5), st.floats(0, 50),
                          st.integers(1, 50)), min_size=1, max_size=30),
       st.floats(0.01, 10))
def test_invariants(rows: list[tuple[float, float, float, float, int]], ttft_slo: float) -> None:
    reqs = [dict(arrival=a, first_scheduled=a + q, first_token=a + q + p, finish=a + q + p + d,
                 prompt_tokens=10, output_tokens=n) for a, q, p, d, n in rows]
    m = compute_metrics(make_run(reqs), SLO(ttft=ttft_slo))
    for key in ("ttft_ms", "e2e_ms", "queue_ms"):
        s = m[key]
        assert s["p50"] <= s["p90"] + 1e-9 and s["p90"] <= s["p99"] + 1e-9
    assert m["ttft_ms"]["mean"] <= m["e2e_ms"]["mean"] + 1e-9
    assert 0 <= m["goodput"]["good_requests"] <= m["finished"] == len(rows)
    if m["request_throughput"] is not None:
        assert m["request_goodput"] <= m["request_throughput"] + 1e-12
