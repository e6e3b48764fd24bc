"""Calibrated cost model: fitting recovers known coefficients from synthetic profiles, the decode line is
exact (the simulator's jump relies on it), and mismatched configurations are refused."""

from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.accelerators import get_accelerator
from backends.calibrated import CalibratedCostModel
from backends.cost_model import COST_MODELS, BatchShape, ParallelLayout
from backends.models import get_model
from backends.profile import OverheadSample, Profile, ProfileHeader, ShapeSample
from sim.config import SimConfig
from sim.simulator import simulate
from traces.schema import Trace

BUCKETS = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 160, 192, 224, 256)
ARCH = get_model("llama-3.1-8b")

# The "true" machine the synthetic profiles are drawn from (seconds).
DEC = {"fixed": 4e-3, "batched": 0.0, "row": 5e-6, "row>64": 3e-5, "seq": 2e-6, "decode_ctx": 3e-8}
PRE = {
    "fixed": 8e-3,
    "token": 2e-5,
    "token>512": 6e-5,
    "prefill_attn": 1e-10,
    "prefill_kv": 1e-8,
    "decode_ctx": 3e-8,
    "seq": 1e-5,
}
SCHED = (5e-5, 1e-6, 2e-6, 1e-8)  # fixed, per seq, per prefill seq, per prefill token
COMP = (3e-5, 2e-6, 0.0, 5e-9)


def bucket(n: int) -> int:
    return next(b for b in BUCKETS if b >= n)


def true_execute(shape: BatchShape, dec: dict | None = None) -> float:
    dec = dec or DEC
    nd, ctx = shape.num_decode, shape.decode_context
    if not shape.prefill:
        r = bucket(nd)
        return (
            dec["fixed"]
            + dec["batched"] * (r > 1)
            + dec["row"] * r
            + dec["row>64"] * max(0, r - 64)
            + dec["seq"] * nd
            + dec["decode_ctx"] * ctx
        )
    t = shape.num_tokens
    attn = sum(n * (c + (n + 1) / 2) for n, c in shape.prefill)
    kvt = sum(n + c for n, c in shape.prefill)
    return (
        PRE["fixed"]
        + PRE["token"] * t
        + PRE["token>512"] * max(0, t - 512)
        + PRE["prefill_attn"] * attn
        + PRE["prefill_kv"] * kvt
        + PRE["decode_ctx"] * ctx
        + PRE["seq"] * shape.num_seqs
    )


def overhead_of(shape: BatchShape) -> OverheadSample:
    s, p = shape.num_seqs, len(shape.prefill)
    pt = shape.num_tokens - shape.num_decode
    x = (1, s, p, pt)
    return OverheadSample(
        s,
        p,
        pt,
        s - p,
        sum(a * b for a, b in zip(SCHED, x)),
        sum(a * b for a, b in zip(COMP, x)),
        1e-4,
        2e-5,
        3,
    )


