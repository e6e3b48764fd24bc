"""benchmarks.report: page content, plotly.js inlined once, decimation, atomic write, PNG export."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import plotly.offline
import pytest
from test_metrics import TINY_ITERATIONS, TINY_ITL, TINY_REQUESTS, make_run

import benchmarks.report as report
from benchmarks.metrics import SLO, compute_metrics
from sim.results import RunResult

FIGURE_TITLES = (
    "TTFT CDF", "TPOT CDF", "ITL CDF", "E2E latency CDF", "Queueing delay CDF",
    "Output token throughput over time", "KV cache use over time", "Batch size over time",
)
PLOTLY_BANNER = plotly.offline.get_plotlyjs()[:200]  # licence header plus version of plotly.js


def tiny(name: str = "tiny", **meta: object) -> RunResult:
    return make_run(TINY_REQUESTS, TINY_ITERATIONS, TINY_ITL, meta={"name": name, **meta})


def big(n: int = 30_000) -> RunResult:
    """A run far above the per-line point budget (requests and iterations both)."""
    rng = np.random.default_rng(0)
    arrival = np.sort(rng.uniform(0, 100, n))
    ttft = rng.exponential(0.2, n)
    reqs = [dict(arrival=a, first_scheduled=a, first_token=a + t, finish=a + t + 1.0, prompt_tokens=10,
                 output_tokens=20) for a, t in zip(arrival, ttft, strict=True)]
    starts = np.arange(n) * 0.004
    its = [dict(start=s, end=s + 0.003, num_seqs=int(k), kv_blocks_used=int(k))
           for s, k in zip(starts, rng.integers(1, 90, n), strict=True)]
    return make_run(reqs, its, {0.01: 1000, 0.02: 500}, meta={"name": "big"})


def test_one_run_page(tmp_path: Path) -> None:
    meta = dict(trace="azure_conv", scheduler="fcfs", cost_model={"name": "roofline", "mfu": 0.5},
                device="H100", model="llama-3-8b", layout={"tp": 2, "pp": 1})
    out = report.write_report([tiny(**meta)], tmp_path / "r.html", title="My <report>")
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "<title>My &lt;report&gt;</title>" in page
    for t in FIGURE_TITLES:
        assert t in page, t
    assert page.count(PLOTLY_BANNER) == 1
    assert page.count("Plotly.newPlot") == len(report.build_figures([])) == len(FIGURE_TITLES)
    assert re.search(r"<script[^>]*\bsrc\s*=", page) is None  # self-contained: nothing loaded
    for v in ("azure_conv", "fcfs", "roofline", "H100", "llama-3-8b", "tp=2, pp=1"):
        assert f"<td>{v}</td>" in page, v
    assert "<td>583.33</td>" in page  # mean TTFT of the tiny run, ms
    assert "Serving Benchmark Result" in page  # the per-run text table


def test_two_runs_side_by_side(tmp_path: Path) -> None:
    a, b = tiny("same"), tiny("same")
    b.requests["first_token"][0] = 0.75  # make run b's TTFT differ
    out = report.write_report([a, b], tmp_path / "two.html")
    page = out.read_text()
    assert page.count(PLOTLY_BANNER) == 1
    assert "<th>same</th><th>same #2</th>" in page  # duplicate names get told apart
    figs = report.build_figures(report._prepare([a, b], None))
    assert [t.name for t in figs["ttft_cdf"].data] == ["same", "same #2"]
    assert list(figs["ttft_cdf"].data[1].x) == pytest.approx([250, 750, 1000])


def test_stored_metrics_used_unless_slo(tmp_path: Path) -> None:
    r = tiny()
    r.metrics = compute_metrics(r)
    r.metrics["request_throughput"] = 123.456  # proves the stored dict is what the table shows
    page = report.write_report([r], tmp_path / "a.html").read_text()
    assert "<td>123.456</td>" in page
    page = report.write_report([r], tmp_path / "b.html", slo=SLO(ttft=0.5)).read_text()
    assert "123.456" not in page and "<td>0.667</td>" in page  # goodput 2 / 3 s


def test_kv_and_batch_traces(tmp_path: Path) -> None:
    figs = report.build_figures(report._prepare([tiny()], None))
    kv = figs["kv_use"].data[0]
    # each row runs from the previous end value to its own; the jumped row is one segment 1 s -> 4 s
    assert list(kv.x) == pytest.approx([0, 1, 1, 4, 5, 6])
    assert list(kv.y) == pytest.approx([0, 0.1, 0.1, 0.4, 0.4, 0.2])
    batch = figs["batch_size"].data[0]
    # the idle second between 4 s and 5 s shows as batch size 0
    assert list(batch.x) == pytest.approx([0, 1, 1, 4, 4, 5, 5, 6])
    assert list(batch.y) == pytest.approx([1, 1, 1, 1, 0, 0, 1, 1])


def test_throughput_conserves_tokens() -> None:
    edges = np.array([0.0, 1.0, 2.0, 3.0])
    # 10 tokens spread over [0, 2], 4 tokens at the instant 2.5, 6 overlapping over [0.5, 1.5]
    got = report._spread_into_bins(np.array([0.0, 2.5, 0.5]), np.array([2.0, 2.5, 1.5]),
                                   np.array([10.0, 4.0, 6.0]), edges)
    assert got == pytest.approx([8.0, 8.0, 4.0])
    run = report._prepare([tiny()], None)[0]
    s, e, a = report._output_token_times(run)
    # one first token per request that got one (3 finished + 1 unfinished) + 1 decode token per
    # iteration (the jumped row counts 3)
    assert a.sum() == 4 + 1 + 3 + 1
    fig = report._throughput_figure([run])
    width = 6.0 / report.THROUGHPUT_BINS
    assert np.sum(fig.data[0].y) * width == pytest.approx(a.sum(), rel=1e-6)


def test_big_run_is_decimated(tmp_path: Path) -> None:
    r = big()
    figs = report.build_figures(report._prepare([r], None))
    for key, fig in figs.items():
        for trace in fig.data:
            assert len(trace.x) <= report.MAX_POINTS + 2, key
    kv = figs["kv_use"].data[0]
    assert max(kv.y) == pytest.approx(r.iterations["kv_blocks_used"].max() / 100)  # peak kept
    out = report.write_report([r], tmp_path / "big.html")
    js = len(plotly.offline.get_plotlyjs())
    assert out.stat().st_size < js + 2_000_000


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "r.html"
    out.write_text("old page")

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(report.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        report.write_report([tiny()], out)
    assert out.read_text() == "old page"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]  # no temp file left behind


def test_bad_run_writes_nothing(tmp_path: Path) -> None:
    bad = tiny()
    bad.requests["status"][0] = "lost"
    with pytest.raises(ValueError, match="status"):
        report.write_report([bad], tmp_path / "r.html")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="no runs"):
        report.write_report([], tmp_path / "r.html")


def test_main_report_reads_run_dirs(tmp_path: Path) -> None:
    a = tiny("a").write(tmp_path / "a")  # no stored metrics: computed on the way
    b_run = tiny("b")
    b_run.metrics = compute_metrics(b_run)
    b = b_run.write(tmp_path / "b")
    out = report.main_report([str(a), str(b)], str(tmp_path / "out" / "r.html"), None, SLO(ttft=0.5))
    page = out.read_text()
    assert "<th>a</th><th>b</th>" in page
    assert page.count("<td>0.667</td>") >= 2  # goodput recomputed for both under the SLO
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        report.main_report([str(tmp_path / "missing")], str(tmp_path / "x.html"), None, None)


def test_missing_browser_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "_find_browser", lambda: None)
    assert not report.png_export_available()
    with pytest.raises(RuntimeError, match="apt-get install chromium"):
        report.write_report([tiny()], tmp_path / "r.html", png_dir=tmp_path / "png")
    assert not (tmp_path / "r.html").exists()  # fails before writing anything


def test_browser_path_env_is_honoured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chrome"))
    assert report._find_browser() is None
    exe = tmp_path / "chrome"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("BROWSER_PATH", str(exe))
    assert report._find_browser() == str(exe)


@pytest.mark.skipif(not report.png_export_available(),
                    reason="PNG export needs kaleido and Chrome/Chromium (apt-get install chromium)")
def test_png_export(tmp_path: Path) -> None:
    png = tmp_path / "png"
    report.write_report([tiny("a"), tiny("b")], tmp_path / "r.html", png_dir=png)
    files = sorted(p.name for p in png.iterdir())
    assert files == sorted(f"{k}.png" for k in report.build_figures([]))
    for p in png.iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert os.path.getsize(p) > 5_000
