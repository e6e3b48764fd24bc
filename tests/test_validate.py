"""Validation on CPU with a tiny random-weight model: the run completes, the simulated replica mirrors the
engine, and the report holds every number and file it promises; a report can be recomputed without the
engine (same trace slice, same shapes, previous errors kept). No error threshold is asserted: CPU timings
of a 2-layer model are noise; the GPU figures live in the benchmark results."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from backends.profile import Profile  # noqa: E402
from benchmarks.report import png_export_available  # noqa: E402
from benchmarks.validate import (  # noqa: E402
    HEADLINE,
    ValidationResult,
    error_rows,
    format_errors,
    load_policy,
    main_validate,
    mirror_sim_config,
    rebuild_trace,
    recompute,
    rel_error,
    replay_shapes,
    validate,
)
from engine.config import EngineConfig  # noqa: E402
from engine.profiler import ProfileGrid  # noqa: E402
from engine.testing import single_thread, tiny_engine_config, tiny_spec  # noqa: E402
from sim.config import SimConfig  # noqa: E402
from sim.results import RunResult  # noqa: E402
from sim.simulator import simulate  # noqa: E402
from traces.loaders import load_trace, write_trace  # noqa: E402
from traces.schema import Trace  # noqa: E402
from traces.transforms import cap_lengths, head, scale_to_rate  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def engine_config(**kw) -> EngineConfig:
    return tiny_engine_config(**({"num_kv_blocks": 160} | kw))


def tiny_trace(n: int = 20, seed: int = 0) -> Trace:
    rng = np.random.default_rng(seed)
    # Requests 0-9 share a 16-token hashed prefix (two 8-token trace blocks), so prefix hits happen.
    hashes = [(1, 2, 100 + i) if i < 10 else (200 + i,) for i in range(n)]
    return Trace(
        arrival=np.cumsum(rng.exponential(0.002, n)),
        prompt_len=rng.integers(17, 60, n),
        output_len=rng.integers(2, 12, n),
        prefix_hashes=hashes,
        hash_block_tokens=8,
        name="tiny-validate",
    )


def validate_slice(path: Path, out_dir: Path, profile_repeats: int = 2, **engine_kw) -> ValidationResult:
    """Validate the trace file at `path` on the tiny engine, profiled on the spot with the quick grid."""
    return validate(
        load_trace(path),
        engine_config(**engine_kw),
        profile_grid=ProfileGrid.quick(),
        profile_repeats=profile_repeats,
        profile_warmup=1,
        out_dir=out_dir,
        png=False,
        trace_spec={"trace": str(path)},
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("val")
    path = write_trace(tiny_trace(), base / "tiny.jsonl")
    return validate_slice(path, base / "report"), base / "report"


def test_validation_run_completes_and_mirrors_the_engine(run) -> None:
    res, _ = run
    m, p = res.measured, res.predicted
    assert list(m.requests["status"]) == ["finished"] * 20 == list(p.requests["status"])
    np.testing.assert_array_equal(m.requests["output_tokens"], p.requests["output_tokens"])
    np.testing.assert_array_equal(m.requests["arrival"], p.requests["arrival"])
    assert m.meta["kind"] == "engine" and p.meta["kind"] == "simulation"
    assert p.meta["cost_model"] == "calibrated" and p.meta["cost_model_profile"]["name"] == "calibrated"
    assert p.meta["num_kv_blocks"] == m.meta["num_kv_blocks"] == 160
    cfg = res.sim_config
    assert (cfg.block_size, cfg.max_num_batched_tokens, cfg.max_num_seqs, cfg.max_model_len) == (
        4,
        48,
        6,
        512,
    )
    assert cfg.enable_prefix_caching and cfg.enable_chunked_prefill and cfg.num_replicas == 1
    for field, (eng, sim) in res.errors["mirror"].items():
        assert eng == sim, field
    assert m.metrics["kv"]["prefix_hit_rate"] > 0 and p.metrics["kv"]["prefix_hit_rate"] > 0


def test_errors_hold_every_promised_number(run) -> None:
    res, _ = run
    e = res.errors
    keys = {(r["metric"], r["stat"]) for r in e["metrics"]}
    for metric in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        for stat in ("mean", "p50", "p90", "p99"):
            assert (metric, stat) in keys
    for metric in ("request_throughput", "output_throughput", "kv.preemptions_total", "kv.prefix_hit_rate"):
        assert (metric, "") in keys
    for r in e["metrics"]:
        if r["measured"] and r["predicted"] is not None:
            assert r["rel_error"] == pytest.approx((r["predicted"] - r["measured"]) / r["measured"])
        assert r["headline"] == ((r["metric"], r["stat"]) in HEADLINE)
    assert e["headline"]["max_abs_rel_error"] is not None
    assert e["per_request"]["ttft"]["n"] == e["per_request"]["e2e"]["n"] == 20
    it = e["iterations"]
    assert it["all"]["n"] == len(res.measured.iterations["start"]) == len(res.iterations["start"])
    assert it["decode"]["n"] + it["prefill"]["n"] + it["mixed"]["n"] == it["all"]["n"]
    # Step time per launch path: every iteration in exactly one path, sums that add up, worst first.
    paths = it["by_path"]
    assert sum(r["n"] for r in paths) == it["all"]["n"]
    assert sum(r["measured_s"] for r in paths) == pytest.approx(float(res.iterations["execute_s"].sum()))
    gaps = [abs(r["predicted_s"] - r["measured_s"]) for r in paths]
    assert gaps == sorted(gaps, reverse=True)
    assert {r["path"] for r in paths} == set(res.iterations["path"].tolist())
    assert all(p.startswith(("decode", "step graph", "eager")) for p in res.iterations["path"])
    # Iteration shapes were recorded and agree with the engine's own iteration rows.
    t = res.iterations
    np.testing.assert_array_equal(t["num_seqs"], res.measured.iterations["num_seqs"])
    np.testing.assert_array_equal(t["prefill_tokens"], res.measured.iterations["prefill_tokens"])
    np.testing.assert_array_equal(t["num_decode"], res.measured.iterations["decode_tokens"])
    assert (t["predicted_s"] > 0).all() and (t["execute_s"] > 0).all()
    # Host launches: the run's own per step, the profile's where it has a line for the step's path.
    assert (t["launch_s"] > 0).all() and (t["launch_s"] <= t["execute_s"]).all()
    launches = it["host_launch"]
    assert launches and sum(r["n"] for r in launches) <= it["all"]["n"]
    for r in launches:
        sel = (t["path"] == r["path"]) & np.isfinite(t["predicted_launch_s"])
        assert r["n"] == int(sel.sum())
        ratios = t["launch_s"][sel] / t["predicted_launch_s"][sel]
        assert r["median_ratio"] == pytest.approx(float(np.median(ratios)))
    assert "host launch, the run's against the profile's" in format_errors(e)
    assert e["cost_model"]["name"] == "calibrated" and e["profile_fit"]["all"]["n"] > 0
    assert any(n.startswith("replay check: the") for n in e["notes"])  # recompute will rebuild this run
    # Step-time sensitivity: every headline figure with an error, re-simulated 1% faster and slower.
    sens = e["sensitivity"]
    assert sens["delta"] == 0.01 and sens["step_bias"] == it["total_busy_seconds"]["rel_error"]
    head = [r for r in e["metrics"] if r["headline"] and r["rel_error"] is not None]
    assert [(x["metric"], x["stat"], x["rel_error"]) for x in sens["rows"]] == [
        (r["metric"], r["stat"], r["rel_error"]) for r in head
    ]


def test_report_directory(run) -> None:
    res, out = run
    assert res.out_dir == out
    for f in (
        "index.html",
        "side_by_side.html",
        "errors.json",
        "iterations.csv",
        "profile.json",
        "measured/summary.json",
        "predicted/summary.json",
        "measured/requests.csv",
    ):
        assert (out / f).is_file(), f
    page = (out / "index.html").read_text()
    assert "Plotly" in page and "<script src=" not in page  # plotly.js inlined: opens offline
    for fig in ("ttft_scatter", "e2e_scatter", "iteration_time", "iteration_scatter", "profile_fit"):
        assert f"id='{fig}'" in page
    assert "side_by_side.html" in page and "Mirror check" in page and "step time by launch path" in page
    assert "host launch by launch path" in page
    errors = json.loads((out / "errors.json").read_text())
    assert errors["metrics"][0]["metric"] == "ttft_ms"
    assert not any("PNG" in n for n in errors["notes"])  # png=False: not even attempted
    with open(out / "iterations.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(res.iterations["start"]) and rows[0]["kind"] in ("prefill", "mixed", "decode")
    assert Profile.load(out / "profile.json") == res.cost.profile


def test_given_profile_is_used_and_checked(run, tmp_path: Path) -> None:
    res, out = run
    again = validate(tiny_trace(8, seed=1), engine_config(), profile=out / "profile.json")
    assert again.cost.profile_path == str(out / "profile.json")
    assert "profile measured on the spot, on this engine" not in again.notes
    with pytest.raises(ValueError, match="block_size: profile 4, engine 8"):
        validate(tiny_trace(4), engine_config(block_size=8), profile=out / "profile.json")
    # An engine allowed larger steps than profiled still validates, with a note.
    bigger = validate(
        tiny_trace(6, seed=2),
        engine_config(max_num_batched_tokens=64),
        profile=out / "profile.json",
        load=0.5,
        capacity_from="sim",
    )
    assert any("max_num_batched_tokens 64 > profiled 48" in n for n in bigger.notes)
    cap = bigger.errors["capacity"]
    assert cap["source"] == "sim" and cap["rate"] == pytest.approx(0.5 * cap["request_throughput"])
    assert "simulated_load" not in cap  # the simulator's capacity is the capacity


def test_mirror_refuses_overrides_that_break_it(run) -> None:
    from engine.llm_engine import LLMEngine

    eng = LLMEngine(engine_config())
    assert mirror_sim_config(eng, {"jump": False}).jump is False
    with pytest.raises(ValueError, match="num_kv_blocks.*mirrored"):
        mirror_sim_config(eng, {"num_kv_blocks": 10})


def test_error_rows_and_rel_error() -> None:
    assert rel_error(1.1, 1.0) == pytest.approx(0.1) and rel_error(0.9, 1.0) == pytest.approx(-0.1)
    assert rel_error(1.0, 0.0) is None and rel_error(None, 1.0) is None
    meas = {
        "ttft_ms": {"p50": 100.0, "p90": 200.0},
        "output_throughput": 50.0,
        "kv": {"preemptions_total": 0},
    }
    pred = {
        "ttft_ms": {"p50": 104.0, "p90": 180.0},
        "output_throughput": 50.0,
        "kv": {"preemptions_total": 3},
    }
    rows = {(r["metric"], r["stat"]): r for r in error_rows(meas, pred, target=0.05)}
    assert rows[("ttft_ms", "p50")]["within_target"] is True
    assert rows[("ttft_ms", "p90")]["within_target"] is False
    assert rows[("ttft_ms", "p90")]["rel_error"] == pytest.approx(-0.1)
    pre = rows[("kv.preemptions_total", "")]
    assert pre["rel_error"] is None and pre["abs_error"] == 3 and pre["within_target"] is None
    assert rows[("tpot_ms", "p50")]["measured"] is None  # absent metrics stay undefined, not zero


def test_policy_file_errors(tmp_path: Path) -> None:
    p = tmp_path / "policy.json"
    p.write_text(json.dumps({"scheduler": "fcfs", "max_num_seqs": 4}))
    assert load_policy(p) == {"scheduler": "fcfs", "max_num_seqs": 4}
    p.write_text(json.dumps({"max_num_seqs": 4, "router": "x"}))
    with pytest.raises(ValueError, match=r"policy\.json: unknown field\(s\) router"):
        load_policy(p)
    p.write_text("{\n 'a': 1}")
    with pytest.raises(ValueError, match="line 2"):
        load_policy(p)


def test_command_line_entry_point(tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(
        json.dumps({"max_num_batched_tokens": 48, "max_num_seqs": 6, "block_size": 4, "num_kv_blocks": 200})
    )
    out = tmp_path / "cli"
    runs = main_validate(
        model=tiny_spec("qwen2"),
        device="cpu",
        policy=str(policy),
        max_requests=10,
        cap_total=120,
        profile_grid="quick",
        load=[0.5, 0.9],
        capacity_from="engine",
        out=str(out),
        png="no",
    )
    assert len(runs) == 2 and runs[0].engine is runs[1].engine  # one engine for both loads
    for res, load in zip(runs, (0.5, 0.9)):
        assert res.measured.meta["num_kv_blocks"] == 200 and res.sim_config.max_num_seqs == 6
        assert res.measured.metrics["finished"] == 10
        cap = res.errors["capacity"]
        assert cap["load"] == load and cap["source"] == "engine"
        # the simulator's own capacity beside it: the load each side ran at
        sim_cap = cap["simulated_request_throughput"]
        assert sim_cap > 0
        assert cap["simulated_rel_error"] == pytest.approx(sim_cap / cap["request_throughput"] - 1)
        assert cap["simulated_load"] == pytest.approx(cap["rate"] / sim_cap)
        assert f"{cap['simulated_load']:.1%} of the simulator's" in format_errors(res.errors)
        assert (out / f"load-{load:g}" / "index.html").is_file()
        assert "of its own capacity" in (out / f"load-{load:g}" / "index.html").read_text()
        # Each run starts from a fresh block manager, as the simulator does: its counters hold this
        # run's admissions only (6 sequences x <= 30 blocks fit the 200-block pool: no preemption).
        assert res.measured.metrics["kv"]["preemptions_total"] == 0
        assert res.measured.meta["kv"]["queried_tokens"] == int(res.measured.requests["prompt_tokens"].sum())
    assert (
        runs[0].errors["capacity"]["request_throughput"] == runs[1].errors["capacity"]["request_throughput"]
    )
    assert runs[0].trace.arrival[-1] > runs[1].trace.arrival[-1]  # the lighter load is spread wider


@pytest.mark.slow
@pytest.mark.skipif(not png_export_available(), reason="PNG export needs kaleido and Chrome/Chromium")
def test_png_export(tmp_path: Path) -> None:
    res = validate(
        tiny_trace(8),
        engine_config(),
        profile_grid=ProfileGrid.quick(),
        profile_repeats=2,
        profile_warmup=1,
        out_dir=tmp_path,
        png=True,
    )
    for f in ("ttft_scatter", "e2e_scatter", "iteration_time", "iteration_scatter", "profile_fit"):
        assert (tmp_path / "png" / f"{f}.png").stat().st_size > 1000
    assert (tmp_path / "png" / "side_by_side" / "ttft_cdf.png").is_file()
    assert res.out_dir == tmp_path


# ------------------------------------------------------------------------------------------------
# Recomputing a report without the engine


def test_recompute_reproduces_the_prediction_and_the_shapes(run, tmp_path: Path) -> None:
    res, out = run
    again = recompute(out, out_dir=tmp_path / "re", png=False)
    # Same profile, same slice, same mirrored configuration: the same simulated timeline.
    for k in ("first_scheduled", "first_token", "finish"):
        np.testing.assert_array_equal(again.predicted.requests[k], res.predicted.requests[k])
    # The shapes rebuilt from the measured iteration boundaries are the ones the engine ran.
    cols = ("num_seqs", "prefill_tokens", "prefill_cached_tokens", "decode_context", "decode_max_context")
    for col in cols:
        np.testing.assert_array_equal(again.iterations[col], res.iterations[col], err_msg=col)
    np.testing.assert_array_equal(again.iterations["predicted_s"], res.iterations["predicted_s"])
    # The launch times come back from iterations.csv (10 significant digits).
    np.testing.assert_allclose(again.iterations["launch_s"], res.iterations["launch_s"], rtol=1e-9)
    before, after = res.errors["iterations"]["host_launch"], again.errors["iterations"]["host_launch"]
    assert [(r["path"], r["n"]) for r in after] == [(r["path"], r["n"]) for r in before]
    assert [r["median_ratio"] for r in after] == pytest.approx([r["median_ratio"] for r in before], rel=1e-8)
    old = {(r["metric"], r["stat"]): r["rel_error"] for r in res.errors["metrics"]}
    new = {(r["metric"], r["stat"]): r["rel_error"] for r in again.errors["metrics"]}
    prev = {(r["metric"], r["stat"]): r["rel_error"] for r in again.errors["previous"]["metrics"]}
    assert new == old == prev
    assert again.errors["sensitivity"] == res.errors["sensitivity"]
    assert again.errors["original"] == again.errors["previous"] and again.engine is None
    assert "before" in format_errors(again.errors)
    page = (tmp_path / "re" / "index.html").read_text()
    assert "error before recompute" in page and "Step-time sensitivity" in page
    assert "step-time sensitivity" in format_errors(again.errors)
    assert (tmp_path / "re" / "measured" / "requests.csv").is_file()  # written elsewhere: the run comes along
    assert any(n.startswith("recomputed ") for n in again.errors["notes"])


def test_recompute_in_place_keeps_the_measured_run(run, tmp_path: Path) -> None:
    _, out = run
    d = shutil.copytree(out, tmp_path / "copy")
    before = {p.name: p.read_bytes() for p in (d / "measured").iterdir()}
    first = json.loads((d / "errors.json").read_text())
    # runs of one machine share its profile through a link, which an in-place recompute leaves alone
    shared = (tmp_path / "shared.json")
    (d / "profile.json").rename(shared)
    (d / "profile.json").symlink_to(shared)
    # what the card did during the measured run (GPU runs only) stays with it
    gpu = {"summary": {"samples": 2, "sm_clock_mhz_mean": 1890.0, "sm_clock_mhz_min": 1800.0,
                       "sm_clock_mhz_max": 1980.0, "power_w_mean": 600.0, "power_capped_share": 0.5,
                       "temp_c_max": 60}, "samples": [], "error": None}  # fmt: skip
    (d / "errors.json").write_text(json.dumps({**first, "gpu": gpu}))
    recompute(d, png=False)
    recompute(d, png=False)  # twice: "previous" is the first recompute, "original" the measured report's
    after = {p.name: p.read_bytes() for p in (d / "measured").iterdir()}
    assert before == after and (d / "profile.json").is_symlink()
    e = json.loads((d / "errors.json").read_text())
    assert e["original"]["headline"] == first["headline"] and e["gpu"] == gpu
    assert "GPU during the measured run: SM clock mean 1890 MHz" in format_errors(e)
    assert e["previous"]["metrics"] == [
        {k: r[k] for k in ("metric", "stat", "label", "predicted", "rel_error")} for r in e["metrics"]
    ]


def test_recompute_refuses_what_does_not_match(run, tmp_path: Path) -> None:
    res, out = run
    with pytest.raises(ValueError, match="not the slice the engine served"):
        recompute(out, out_dir=tmp_path / "a", png=False, slicing={"max_requests": 12})
    other = res.cost.profile
    other = type(other)(type(other.header)(**{**vars(other.header), "device": "other device"}), other.samples,
                        other.overhead)
    with pytest.raises(ValueError, match="does not describe the measured engine"):
        recompute(out, other, out_dir=tmp_path / "b", png=False)
    with pytest.raises(FileNotFoundError, match="not a validation report directory"):
        recompute(tmp_path / "nothing", png=False)
    cfg = SimConfig.from_dict(dict(res.predicted.meta["config"]))
    cfg.max_num_batched_tokens = 16
    with pytest.raises(ValueError, match="rebuilds differently"):
        replay_shapes(res.measured, res.trace, cfg)


def test_rebuild_trace_infers_an_unrecorded_slice(tmp_path: Path) -> None:
    # A "measured" run in the results format (the simulator writes the same), of the first 30 requests of
    # a trace file capped at 200 tokens in total and scaled to 4 req/s; nothing about the slicing recorded.
    rng = np.random.default_rng(4)
    full = Trace(np.cumsum(rng.exponential(0.5, 60)), rng.integers(20, 400, 60), rng.integers(2, 40, 60))
    path = write_trace(full, tmp_path / "t.jsonl")
    served = scale_to_rate(cap_lengths(head(load_trace(path), 30), max_total=200), 4.0)
    measured = simulate(served, SimConfig(num_kv_blocks=400, max_num_batched_tokens=128))
    measured.meta["trace_source"] = str(path)
    trace, spec, notes = rebuild_trace(measured, {"capacity": {"rate": 4.0}})
    np.testing.assert_array_equal(trace.prompt_len, served.prompt_len)
    np.testing.assert_allclose(trace.arrival, served.arrival, rtol=0, atol=1e-12)
    assert spec["max_requests"] == 30 and spec["cap_total"] == 200
    assert any("not recorded" in n for n in notes) and any("cap inferred" in n for n in notes)
    with pytest.raises(ValueError, match="arrival of request"):
        rebuild_trace(measured, {"capacity": {"rate": 5.0}})
    measured.meta["trace_source"] = str(tmp_path / "gone.jsonl")
    with pytest.raises(FileNotFoundError, match="pass --trace"):
        rebuild_trace(measured, {})


def test_command_line_recompute(run, tmp_path: Path, capsys) -> None:
    _, out = run
    d = shutil.copytree(out, tmp_path / "a" / "load-0.5")
    shutil.copytree(out, tmp_path / "b" / "load-0.5")
    dirs = [str(d), str(tmp_path / "b" / "load-0.5")]
    runs = main_validate(recompute=dirs, out=str(tmp_path / "o"), png="no")
    assert len(runs) == 2
    for sub in ("a", "b"):
        assert (tmp_path / "o" / sub / "load-0.5" / "errors.json").is_file()
    text = capsys.readouterr().out
    assert text.count("(recomputed)") == 2 and "before" in text
    assert RunResult.read(tmp_path / "o" / "a" / "load-0.5" / "predicted").meta["kind"] == "simulation"


def test_repeat_summary_spread_and_range() -> None:
    from benchmarks.validation_errors import repeat_summary, repeated_runs

    def metrics(ttft50: float, thr: float) -> dict:
        return {"ttft_ms": {"p50": ttft50, "p90": 2 * ttft50}, "output_throughput": thr}

    runs = [metrics(100.0, 50.0), metrics(110.0, 52.0), metrics(90.0, 51.0)]
    rp = repeat_summary(runs, metrics(104.0, 60.0), target=0.05)
    rows = {(x["metric"], x["stat"]): x for x in rp["rows"]}
    t = rows[("ttft_ms", "p50")]
    assert t["measured"] == [100.0, 110.0, 90.0] and t["median"] == 100.0
    assert t["spread"] == pytest.approx(0.2) and t["rel_error_vs_median"] == pytest.approx(0.04)
    assert t["predicted_within_range"] is True
    th = rows[("output_throughput", "")]
    assert th["predicted_within_range"] is False and th["rel_error_vs_median"] == pytest.approx(60 / 51 - 1)
    assert rows[("tpot_ms", "p50")]["spread"] is None  # not measured: no figure, no verdict
    assert rp["runs"] == 3 and rp["all_within_target_vs_median"] is False
    assert rp["max_abs_rel_error_vs_median"] == pytest.approx(60 / 51 - 1)
    # A recomputed report rebuilds the runs from what it stored.
    again = repeat_summary(repeated_runs(rp), metrics(104.0, 60.0), target=0.05)
    assert again == rp
    assert "measured 3 times" in format_errors({**_errors_stub(), "repeats": rp})
    # A run whose metrics were never computed is a bug, not a run without spread.
    with pytest.raises(ValueError, match=r"run\(s\) \[2\] lack ttft_ms.p50"):
        repeat_summary([runs[0], {}, runs[2]], metrics(104.0, 60.0))


def _errors_stub() -> dict:
    return {
        "metrics": [],
        "headline": {"max_abs_rel_error": None},
        "target": 0.05,
        "iterations": {"all": {"n": 0}},
    }


def test_validate_repeats_serves_the_slice_again(run, tmp_path: Path) -> None:
    res, out = run
    path = write_trace(tiny_trace(8, seed=3), tmp_path / "t.jsonl")
    again = validate(
        load_trace(path), engine_config(), profile=out / "profile.json", repeats=2,
        out_dir=tmp_path / "rep", png=False, trace_spec={"trace": str(path)},
    )  # fmt: skip
    rp = again.errors["repeats"]
    assert rp["runs"] == 2 and all(len(x["measured"]) == 2 for x in rp["rows"])
    assert all(v is not None for x in rp["rows"] for v in x["measured"])  # the second run has its figures
    first = {(x["metric"], x["stat"]): x["measured"][0] for x in rp["rows"]}
    assert first[("ttft_ms", "p50")] == again.measured.metrics["ttft_ms"]["p50"]
    assert "The slice served 2 times" in (tmp_path / "rep" / "index.html").read_text()
    assert json.loads((tmp_path / "rep" / "errors.json").read_text())["repeats"]["runs"] == 2
    # Recomputing keeps what the engine measured in every run and re-judges the new prediction.
    re = main_validate(recompute=[str(tmp_path / "rep")], png="no")[0]
    assert [x["measured"] for x in re.errors["repeats"]["rows"]] == [x["measured"] for x in rp["rows"]]
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        validate(tiny_trace(4), engine_config(), profile=out / "profile.json", repeats=0)



def test_async_validation_mirrors_the_overlapped_loop_and_recomputes(tmp_path: Path) -> None:
    """With async scheduling, engine and simulator both run one step ahead; the iteration table
    holds periods; a recompute rebuilds the same shapes and prediction."""
    path = write_trace(tiny_trace(12, seed=3), tmp_path / "t.jsonl")
    res = validate_slice(path, tmp_path / "report", profile_repeats=1, async_scheduling="all")
    assert res.errors["mirror"]["async_scheduling"] == ["all", "all"]
    assert res.sim_config.async_scheduling == "all"
    assert (res.measured.requests["status"] == "finished").all()
    assert (res.iterations["measured_s"] > 0).all()
    np.testing.assert_array_equal(res.iterations["measured_s"], res.iterations["execute_s"])
    again = recompute(tmp_path / "report", out_dir=tmp_path / "re", png=False)
    np.testing.assert_array_equal(again.predicted.requests["finish"], res.predicted.requests["finish"])
    np.testing.assert_array_equal(again.iterations["num_seqs"], res.iterations["num_seqs"])