def grid() -> list[BatchShape]:
    shapes = []
    for b in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 40, 48, 64, 80, 96, 100, 128, 144, 192, 200, 256):
        for c in (128, 1024, 4096):
            shapes.append(BatchShape([], b, b * c))
    for t in (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192):
        for c in (0, 1024, 4096):
            shapes.append(BatchShape([(t, c)]))
        if t >= 64:
            shapes.append(BatchShape([(t // 4, 0)] * 4))
    for b in (4, 64, 200):
        for n in (64, 512, 8192 - b):
            for c in (0, 4096):
                shapes.append(BatchShape([(n, c)], b, b * 1500))
    return shapes


def header(**overrides) -> ProfileHeader:
    cfg = {
        f: getattr(ARCH, f)
        for f in (
            "num_layers",
            "hidden_size",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "intermediate_size",
            "vocab_size",
        )
    }
    base = ProfileHeader(
        device="NVIDIA H100 80GB HBM3",
        device_kind="cuda",
        model="llama-3.1-8b",
        model_config=cfg,
        dtype="bfloat16",
        tp=1,
        pp=1,
        block_size=16,
        num_kv_blocks=30000,
        max_num_batched_tokens=8192,
        max_num_seqs=256,
        max_model_len=32768,
        enable_prefix_caching=True,
        attention_backend="triton",
        cuda_graphs=True,
        graph_buckets=BUCKETS,
        warmup=1,
        repeats=3,
        software={"torch": "x"},
        date="2025-01-01T00:00:00+00:00",
        command="synthetic",
        wall_seconds=1.0,
    )
    return replace(base, **overrides)


def synthetic_profile(
    noise: float = 0.0,
    seed: int = 0,
    shapes: list[BatchShape] | None = None,
    dec: dict | None = None,
    **header_overrides,
) -> Profile:
    rng = np.random.default_rng(seed)
    samples, over = [], []
    for s in shapes or grid():
        t = true_execute(s, dec)
        times = tuple(float(t * np.exp(noise * rng.standard_normal())) for _ in range(3))
        samples.append(
            ShapeSample(tuple(s.prefill), s.num_decode, s.decode_context, times, statistics.median(times))
        )
        over.append(overhead_of(s))
    return Profile(header(**header_overrides), samples, over)


def test_noise_free_fit_recovers_the_coefficients() -> None:
    m = CalibratedCostModel(profile=synthetic_profile())
    dec = dict(zip(m.decode_fit.terms, m.decode_fit.coef))
    pre = dict(zip(m.prefill_fit.terms, m.prefill_fit.coef))
    for truth, fitted, scale in ((DEC, dec, 256), (PRE, pre, 8192)):
        for term, c in fitted.items():
            # compare contributions at a typical size: a term absent from the truth must vanish
            assert c == pytest.approx(truth.get(term, 0.0), rel=1e-5, abs=1e-12 / scale), term
    assert dec["decode_ctx"] == pytest.approx(DEC["decode_ctx"], rel=1e-6)
    assert m.decode_fit.knots and 64 in m.decode_fit.knots and 512 in m.prefill_fit.knots
    np.testing.assert_allclose(m.schedule_fit.coef, SCHED, rtol=1e-5, atol=1e-13)
    np.testing.assert_allclose(m.complete_fit.coef, COMP, rtol=1e-5, atol=1e-13)
    for s in grid() + [BatchShape([(300, 77), (5, 0)], 7, 7 * 333), BatchShape([], 77, 77 * 900)]:
        o = overhead_of(s)
        want = true_execute(s) + o.schedule_s + o.complete_s
        assert m.stage_time(s) == pytest.approx(want, rel=1e-7)
    assert m.fit_report()["all"]["max_abs_rel_error"] < 1e-7


def test_noisy_fit_stays_close_and_physical() -> None:
    m = CalibratedCostModel(profile=synthetic_profile(noise=0.02, seed=3))
    rep = m.fit_report()
    assert rep["all"]["median_abs_rel_error"] < 0.02
    assert all(
        c >= 0 for fit in (m.decode_fit, m.prefill_fit, m.schedule_fit, m.complete_fit) for c in fit.coef
    )
    dec = dict(zip(m.decode_fit.terms, m.decode_fit.coef))
    assert dec["decode_ctx"] == pytest.approx(DEC["decode_ctx"], rel=0.1)
    assert dec["fixed"] == pytest.approx(DEC["fixed"], rel=0.1)
    for s in (
        BatchShape([(2048, 0)]),
        BatchShape([], 64, 64 * 2000),
        BatchShape([(1000, 3000)], 100, 100 * 800),
    ):
        assert m.stage_time(s) == pytest.approx(true_execute(s), rel=0.05)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 400), per_seq=st.integers(1, 20000))
def test_decode_line_is_exact(n: int, per_seq: int) -> None:
    m = _MODEL
    ctx = n * per_seq
    a, b = m.decode_line(n)
    assert m.stage_time(BatchShape([], n, ctx)) == a + b * ctx  # bit for bit
    assert b == m.decode_fit.coef[-1] and a > 0
    assert sum(m.parts(BatchShape([], n, ctx)).values()) == pytest.approx(a + b * ctx, rel=1e-12)
    assert sum(m.breakdown(BatchShape([], n, ctx)).values()) == pytest.approx(a + b * ctx, rel=1e-12)


_MODEL = CalibratedCostModel(profile=synthetic_profile(noise=0.01, seed=1))


def test_graph_padding_shows_in_the_decode_line() -> None:
    m = _MODEL
    assert m.rows(17) == 32 and m.rows(256) == 256 and m.rows(300) == 300
    assert m.decode_line(0) == (0.0, 0.0)
    assert m.stage_time(BatchShape([])) == 0.0
    with pytest.raises(ValueError, match="num_decode"):
        m.decode_line(-1)
    with pytest.raises(ValueError, match="decode_context"):
        m.stage_time(BatchShape([], 3, 2))
    with pytest.raises(ValueError, match="prefill entry"):
        m.stage_time(BatchShape([(0, 4)]))


def test_breakdown_and_parts_sum_to_stage_time() -> None:
    m = _MODEL
    s = BatchShape([(700, 1200), (30, 0)], 20, 20 * 900)
    assert sum(m.breakdown(s).values()) == pytest.approx(m.stage_time(s), rel=1e-12)
    p = m.parts(s)
    assert set(p) == {"execute", "schedule", "complete"}
    assert sum(p.values()) == pytest.approx(m.stage_time(s), rel=1e-12)


def test_simulator_jump_gives_the_same_timeline_with_the_calibrated_model() -> None:
    rng = np.random.default_rng(5)
    n = 300
    tr = Trace(np.cumsum(rng.exponential(1 / 20.0, n)), rng.integers(10, 3000, n), rng.integers(1, 400, n))
    cfg = dict(num_kv_blocks=3000, max_num_batched_tokens=2048, max_num_seqs=64)
    a = simulate(tr, SimConfig(jump=False, **cfg), _MODEL)
    b = simulate(tr, SimConfig(jump=True, **cfg), _MODEL)
    for k in ("first_scheduled", "first_token", "finish"):
        np.testing.assert_allclose(a.requests[k], b.requests[k], rtol=0, atol=1e-9)
    assert a.meta["iterations"] == b.meta["iterations"]
    assert len(b.iterations["start"]) < len(a.iterations["start"])  # it did jump
    assert b.meta["cost_model"] == "calibrated"


def test_registry_construction_and_refusals(tmp_path: Path) -> None:
    path = synthetic_profile().save(tmp_path / "h100.json")
    m = COST_MODELS.create(
        "calibrated", ARCH, get_accelerator("h100-sxm"), ParallelLayout(1, 1), dtype="bf16", profile=str(path)
    )
    assert m.name == "calibrated" and m.profile_path == str(path)
    assert m.describe()["device"] == "NVIDIA H100 80GB HBM3"
    assert CalibratedCostModel.from_file(path).stage_time(BatchShape([(100, 0)])) == m.stage_time(
        BatchShape([(100, 0)])
    )
    with pytest.raises(ValueError, match="tp=2"):
        COST_MODELS.create("calibrated", ARCH, "h100-sxm", ParallelLayout(2, 1), dtype="bf16", profile=path)
    with pytest.raises(ValueError, match="float16"):
        COST_MODELS.create("calibrated", ARCH, "h100-sxm", ParallelLayout(), dtype="fp16", profile=path)
    with pytest.raises(ValueError, match="num_layers 36 vs 32"):
        COST_MODELS.create("calibrated", get_model("qwen3-8b"), "h100-sxm", ParallelLayout(), profile=path)
    with pytest.raises(ValueError, match="H200"):
        COST_MODELS.create("calibrated", ARCH, get_accelerator("h200"), ParallelLayout(), profile=path)
    with pytest.raises(ValueError, match="needs a measured profile"):
        COST_MODELS.create("calibrated", ARCH, "h100-sxm", ParallelLayout(), dtype="bf16")
    with pytest.raises(FileNotFoundError):
        CalibratedCostModel.from_file(tmp_path / "missing.json")


def test_fit_report_structure() -> None:
    rep = _MODEL.fit_report()
    assert set(rep["groups"]) == {"decode", "prefill"}
    assert rep["all"]["n"] == len(_MODEL.profile.samples) == len(rep["samples"])
    for r in rep["samples"]:
        assert r["rel_error"] == pytest.approx((r["predicted_s"] - r["measured_s"]) / r["measured_s"])
    g = rep["groups"]["decode"]
    assert g["abs_rel_error"]["median"] <= g["abs_rel_error"]["p90"] <= g["abs_rel_error"]["max"]
    text = _MODEL.format_fit_report()
    assert "decode" in text and "prefill" in text and "overhead.schedule" in text


def test_profiles_it_cannot_fit() -> None:
    only_decode = [s for s in grid() if not s.prefill]
    with pytest.raises(ValueError, match="both pure-decode and prefill"):
        CalibratedCostModel(profile=synthetic_profile(shapes=only_decode))
    too_few = [BatchShape([], 1, 100), BatchShape([], 2, 300), BatchShape([(64, 0)]), BatchShape([(128, 0)])]
    with pytest.raises(ValueError, match="needs at least"):
        CalibratedCostModel(profile=synthetic_profile(shapes=too_few))
    # No mixed batches: decode attention inside a mixed step borrows the decode group's coefficient.
    no_mixed = [s for s in grid() if not (s.prefill and s.num_decode)]
    m = CalibratedCostModel(profile=synthetic_profile(shapes=no_mixed))
    assert any("no mixed samples" in n for n in m.notes)
    pre = dict(zip(m.prefill_fit.terms, m.prefill_fit.coef))
    assert pre["decode_ctx"] == m.decode_fit.coef[-1] == pytest.approx(DEC["decode_ctx"], rel=1e-6)
    # No overhead records: CPU work outside the step is zero, and the report says so.
    p = synthetic_profile()
    p.overhead = []
    m = CalibratedCostModel(profile=p)
    assert m.parts(BatchShape([], 4, 400))["schedule"] == 0.0 and any("no overhead" in n for n in m.notes)


def test_eager_profile_has_no_padding_term() -> None:
    m = CalibratedCostModel(profile=synthetic_profile(cuda_graphs=False, graph_buckets=()))
    assert m.rows(17) == 17 and "seq" not in m.decode_fit.terms


def test_batch_one_graph_dip_is_recovered() -> None:
    # Batch 1 runs 1 ms faster than the batched trend (a fused-GEMV graph): the 'batched' term holds it.
    dec = dict(DEC, batched=1e-3)
    m = CalibratedCostModel(profile=synthetic_profile(dec=dec))
    fitted = dict(zip(m.decode_fit.terms, m.decode_fit.coef))
    assert fitted["batched"] == pytest.approx(1e-3, rel=1e-5)
    for n in (1, 2, 5, 64):
        s = BatchShape([], n, n * 700)
        assert m.parts(s)["execute"] == pytest.approx(true_execute(s, dec), rel=1e-7)
    # Without graphs batch 1 has no special path and the term is not fitted.
    assert (
        "batched"
        not in CalibratedCostModel(
            profile=synthetic_profile(cuda_graphs=False, graph_buckets=())
        ).decode_fit.terms
    )


def test_one_token_steps_ride_the_decode_graph() -> None:
    m = _MODEL
    # A 1-token prefill chunk after a 300-token prefix hit, with three decodes: one graph step of 4 rows.
    s = BatchShape([(1, 300)], 3, 300)
    assert m.as_decode(s) == (4, 300 + 301)
    assert m.parts(s)["execute"] == m.parts(BatchShape([], 4, 601))["execute"]
    assert m.as_decode(BatchShape([(2, 300)], 3, 300)) is None  # two tokens: the eager path
    assert m.as_decode(BatchShape([(1, 0)] * 257)) is None  # past the largest graph bucket
    eager = CalibratedCostModel(profile=synthetic_profile(cuda_graphs=False, graph_buckets=()))
    assert eager.as_decode(s) is None and eager.as_decode(BatchShape([], 3, 30)) == (3, 30)
