"""Calibrated cost model: fitting recovers a known machine from synthetic profiles (per-batch decode lines,
the attention kernel's critical path and split plan, the slower of CPU launch work and GPU work for eager
steps, the bookkeeping's hashing), the decode line is exact (the simulator's jump relies on it, also with
the longest-context term), and mismatched configurations are refused."""

from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.accelerators import get_accelerator
from backends.calibrated import (
    FEW_SEQS,
    FEW_SEQS_MIN_STEPS,
    CalibratedCostModel,
    triton_decode_splits,
    triton_decode_tile,
)
from backends.cost_model import COST_MODELS, BatchShape, ParallelLayout
from backends.models import get_model
from backends.profile import (
    MODEL_SHAPE_FIELDS,
    OverheadSample,
    Profile,
    ProfileHeader,
    ServingStep,
    ShapeSample,
)
from sim.config import SimConfig
from sim.simulator import simulate
from traces.schema import Trace

BUCKETS = (1, 2, 4, 8, 16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256)
ARCH = get_model("llama-3.1-8b")  # 8 KV heads
SMS = 132
MAX_LEN = 32768

# The "true" machine the synthetic profiles are drawn from (seconds).
# The decode kernel's longest program per key: 64-key tiles (many programs) read slower than 128-key ones.
DEC = {"fixed": 4e-3, "row": 5e-6, "row>64": 3e-5, "seq": 2e-6, "longest[64]": 1.1e-6, "longest[128]": 6.5e-7}
DEC |= {"ctx": 1.2e-8, "ctx_row": 8e-11}  # per-token slope of the decode line: ctx + ctx_row * rows
GPU = {"fixed": 6e-3, "token": 2e-5, "token>512": 6e-5, "prefill_attn": 1e-10}
GPU |= {"decode_ctx": 3e-8, "longest": 5e-7}
CPU = {"cpu_fixed": 8e-3, "cpu_seq": 4e-5}
SCHED = (5e-5, 1e-6, 2e-6, 1e-8)  # fixed, per seq, per prefill seq, per prefill token
COMP = (3e-5, 2e-6, 0.0, 5e-9)
HASH = 4e-8  # per hashed token; the profiler's bookkeeping hashes whole contexts


def bucket(n: int) -> int:
    return next(b for b in BUCKETS if b >= n)


def splits(rows: int, sms: int = SMS) -> int:
    return triton_decode_splits(rows, ARCH.num_kv_heads, sms, MAX_LEN)


def rate_rows(nd: int, r: int) -> int:
    """The rows whose per-token rate nd decodes in the graph of r rows read KV at: a padded row reads
    none, so nd where the bucket below launches alike (one split, the same tile width)."""
    i = BUCKETS.index(r)
    if nd < r and i > 0:
        below = BUCKETS[i - 1]
        tile = lambda x: triton_decode_tile(x, ARCH.num_kv_heads, SMS, "bfloat16")  # noqa: E731
        if splits(below) == splits(r) == 1 and tile(below) == tile(r):
            return nd
    return r


