"""benchmarks/repeat_spread.py: measured runs of one slice gathered over report directories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.repeat_spread import gather, main

RUN = Path(__file__).resolve().parents[1] / "benchmarks/results/validate_h100/azure_hostAH-b_load-0.9"


def _copy(dst: Path, repeats: bool = True) -> Path:
    """The stored run's measured and predicted results and errors (its three in-process repeats)."""
    for sub in ("measured", "predicted"):
        shutil.copytree(RUN / sub, dst / sub)
    errors = json.loads((RUN / "errors.json").read_text())
    if not repeats:
        errors.pop("repeats")
    (dst / "errors.json").write_text(json.dumps(errors))
    return dst


def _rows(s: dict) -> dict[str, dict]:
    return {x["label"]: x for x in s["rows"]}


def test_gathers_every_run_against_the_first_prediction(tmp_path: Path, capsys) -> None:
    a = _copy(tmp_path / "a")
    b = _copy(tmp_path / "b", repeats=False)  # one run: its measured metrics
    one = gather([a])
    both = gather([a, b])
    assert one["runs"] == 3 and both["runs"] == 4
    assert both["predictions_max_rel_diff"] == 0.0
    ttft = _rows(both)["TTFT P90 (ms)"]
    measured_b = json.loads((b / "measured/summary.json").read_text())["metrics"]["ttft_ms"]["p90"]
    assert ttft["measured"][:3] == _rows(one)["TTFT P90 (ms)"]["measured"]
    assert ttft["measured"][3] == pytest.approx(measured_b)  # b's run is the first of a's three
    s = sorted(ttft["measured"])
    assert ttft["median"] == pytest.approx((s[1] + s[2]) / 2)
    assert main([str(a), str(b), "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "measured 4 times" in out and "384.8 / 451.6 / 421.3 / 384.8" in out
    assert json.loads((tmp_path / "s.json").read_text())["runs"] == 4


def test_refuses_runs_of_another_slice(tmp_path: Path, capsys) -> None:
    a = _copy(tmp_path / "a")
    b = _copy(tmp_path / "b")
    req = b / "measured/requests.csv"
    lines = req.read_text().splitlines()
    head = lines[0].split(",")
    row = lines[3].split(",")
    row[head.index("arrival")] = str(float(row[head.index("arrival")]) * 1.01)
    lines[3] = ",".join(row)
    req.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"requests.csv: request 2 arrives at .* not the same arrivals"):
        gather([a, b])
    assert main([str(a), str(b)]) == 2
    assert "not the same arrivals" in capsys.readouterr().err
    with pytest.raises(ValueError, match="given twice"):
        gather([a, tmp_path / "b/../a"])
    with pytest.raises(FileNotFoundError, match="none/measured: not a run directory"):
        gather([a, tmp_path / "none"])
