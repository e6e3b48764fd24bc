"""The `sagellm` command line, end to end on small inputs."""

from __future__ import annotations

import json

import pytest

from sim.cli import main
from sim.results import RunResult


def test_simulate_writes_results_and_report(tmp_path, capsys):
    out = tmp_path / "run"
    html = tmp_path / "r.html"
    rc = main(["simulate", "--max-requests", "50", "--out", str(out), "--report", str(html),
               "--slo-ttft-ms", "200"])
    assert rc == 0
    for f in ("summary.json", "requests.csv", "iterations.csv", "itl.json"):
        assert (out / f).is_file()
    r = RunResult.read(out)
    assert len(r.requests["id"]) == 50
    assert r.metrics["goodput"]["slo_ms"]["ttft"] == 200
    assert html.stat().st_size > 100_000  # plotly inlined
    assert "Output token throughput" in capsys.readouterr().out


def test_report_compares_two_runs(tmp_path):
    for name, budget in (("a", "256"), ("b", "4096")):
        assert main(["simulate", "--max-requests", "30", "--max-num-batched-tokens", budget,
                     "--out", str(tmp_path / name)]) == 0
    html = tmp_path / "cmp.html"
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(html)]) == 0
    text = html.read_text()
    assert text.count("plotly.js v") <= 2 and ">a<" in text and ">b<" in text


def test_config_file_and_unknown_field(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"num_replicas": 2, "router": "least-work", "max_num_seqs": 8}))
    assert main(["simulate", "--config", str(cfg), "--max-requests", "20", "--out", str(tmp_path / "x")]) == 0
    assert RunResult.read(tmp_path / "x").meta["config"]["num_replicas"] == 2
    cfg.write_text(json.dumps({"num_replica": 2}))
    assert main(["simulate", "--config", str(cfg), "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "unknown field(s) num_replica" in err and str(cfg) in err
    assert not (tmp_path / "y").exists()


def test_bad_trace_names_line_and_field(tmp_path, capsys):
    bad = tmp_path / "t.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
                   "2023-11-16 18:15:47.0000000,abc,12\n")
    assert main(["simulate", "--trace", str(bad), "--out", str(tmp_path / "z")]) == 2
    err = capsys.readouterr().err
    assert "line 3" in err and "ContextTokens" in err


def test_trace_stats(capsys, shared_traces):
    assert main(["trace", "stats", str(shared_traces / "mooncake_conversation.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "12,031" in out and "prefix" in out


def test_replay_on_cpu(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "eng"
    rc = main(["replay", "--device", "cpu", "--model", "smollm2-135m", "--max-requests", "3",
               "--cap-prompt", "32", "--cap-output", "4", "--num-kv-blocks", "32", "--out", str(out)])
    assert rc == 0
    r = RunResult.read(out)
    assert r.meta["kind"] == "engine" and (r.requests["status"] == "finished").all()
    assert list(r.requests["output_tokens"]) == [4, 4, 4]