def even_max(s: BatchShape) -> int:
    return s.decode_max_context or -(-s.decode_context // s.num_decode)


def true_execute(
    shape: BatchShape, overlapped: bool = True, triton: bool = True, step_buckets: tuple[int, ...] = ()
) -> float:
    """Step seconds of the synthetic machine: a GPU with the Triton kernel (critical-path attention,
    launches overlapped with execution) by default; `triton=False, overlapped=False` is a CPU device
    running the reference attention (one call per sequence, everything on the same cores)."""
    nd, ctx = shape.num_decode, shape.decode_context
    if not shape.prefill:
        r = bucket(nd)
        a = DEC["fixed"] + DEC["row"] * r + DEC["row>64"] * max(0, r - 64)
        b = DEC["ctx"] + DEC["ctx_row"] * rate_rows(nd, r)
        w = triton_decode_tile(r, ARCH.num_kv_heads, SMS, "bfloat16")
        crit = DEC[f"longest[{w}]"] * even_max(shape) / splits(r) if triton else 0.0
        return a + DEC["seq"] * nd + b * ctx + crit
    t = shape.num_tokens
    graphed = bool(step_buckets) and t <= step_buckets[-1] and shape.num_seqs <= 256
    if graphed:  # a step-graph replay: its bucket's token count, no Python launches
        t = next(b for b in step_buckets if b >= t)
    attn = sum(n * (c + (n + 1) / 2) for n, c in shape.prefill)
    if triton:  # the chunks' launch, then the one-token sequences' launch (the decode kernel's rate)
        crit = GPU["longest"] * max(c + n for n, c in shape.prefill)
        if nd:
            w = triton_decode_tile(min(256, t) if graphed else nd, ARCH.num_kv_heads, SMS, "bfloat16")
            crit += DEC[f"longest[{w}]"] * even_max(shape)
    else:
        crit = GPU["longest"] * sum(c + n for n, c in shape.prefill)
    gpu = (
        GPU["fixed"]
        + GPU["token"] * t
        + GPU["token>512"] * max(0, t - 512)
        + GPU["prefill_attn"] * attn
        + GPU["decode_ctx"] * ctx
        + crit
    )
    if graphed:
        return gpu
    cpu = CPU["cpu_fixed"] + CPU["cpu_seq"] * shape.num_seqs
    return max(gpu, cpu) if overlapped else gpu + cpu


def overhead_of(shape: BatchShape) -> OverheadSample:
    """What the profiler measures: its bookkeeping hashes every context token once."""
    s, p = shape.num_seqs, len(shape.prefill)
    pt = shape.num_tokens - shape.num_decode
    x = (1, s, p, pt)
    hashed = shape.decode_context + sum(n + c for n, c in shape.prefill)
    return OverheadSample(
        s,
        p,
        pt,
        s - p,
        sum(a * b for a, b in zip(SCHED, x)),
        sum(a * b for a, b in zip(COMP, x)) + HASH * hashed,
        1e-4,
        2e-5,
        3,
    )


def serving_overhead(shape: BatchShape) -> float:
    """What the model charges per iteration: each new token is hashed once."""
    s, p = shape.num_seqs, len(shape.prefill)
    pt = shape.num_tokens - shape.num_decode
    x = (1, s, p, pt)
    sched = sum(a * b for a, b in zip(SCHED, x))
    return sched + sum(a * b for a, b in zip(COMP, x)) + HASH * shape.num_tokens


DEC_BATCHES = (
    1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 40, 48, 64, 80, 96, 100, 112, 128, 144, 160, 192, 200, 224, 256
)


def grid() -> list[BatchShape]:
    shapes = []
    for b in DEC_BATCHES:
        for c in (128, 1024, 4096):
            shapes.append(BatchShape([], b, b * c))
    for t in (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192):
        for c in (0, 1024, 4096):
            shapes.append(BatchShape([(t, c)]))
        if t >= 16:
            shapes.append(BatchShape([(t // 4, 0)] * 4))
    for b in (4, 64, 200):
        for n in (16, 64, 512, 8192 - b):
            for c in (0, 4096):
                shapes.append(BatchShape([(n, c)], b, b * 1500))
    return shapes


def header(**overrides) -> ProfileHeader:
    cfg = {f: getattr(ARCH, f) for f in MODEL_SHAPE_FIELDS}
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
        max_model_len=MAX_LEN,
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
    truth=true_execute,
    **header_overrides,
) -> Profile:
    rng = np.random.default_rng(seed)
    samples, over = [], []
    for s in shapes or grid():
        t = truth(s)
        times = tuple(float(t * np.exp(noise * rng.standard_normal())) for _ in range(3))
        samples.append(
            ShapeSample(
                tuple(s.prefill), s.num_decode, s.decode_context, times, statistics.median(times),
                s.decode_max_context,
            )  # fmt: skip
        )
        over.append(overhead_of(s))
    return Profile(header(**header_overrides), samples, over)


def extra_shapes() -> list[BatchShape]:
    """Shapes off the grid: heterogeneous decode contexts, a chunk behind long decodes, odd sizes."""
    return [
        BatchShape([], 9, 30000 + 8 * 5000, 30000),  # one long context among short ones
        BatchShape([], 24, 24 * 900),
        BatchShape([], 40, 40 * 2000, 9000),
        BatchShape([], 150, 150 * 700, 4000),
        BatchShape([(2000, 6000)], 12, 12 * 9000, 30000),  # the longest decode outlasts the chunk
        BatchShape([(300, 77), (1500, 0)], 7, 7 * 333),
        BatchShape([(3000, 2000)], 100, 100 * 800),
    ]


_NOISE_FREE = CalibratedCostModel(profile=synthetic_profile())


def _cpu_profile() -> Profile:
    return synthetic_profile(
        truth=lambda s: true_execute(s, overlapped=False, triton=False),
        device_kind="cpu",
        attention_backend="torch",
        cuda_graphs=False,
        graph_buckets=(),
    )


def test_noise_free_fit_reproduces_the_machine() -> None:
    m = _NOISE_FREE
    for s in grid() + extra_shapes():
        assert m.parts(s)["execute"] == pytest.approx(true_execute(s), rel=1e-6), s
        assert m.stage_time(s) == pytest.approx(true_execute(s) + serving_overhead(s), rel=1e-6), s
    assert m.fit_report()["all"]["max_abs_rel_error"] < 1e-6
    dec = dict(zip(m.decode_fit.terms, m.decode_fit.coef))
    for w in (64, 128):  # one coefficient per tile width of the launch, both recovered
        assert dec[f"longest[{w}-key tiles]"] == pytest.approx(DEC[f"longest[{w}]"], rel=1e-6)
    assert dec["seq"] == pytest.approx(DEC["seq"], rel=1e-6)
    pre = dict(zip(m.prefill_fit.terms, m.prefill_fit.coef))
    for term in ("longest", "decode_ctx"):  # the chunks' launch and the decodes' bulk read
        assert pre[term] == pytest.approx(GPU[term], rel=1e-6), term
    for b in (4, 8, 16, 32, 48, 112, 160, 224):  # rows profiled at two batch sizes: line pinned down
        want = DEC["fixed"] + DEC["row"] * b + DEC["row>64"] * max(0, b - 64)
        assert dec[f"fixed[{b}]"] == pytest.approx(want)
        assert dec[f"ctx[{b}]"] == pytest.approx(DEC["ctx"] + DEC["ctx_row"] * b, rel=1e-6)
    np.testing.assert_allclose(m.schedule_fit.coef, SCHED, rtol=1e-6, atol=1e-13)
    np.testing.assert_allclose(m.complete_fit.coef, (*COMP, HASH), rtol=1e-6, atol=1e-13)


def test_a_part_filled_bucket_reads_kv_between_its_neighbours_rates() -> None:
    """A padded row reads no KV: n decodes in the graph of r rows pay the per-token rate between the
    bucket below's and r's, by n, where both launch alike (one split, one tile width)."""
    m = _NOISE_FREE
    dec = dict(zip(m.decode_fit.terms, m.decode_fit.coef))
    assert m.splits(80) == m.splits(96) == 1 and m.tile(80) == m.tile(96)
    for n in (81, 88, 95):
        want = dec["ctx[80]"] + (n - 80) / 16 * (dec["ctx[96]"] - dec["ctx[80]"])
        assert m.decode_line(n)[1] == pytest.approx(want, rel=1e-9)
        assert m.decode_line(n)[1] == pytest.approx(DEC["ctx"] + DEC["ctx_row"] * n, rel=1e-6)
    assert m.decode_line(96)[1] == pytest.approx(dec["ctx[96]"], rel=1e-12)
    # 17-32 sequences: the 16-row launch splits its keys, the 32-row one does not: 32's own rate
    assert m.splits(16) > 1 == m.splits(32)
    assert m.decode_line(20)[1] == pytest.approx(dec["ctx[32]"], rel=1e-12)


def test_serving_phase_sets_the_cpu_phases_not_the_decode_fit() -> None:
    # The loop's phases as served cost 3x what the tight-loop overhead records say (cold caches).
    # Its eager steps are exact samples of the machine; its decode steps ran 15% faster than the
    # grid (the ramp's requests share system prompts, so their KV reads hit shared blocks), which
    # a validation run over contexts of its own does not see: decodes keep the grid's times.
    m0 = _NOISE_FREE
    steps = []
    for s in extra_shapes() + grid()[::5]:
        x = (1, s.num_seqs, len(s.prefill), s.num_tokens - s.num_decode)
        sched = 3 * sum(a * b for a, b in zip(SCHED, x))
        comp = 3 * (sum(a * b for a, b in zip(COMP, x)) + HASH * s.num_tokens)
        fast = 0.85 if m0.as_decode(s) is not None else 1.0
        steps.append(
            ServingStep(
                tuple(s.prefill), s.num_decode, s.decode_context, s.decode_max_context, sched,
                fast * true_execute(s), comp,
            )  # fmt: skip
        )
    p = synthetic_profile()
    p.serving = steps
    assert Profile.loads(p.dumps()) == p
    m = CalibratedCostModel(profile=p)
    for s in grid() + extra_shapes():
        assert m.parts(s)["execute"] == pytest.approx(true_execute(s), rel=1e-6), s
        assert m.stage_time(s) == pytest.approx(true_execute(s) + 3 * serving_overhead(s), rel=1e-6), s
    assert any(f"fitted to {len(steps)} iterations of the profile's serving phase" in n for n in m.notes)


def test_serving_eager_slowdown_scales_eager_steps_only() -> None:
    # In the loop every eager step runs 8% slower than the grid timed it (one outlier 3x, e.g. a GC
    # pause); graph-replayed decodes run as in the grid. The grid fixes the shape, the serving phase
    # one factor (a median, so the outlier does not move it), and decodes keep the grid's times.
    m0 = _NOISE_FREE
    shapes = extra_shapes() + grid()[::3]
    steps = []
    for i, s in enumerate(shapes):
        slow = 1.0 if m0.as_decode(s) is not None else (3.0 if i == 0 else 1.08)
        steps.append(
            ServingStep(tuple(s.prefill), s.num_decode, s.decode_context, s.decode_max_context, 1e-5,
                        slow * true_execute(s), 1e-5)
        )  # fmt: skip
    p = synthetic_profile()
    p.serving = steps
    m = CalibratedCostModel(profile=p)
    assert m.eager_scale == pytest.approx(1.08, rel=1e-6)
    assert any("ran 1.080x the grid fit" in n for n in m.notes)
    for s in grid() + extra_shapes():
        k = 1.0 if m.as_decode(s) is not None else 1.08
        assert m.parts(s)["execute"] == pytest.approx(k * true_execute(s), rel=1e-6), s
        assert sum(m.breakdown(s).values()) == pytest.approx(m.stage_time(s), rel=1e-9), s
    assert CalibratedCostModel(profile=synthetic_profile()).eager_scale == 1.0  # no serving phase


def test_step_graph_replays_keep_the_grid_time_under_the_serving_factor() -> None:
    # The loop runs eager steps 10% slower than the grid and step graphs 8% faster (their prefixes
    # shared): the factor is the median over both, and only eager steps take it.
    sb = (16, 32, 64, 128, 256, 512)
    truth = lambda s: true_execute(s, step_buckets=sb)  # noqa: E731
    shapes = grid() + [BatchShape([(t, 0)]) for t in (20, 50, 100, 200, 400, 500)]
    p = synthetic_profile(shapes=shapes, truth=truth, step_graph_buckets=sb)
    m0 = CalibratedCostModel(profile=p)
    served = [x for x in shapes + extra_shapes() if m0.as_decode(x) is None]
    graphed = [x for x in served if m0.step_bucket(x) is not None]
    eager = [x for x in served if m0.step_bucket(x) is None]
    assert len(graphed) >= 3 and 2 * len(eager) > len(graphed)
    p.serving = [
        ServingStep(tuple(x.prefill), x.num_decode, x.decode_context, x.decode_max_context, 1e-5,
                    (0.92 if x in graphed else 1.10) * truth(x), 1e-5)
        for x in graphed + eager + eager  # each eager shape served twice: they are the majority
    ]  # fmt: skip
    m = CalibratedCostModel(profile=p)
    assert m.eager_scale == pytest.approx(1.10, rel=1e-6)
    for x in served:
        k = 1.0 if x in graphed else 1.10
        assert m.parts(x)["execute"] == pytest.approx(k * truth(x), rel=1e-6), x
        assert sum(m.breakdown(x).values()) == pytest.approx(m.stage_time(x), rel=1e-9), x
    assert any(f"{len(p.serving)} steps, {len(graphed)} of them step graphs" in n for n in m.notes)


def test_step_graph_buckets_pad_tokens_and_drop_the_launch_floor() -> None:
    sb = (16, 32, 64, 128, 192, 256, 320, 384, 448, 512)
    shapes = grid() + [BatchShape([(t, 0)]) for t in (20, 50, 100, 150, 200, 300, 400, 500)]
    p = synthetic_profile(
        shapes=shapes, truth=lambda s: true_execute(s, step_buckets=sb), step_graph_buckets=sb
    )
    m = CalibratedCostModel(profile=p)
    for s in shapes + extra_shapes() + [BatchShape([(130, 50)], 3, 3 * 400), BatchShape([(700, 0)])]:
        assert m.parts(s)["execute"] == pytest.approx(true_execute(s, step_buckets=sb), rel=1e-6), s
    assert m.step_bucket(BatchShape([(130, 0)])) == 192 and m.step_bucket(BatchShape([(513, 0)])) is None
    # The same machine without step graphs pays the launch floor on small steps.
    assert _NOISE_FREE.parts(BatchShape([(20, 0)]))["execute"] > m.parts(BatchShape([(20, 0)]))["execute"]
    # The launch path reports sum errors by: decode graph rows, step graph bucket, eager token bin.
    assert m.path(BatchShape([], 3, 300)) == "decode graph 4"
    assert m.path(BatchShape([(1, 40)], 2, 200)) == "decode graph 4"  # a one-token chunk rides along
    assert m.path(BatchShape([], 300, 30000)) == "decode 300"  # past the largest graph
    assert m.path(BatchShape([(130, 50)], 3, 1200)) == "step graph 192"
    assert m.path(BatchShape([(700, 0)])) == "eager 513-768 tokens"
    assert m.path(BatchShape([(1000, 0)], 25, 2500)) == "eager 1025-1280 tokens"
    assert m.path(BatchShape([])) == "idle"


def test_split_plan_from_the_datasheet_given_or_fitted() -> None:
    m = _NOISE_FREE  # an H100 SXM: 132 SMs by the datasheet table
    assert m.num_sms == SMS and m.sm_source == "datasheet" and m.sm_range is None
    assert [m.splits(b) for b in BUCKETS[:6]] == [32, 17, 9, 5, 3, 1]
    assert m.fit_report()["split_plan"]["source"] == "datasheet"
    given = CalibratedCostModel(profile=synthetic_profile(), num_sms=64)
    assert given.num_sms == 64 and given.sm_source == "given" and given.splits(4) == 4
    # An unknown device: the SM count whose plan fits the decode samples best. Rows profiled at two batch
    # sizes separate the per-row slope from the critical path, so there the plan is the true one (elsewhere
    # any plan fits uniform samples equally well).
    f = CalibratedCostModel(profile=synthetic_profile(device="Accelerator X"))
    assert f.sm_source == "fitted"
    for b in (4, 8, 16, 32, 48):
        assert f.splits(b) == splits(b), b
    rep = f.fit_report()["split_plan"]
    lo, hi = rep["sm_range"]
    assert lo <= rep["num_sms"] <= hi and all(splits(b, lo) == splits(b) for b in (4, 8, 16, 32))
    assert any("split-KV plan" in n and "fits the decode samples best" in n for n in f.notes)
    for s in grid() + extra_shapes():
        if not s.prefill and f.rows(s.num_decode) in (4, 8, 16, 32, 48):
            assert f.parts(s)["execute"] == pytest.approx(true_execute(s), rel=1e-6)


def test_the_longest_context_sets_the_decode_attention() -> None:
    m = _NOISE_FREE
    even = BatchShape([], 9, 70000)
    skewed = BatchShape([], 9, 70000, 30000)  # one 30k context and eight of 5k
    assert m.stage_time(even) == m.stage_time(BatchShape([], 9, 70000, 7778))  # 0 = spread evenly
    assert m.stage_time(skewed) > m.stage_time(even) * 1.1
    # Without the Triton kernel (torch backend, CPU) there is no critical path term.
    cpu = CalibratedCostModel(profile=_cpu_profile())
    assert not any(t.startswith("longest") for t in cpu.decode_fit.terms) and cpu.splits(4) == 1
    assert "prefill_kv" in cpu.prefill_fit.terms and not cpu.overlapped


OVERLAP = 0.6


def overlap_truth(shape: BatchShape) -> float:
    """The synthetic machine, but its split launches (one wave) hide OVERLAP of the smaller of the
    bulk term u and the longest-program term v under the larger."""
    t = true_execute(shape)
    r = bucket(shape.num_decode)
    if shape.prefill or splits(r) == 1:
        return t
    u = (DEC["ctx"] + DEC["ctx_row"] * r) * shape.decode_context
    w = triton_decode_tile(r, ARCH.num_kv_heads, SMS, "bfloat16")
    v = DEC[f"longest[{w}]"] * even_max(shape) / splits(r)
    return t - OVERLAP * min(u, v)


def with_skewed() -> list[BatchShape]:
    """The grid plus one long context among short ones, at several batch sizes."""
    skewed = [BatchShape([], b, (b - 1) * 256 + n, n) for b in (4, 8, 16, 32, 64) for n in (4096, 16384)]
    return grid() + skewed


_OVERLAPPED = CalibratedCostModel(profile=synthetic_profile(shapes=with_skewed(), truth=overlap_truth))


def test_the_overlap_of_bulk_and_longest_terms_is_recovered() -> None:
    """On the overlap machine the fit reproduces the profile exactly and predicts a batch of several
    long contexts to within 1%. (Where every sample of a row count has the same smaller term, g
    trades off against that row's slope b[B], so the test asks for g > 0 rather than 0.6.) On the
    additive machine it picks g = 0."""
    m = _OVERLAPPED
    assert m._dec_overlap > 0
    assert max(abs(e) for e in m.decode_fit.rel_errors) < 1e-9
    plain = CalibratedCostModel(profile=synthetic_profile(shapes=with_skewed()))
    assert plain._dec_overlap == 0.0
    several = BatchShape([], 16, 6 * 20000 + 10 * 300, 20000)  # six 20k contexts among ten short ones
    predicted = m.stage_time(several) - serving_overhead(several)
    assert predicted == pytest.approx(overlap_truth(several), rel=0.01)


def test_eager_steps_take_the_slower_of_launch_and_device_work() -> None:
    m = _NOISE_FREE
    small = BatchShape([(16, 0)])  # the GPU finishes before Python has launched the step
    big = BatchShape([(4096, 1024)])
    g, c = m._eager_parts(small)
    assert c > g and m.parts(small)["execute"] == pytest.approx(CPU["cpu_fixed"] + CPU["cpu_seq"], rel=1e-6)
    assert set(m.breakdown(small)) == {"cpu_fixed", "cpu_seq", "schedule", "complete"}
    g, c = m._eager_parts(big)
    assert g > c and "prefill_attn" in m.breakdown(big)
    # On a CPU device the two share the cores and add up.
    add = CalibratedCostModel(profile=_cpu_profile())
    assert not add.overlapped
    for s in (small, big, BatchShape([(64, 0)], 4, 400), BatchShape([], 6, 600)):
        assert add.parts(s)["execute"] == pytest.approx(true_execute(s, False, False), rel=1e-6)


PREP = (6e-4, 9e-6, 4e-9)  # an eager step's input preparation: fixed, per sequence, per context token


def prep_of(shape: BatchShape) -> float:
    ctx = shape.decode_context + sum(n + c for n, c in shape.prefill)
    return PREP[0] + PREP[1] * shape.num_seqs + PREP[2] * ctx


def test_eager_input_preparation_adds_to_the_step() -> None:
    """The device waits for an eager step's inputs: the profile's prep_s line is fitted on its own
    and added to the slower of launch and device work, which are fitted to what is left."""
    base = synthetic_profile(truth=lambda s: true_execute(s) + (prep_of(s) if s.prefill else 0.0))
    samples = [replace(x, prep_s=prep_of(x.shape)) if x.prefill else x for x in base.samples]
    m = CalibratedCostModel(profile=replace(base, samples=samples))
    np.testing.assert_allclose(m._eager_prep, PREP, rtol=1e-6)
    for s in grid() + extra_shapes():
        want = true_execute(s) + (prep_of(s) if s.prefill else 0.0)
        assert m.parts(s)["execute"] == pytest.approx(want, rel=1e-6), s
        assert sum(m.breakdown(s).values()) == pytest.approx(m.stage_time(s), rel=1e-12)
    small = BatchShape([(16, 0)], 3, 300)
    assert m.breakdown(small)["prep"] == pytest.approx(prep_of(small), rel=1e-6)
    assert m.overlap_parts(small).device == pytest.approx(m._eager_parts(small)[0] + prep_of(small), rel=1e-9)
    # Without prep times (profiles before the field) nothing is added.
    assert _NOISE_FREE._eager_prep is None and "prep" not in _NOISE_FREE.breakdown(small)


def test_with_prep_times_the_loop_factor_comes_from_few_sequence_steps() -> None:
    """The serving phase's many-sequence steps decode over shared prefixes (faster than the fit);
    where input preparation is modelled, only its eager steps of few sequences set the factor."""
    base = synthetic_profile(truth=lambda s: true_execute(s) + (prep_of(s) if s.prefill else 0.0))
    samples = [replace(x, prep_s=prep_of(x.shape)) if x.prefill else x for x in base.samples]
    served = [x for x in grid() + extra_shapes() if x.prefill]
    few = [x for x in served if x.num_seqs < FEW_SEQS]
    many = [x for x in served if x.num_seqs >= FEW_SEQS]
    assert len(few) >= FEW_SEQS_MIN_STEPS and 4 * len(many) > len(few)
    steps = [
        ServingStep(tuple(x.prefill), x.num_decode, x.decode_context, x.decode_max_context, 1e-5,
                    (1.05 if x in few else 0.93) * (true_execute(x) + prep_of(x)), 1e-5)
        for x in few + 4 * many  # the many-sequence steps are the majority
    ]  # fmt: skip
    m = CalibratedCostModel(profile=replace(base, samples=samples, serving=steps))
    assert m.eager_scale == pytest.approx(1.05, rel=1e-6)
    assert any(f"eager steps of fewer than {FEW_SEQS} sequences" in n for n in m.notes)
    old = CalibratedCostModel(profile=replace(base, serving=steps))  # no prep times: over all steps
    assert old._eager_prep is None and old.eager_scale < 1.0


def test_noisy_fit_stays_close_and_physical() -> None:
    m = CalibratedCostModel(profile=synthetic_profile(noise=0.02, seed=3))
    rep = m.fit_report()
    assert rep["all"]["median_abs_rel_error"] < 0.02
    assert all(
        c >= 0 for fit in (m.decode_fit, m.prefill_fit, m.schedule_fit, m.complete_fit) for c in fit.coef
    )
    dec = dict(zip(m.decode_fit.terms, m.decode_fit.coef))
    for w in (64, 128):
        assert dec[f"longest[{w}-key tiles]"] == pytest.approx(DEC[f"longest[{w}]"], rel=0.15)
    for s in (
        BatchShape([(2048, 0)]),
        BatchShape([], 64, 64 * 2000),
        BatchShape([], 9, 70000, 30000),
        BatchShape([(1000, 3000)], 100, 100 * 800),
    ):
        assert m.parts(s)["execute"] == pytest.approx(true_execute(s), rel=0.06), s


_MODEL = CalibratedCostModel(profile=synthetic_profile(noise=0.01, seed=1))


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 400), per_seq=st.integers(1, 20000), skew=st.integers(0, 30000))
def test_decode_line_is_exact(n: int, per_seq: int, skew: int) -> None:
    m = _MODEL
    ctx = n * per_seq + skew
    mx = per_seq + skew if n > 1 else ctx  # one sequence holds the extra tokens
    a, b, c, g = m.decode_line(n)
    s = BatchShape([], n, ctx, mx)
    u, v = b * ctx, c * mx
    want = a + u + v
    if g:
        want = want - g * min(u, v)
    assert m.stage_time(s) == want  # bit for bit, in this order
    assert a > 0 and b >= 0 and c >= 0 and 0 <= g <= 1
    assert sum(m.parts(s).values()) == pytest.approx(want, rel=1e-12)
    assert sum(m.breakdown(s).values()) == pytest.approx(want, rel=1e-12)


def test_unprofiled_rows_interpolate_between_profiled_ones() -> None:
    shapes = [s for s in grid() if s.prefill or s.num_decode not in (80,)]
    m = CalibratedCostModel(profile=synthetic_profile(shapes=shapes))
    assert 80 not in m.decode_fit.knots
    lo, hi = m._key_line(64), m._key_line(96)
    mid = m._key_line(80)
    assert mid == pytest.approx(((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2))
    # Too few contexts at a row count: it is interpolated too, and the report says so.
    few = [s for s in grid() if s.prefill or not (s.num_decode == 192 and s.decode_context != 192 * 128)]
    m = CalibratedCostModel(profile=synthetic_profile(shapes=few))
    assert 192 not in m.decode_fit.knots and any("[192]" in n for n in m.notes)
    assert m.stage_time(BatchShape([], 192, 192 * 1000)) > m.stage_time(BatchShape([], 160, 160 * 1000))


def test_graph_padding_and_bad_shapes() -> None:
    m = _MODEL
    assert m.rows(17) == 32 and m.rows(256) == 256 and m.rows(300) == 300
    assert m.decode_line(0) == (0.0, 0.0, 0.0, 0.0)
    assert m.stage_time(BatchShape([])) == 0.0
    with pytest.raises(ValueError, match="num_decode"):
        m.decode_line(-1)
    with pytest.raises(ValueError, match="decode_context"):
        m.stage_time(BatchShape([], 3, 2))
    with pytest.raises(ValueError, match="prefill entry"):
        m.stage_time(BatchShape([(0, 4)]))
    with pytest.raises(ValueError, match="decode_max_context"):
        m.stage_time(BatchShape([], 3, 300, 50))  # below the even share
    with pytest.raises(ValueError, match="decode_max_context"):
        m.stage_time(BatchShape([], 3, 300, 299))  # the other two attend to at least one token each


def test_breakdown_and_parts_sum_to_stage_time() -> None:
    m = _MODEL
    for s in (BatchShape([(700, 1200), (30, 0)], 20, 20 * 900, 4000), BatchShape([(8, 0)], 2, 20)):
        assert sum(m.breakdown(s).values()) == pytest.approx(m.stage_time(s), rel=1e-12)
        p = m.parts(s)
        assert set(p) == {"execute", "schedule", "complete"}
        assert sum(p.values()) == pytest.approx(m.stage_time(s), rel=1e-12)


def _skewed_trace(n: int, seed: int) -> Trace:
    rng = np.random.default_rng(seed)
    prompt = np.where(rng.random(n) < 0.2, rng.integers(4000, 12000, n), rng.integers(10, 1500, n))
    return Trace(np.cumsum(rng.exponential(1 / 20.0, n)), prompt, rng.integers(1, 400, n))


@pytest.mark.parametrize("overlapped", [False, True])
def test_simulator_jump_gives_the_same_timeline_with_the_calibrated_model(overlapped: bool) -> None:
    m = _OVERLAPPED if overlapped else _MODEL
    tr = _skewed_trace(300, 5)
    cfg = dict(num_kv_blocks=6000, max_num_batched_tokens=2048, max_num_seqs=64)
    a = simulate(tr, SimConfig(jump=False, **cfg), m)
    b = simulate(tr, SimConfig(jump=True, **cfg), m)
    for k in ("first_scheduled", "first_token", "finish"):
        np.testing.assert_allclose(a.requests[k], b.requests[k], rtol=0, atol=1e-9)
    assert a.meta["iterations"] == b.meta["iterations"]
    assert len(b.iterations["start"]) < len(a.iterations["start"])  # it did jump
    assert b.meta["cost_model"] == "calibrated" and m.decode_line(5)[2] > 0  # with a longest term
    assert (m.decode_line(5)[3] > 0) == overlapped


@pytest.mark.parametrize("overlapped", [False, True])
def test_pipelined_jump_uses_the_longest_context_term_too(overlapped: bool) -> None:
    if overlapped:
        m = CalibratedCostModel(profile=synthetic_profile(shapes=with_skewed(), truth=overlap_truth, pp=2))
        assert m._dec_overlap > 0
    else:
        m = CalibratedCostModel(profile=synthetic_profile(noise=0.01, seed=1, pp=2))
    tr = _skewed_trace(200, 7)
    cfg = dict(num_kv_blocks=6000, max_num_batched_tokens=2048, max_num_seqs=64, pp=2)
    a = simulate(tr, SimConfig(jump=False, **cfg), m)
    b = simulate(tr, SimConfig(jump=True, **cfg), m)
    for k in ("first_scheduled", "first_token", "finish"):
        np.testing.assert_allclose(a.requests[k], b.requests[k], rtol=0, atol=1e-9)
    assert a.meta["iterations"] == b.meta["iterations"]
    assert len(b.iterations["start"]) < len(a.iterations["start"])


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
    with pytest.raises(ValueError, match="num_sms"):
        CalibratedCostModel(profile=path, num_sms=0)
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
    assert rep["split_plan"]["splits"]["1"] == 32
    text = _MODEL.format_fit_report()
    assert "decode" in text and "prefill" in text and "overhead.schedule" in text and "cpu_fixed" in text


def test_profiles_it_cannot_fit() -> None:
    only_decode = [s for s in grid() if not s.prefill]
    with pytest.raises(ValueError, match="both pure-decode and prefill"):
        CalibratedCostModel(profile=synthetic_profile(shapes=only_decode))
    one_context = [BatchShape([], 1, 100), BatchShape([], 2, 300)] + [s for s in grid() if s.prefill]
    with pytest.raises(ValueError, match="two or more contexts"):
        CalibratedCostModel(profile=synthetic_profile(shapes=one_context))
    too_few = [BatchShape([], 1, 100), BatchShape([], 1, 300), BatchShape([(64, 0)]), BatchShape([(128, 0)])]
    with pytest.raises(ValueError, match="needs at least"):
        CalibratedCostModel(profile=synthetic_profile(shapes=too_few))
    # No mixed batches: decode attention inside a mixed step reads at the decode group's widest slope.
    no_mixed = [s for s in grid() if not (s.prefill and s.num_decode)]
    m = CalibratedCostModel(profile=synthetic_profile(shapes=no_mixed))
    assert any("no mixed samples" in n for n in m.notes)
    pre = dict(zip(m.prefill_fit.terms, m.prefill_fit.coef))
    assert pre["decode_ctx"] == m._key_line(256)[1]
    # No overhead records: CPU work outside the step is zero, and the report says so.
    p = synthetic_profile()
    p.overhead = []
    m = CalibratedCostModel(profile=p)
    assert m.parts(BatchShape([], 4, 400))["schedule"] == 0.0 and any("no overhead" in n for n in m.notes)
    # Overhead records that do not pair with the samples: no hashing term, said so.
    p = synthetic_profile()
    p.overhead = p.overhead[:-1]
    m = CalibratedCostModel(profile=p)
    assert m.complete_fit.coef[-1] == 0.0 and any("do not pair" in n for n in m.notes)


def test_eager_profile_has_no_padding_term() -> None:
    m = CalibratedCostModel(profile=synthetic_profile(cuda_graphs=False, graph_buckets=()))
    assert m.rows(17) == 17 and "seq" not in m.decode_fit.terms


def test_one_token_steps_ride_the_decode_graph() -> None:
    m = _MODEL
    # A 1-token prefill chunk after a 300-token prefix hit, with three decodes: one graph step of 4 rows.
    s = BatchShape([(1, 300)], 3, 300)
    assert m.as_decode(s) == (4, 300 + 301, 301)
    assert m.parts(s)["execute"] == m.parts(BatchShape([], 4, 601, 301))["execute"]
    assert m.as_decode(BatchShape([(2, 300)], 3, 300)) is None  # two tokens: the eager path
    assert m.as_decode(BatchShape([(1, 0)] * 257)) is None  # past the largest graph bucket
    eager = CalibratedCostModel(profile=synthetic_profile(cuda_graphs=False, graph_buckets=()))
    assert eager.as_decode(s) is None and eager.as_decode(BatchShape([], 3, 30)) == (3, 30, 10)
