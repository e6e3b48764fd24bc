"""benchmarks/profile_drift.py: two profiles compared shape by shape, wall / device / host apart."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from backends.profile import Profile
from benchmarks.profile_drift import compare, format_comparison, main

H200 = Path(__file__).resolve().parents[1] / "benchmarks/results/validate_h200/profiles/hostAE.json"


def _scaled(p: Profile, wall: float, device: float, launch: float) -> Profile:
    def one(s):
        return replace(
            s,
            times_s=tuple(wall * t for t in s.times_s),
            median_s=wall * s.median_s,
            device_s=None if s.device_s is None else device * s.device_s,
            launch_s=None if s.launch_s is None else launch * s.launch_s,
        )

    return replace(p, samples=[one(s) for s in p.samples])


def test_ratios_by_part_and_kind(tmp_path: Path, capsys) -> None:
    a = Profile.load(H200)
    b = _scaled(a, wall=1.02, device=1.0, launch=1.3)
    c = compare(a, b)
    for group, parts in c["shapes"].items():
        assert parts["median_s"]["median"] == pytest.approx(1.02), group
        assert parts["launch_s"]["median"] == pytest.approx(1.3), group
        if "device_s" in parts:
            assert parts["device_s"]["median"] == pytest.approx(1.0), group
    assert c["shapes"]["all"]["median_s"]["n"] == len(a.samples)
    assert {"decode 1-4", "decode 129+", "prefill", "mixed"} <= set(c["shapes"])
    # The fits take their level from the serving phase, which B leaves as it was: graph steps are
    # device time plus the loop's host line, eager steps the grid's shape times the loop's factor,
    # which comes out 2% lower against B's slower grid.
    ea, eb = c["eager_scale"]
    assert eb == pytest.approx(ea / 1.02, rel=2e-3)
    assert all(tb == pytest.approx(ta, rel=0.02) for ta, tb in c["fit_ms"].values())
    assert "host launch" in format_comparison(c)
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    a.save(pa)
    b.save(pb)
    assert main([str(pa), str(pb), "--out", str(tmp_path / "c.json")]) == 0
    assert "decode 1-4" in capsys.readouterr().out and (tmp_path / "c.json").is_file()


def test_refuses_profiles_that_do_not_compare() -> None:
    a = Profile.load(H200)
    other = replace(a, header=replace(a.header, model_config={**a.header.model_config, "num_layers": 2}))
    with pytest.raises(ValueError, match="different models"):
        compare(a, other)
    moved = replace(a, samples=[replace(s, num_decode=s.num_decode + 1000) for s in a.samples])
    with pytest.raises(ValueError, match="no shape in common"):
        compare(a, moved)
