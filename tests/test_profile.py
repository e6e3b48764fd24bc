"""The profile file: exact round trip, errors that name file, line and field, and the profiler's output
on a tiny CPU model (structure only; CPU timings are noise)."""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.cost_model import BatchShape
from backends.profile import (
    FORMAT,
    OverheadSample,
    Profile,
    ProfileHeader,
    ServingStep,
    ShapeSample,
    canonical_dtype,
)


def header(**overrides) -> ProfileHeader:
    base = ProfileHeader(
        device="NVIDIA H100 80GB HBM3",
        device_kind="cuda",
        model="llama-3.1-8b",
        model_config={
            "family": "llama",
            "num_layers": 32,
            "hidden_size": 4096,
            "num_heads": 32,
            "num_kv_heads": 8,
            "head_dim": 128,
            "intermediate_size": 14336,
            "vocab_size": 128256,
            "rope_scaling": {"factor": 8.0},
            "eos_token_ids": [1, 2],
        },
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
        graph_buckets=(1, 2, 4, 8, 16, 32),
        warmup=2,
        repeats=3,
        software={"python": "3.11.7", "torch": "2.5.1", "triton": "3.1.0", "cuda": "12.4", "numpy": "2.1"},
        date="2025-01-01T00:00:00+00:00",
        command="sagellm profile --device cuda",
        wall_seconds=123.25,
        notes=("skipped prefill=[(8192, 16384)]: needs more blocks",),
    )
    return replace(base, **overrides)


def sample(prefill, nd, ctx, times) -> ShapeSample:
    return ShapeSample(tuple(prefill), nd, ctx, tuple(times), statistics.median(times))


def small_profile() -> Profile:
    return Profile(
        header(),
        [
            replace(sample([], 4, 4 * 513, [0.1 + 0.2, 0.30000000000000004, 0.29]), device_s=0.2875),
            replace(
                sample([(512, 0)], 0, 0, [1e-7, 3.5e-3, 0.0123456789012345678]),
                launch_s=0.0125,
                warm_s=3e-3,
                prep_s=1.5e-3,
            ),
            sample([(100, 4096), (7, 0)], 3, 99, [0.05, 0.051]),
            replace(sample([], 3, 3000, [0.02]), decode_max_context=2500),  # uneven contexts
        ],
        [
            OverheadSample(4, 0, 0, 4, 1.5e-5, 2.25e-5, 1e-4, 3e-5, 3),
            OverheadSample(5, 2, 107, 3, 2e-5, 0.0, 1e-4, 3e-5, 3),
        ],
        [
            ServingStep(((64, 1024),), 5, 5000, 4000, 7.5e-5, 0.031, 1.25e-4, 0.0123),
            ServingStep((), 2, 20, 0, 6e-5, 0.005, 0.0),
        ],
    )


def test_round_trip_is_exact(tmp_path: Path) -> None:
    p = small_profile()
    path = p.save(tmp_path / "sub" / "p.json")
    q = Profile.load(path)
    assert q == p
    assert q.dumps() == p.dumps() == path.read_text()
    assert q.samples[0].times_s[0] == 0.1 + 0.2  # shortest-repr floats survive bit for bit
    assert q.samples[2].shape.prefill == [(100, 4096), (7, 0)]
    assert [s.kind for s in q.samples] == ["decode", "prefill", "mixed", "decode"]
    assert q.counts() == {"decode": 2, "prefill": 1, "mixed": 1}
    assert q.samples[3].shape.decode_max_context == 2500
    assert q.samples[0].device_s == 0.2875 and q.samples[1].device_s is None
    assert q.samples[1].launch_s == 0.0125 and q.samples[0].launch_s is None
    assert q.samples[1].warm_s == 3e-3 and q.samples[0].warm_s is None
    assert q.samples[1].prep_s == 1.5e-3 and q.samples[0].prep_s is None
    assert q.serving[0].shape.decode_max_context == 4000 and q.serving[0].as_sample().kind == "mixed"
    assert q.serving[0].launch_s == 0.0123 and q.serving[1].launch_s is None
    # Files written before the serving phase existed still load.
    d = json.loads(path.read_text())
    del d["serving"]
    assert Profile.from_dict(d).serving == []
    assert json.loads(path.read_text())["format"] == FORMAT


def test_records_are_one_per_line(tmp_path: Path) -> None:
    text = small_profile().dumps()
    lines = text.splitlines()
    assert sum(1 for ln in lines if ln.strip().startswith('{"prefill"')) == 6
    assert sum(1 for ln in lines if ln.strip().startswith('{"num_seqs"')) == 2


finite_times = st.lists(
    st.floats(min_value=1e-9, max_value=1e3, allow_nan=False, allow_infinity=False), min_size=1, max_size=7
)
chunk = st.tuples(st.integers(1, 9000), st.integers(0, 40000))


@settings(max_examples=60, deadline=None)
@given(
    samples=st.lists(
        st.tuples(st.lists(chunk, max_size=4), st.integers(0, 300), finite_times), min_size=1, max_size=6
    )
)
def test_round_trip_property(samples) -> None:
    rows = []
    for prefill, nd, times in samples:
        if not prefill and nd == 0:
            nd = 1
        rows.append(sample(prefill, nd, nd * 7, times))
    p = Profile(header(), rows, [])
    assert Profile.loads(p.dumps()) == p


def _corrupt(tmp_path: Path, edit) -> Path:
    """The small profile with `edit` applied to its dict, written in the file's own layout."""
    d = json.loads(small_profile().dumps())
    edit(d)
    path = tmp_path / "bad.json"
    path.write_text(_layout_like(d))
    return path


def _layout_like(d: dict) -> str:
    """`d` dumped with the same layout as `Profile.dumps` (records one per line)."""
    lines = ["{", f'  "format": {json.dumps(d["format"])},', f'  "version": {json.dumps(d["version"])},']
    lines.append('  "header": ' + json.dumps(d["header"], indent=2).replace("\n", "\n  ") + ",")
    for key, end in (("samples", ","), ("overhead", ","), ("serving", "")):
        lines.append(f'  "{key}": [')
        rows = d[key]
        for i, row in enumerate(rows):
            lines.append("    " + json.dumps(row) + ("," if i < len(rows) - 1 else ""))
        lines.append("  ]" + end)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _line_of(path: Path, needle: str, nth: int = 0) -> int:
    hits = [i + 1 for i, ln in enumerate(path.read_text().splitlines()) if needle in ln]
    return hits[nth]


@pytest.mark.parametrize(
    ("edit", "field", "needle"),
    [
        (
            lambda d: d["samples"][1]["times_s"].__setitem__(2, "fast"),
            "samples[1].times_s[2]",
            '"times_s": [1e-07',
        ),
        (lambda d: d["samples"][2]["prefill"].__setitem__(0, [0, 5]), "samples[2].prefill[0]", "[7, 0]"),
        (lambda d: d["samples"][0].__setitem__("median_s", 9.0), "samples[0].median_s", '"num_decode": 4'),
        (
            lambda d: d["samples"][0].__setitem__("decode_context", 2),
            "samples[0].decode_context",
            '"num_decode": 4',
        ),
        (
            lambda d: d["samples"][1]["times_s"].__setitem__(0, -1.0),
            "samples[1].times_s[0]",
            '"times_s": [-1',
        ),
        (lambda d: d["overhead"][1].pop("schedule_s"), "overhead[1].schedule_s", '"num_seqs": 5'),
        (
            lambda d: d["overhead"][0].__setitem__("decode_tokens", 9),
            "overhead[0].decode_tokens",
            '"num_seqs": 4',
        ),
        (
            lambda d: d["samples"][3].__setitem__("decode_max_context", 900),
            "samples[3].decode_max_context",
            '"decode_max_context": 900',
        ),
        (
            lambda d: d["samples"][0].__setitem__("device_s", 0.0),
            "samples[0].device_s",
            '"device_s": 0.0',
        ),
        (
            lambda d: d["serving"][1].__setitem__("execute_s", 0.0),
            "serving[1].execute_s",
            '"execute_s": 0.0,',
        ),
        (lambda d: d["serving"][0].pop("complete_s"), "serving[0].complete_s", '"decode_max_context": 4000'),
        (lambda d: d["serving"][0].__setitem__("launch_s", -1.0), "serving[0].launch_s", '"launch_s": -1.0'),
        (lambda d: d["samples"][1].__setitem__("warm_s", "fast"), "samples[1].warm_s", '"warm_s": "fast"'),
        (lambda d: d["header"].__setitem__("tp", 0), "header.tp", '"tp": 0'),
        (lambda d: d["header"].__setitem__("dtype", "int4"), "header.dtype", '"dtype"'),
        (
            lambda d: d["header"]["model_config"].pop("num_layers"),
            "header.model_config.num_layers",
            '"model_config"',
        ),
        (
            lambda d: d["header"].__setitem__("graph_buckets", [4, 2]),
            "header.graph_buckets",
            '"graph_buckets"',
        ),
        (lambda d: d["header"].__setitem__("colour", "blue"), "header.colour", '"colour"'),
    ],
)
def test_bad_field_names_file_line_and_field(tmp_path: Path, edit, field: str, needle: str) -> None:
    path = _corrupt(tmp_path, edit)
    with pytest.raises(ValueError) as ei:
        Profile.load(path)
    msg = str(ei.value)
    assert str(path) in msg and f"field {field}:" in msg
    assert f"line {_line_of(path, needle)}:" in msg, msg


def test_bad_json_and_wrong_format(tmp_path: Path) -> None:
    p = tmp_path / "p.json"
    p.write_text('{\n  "format": "sagellm-profile",\n  "version": 1,\n  oops\n}')
    with pytest.raises(ValueError, match=r"p\.json: line 4: not valid JSON"):
        Profile.load(p)
    d = small_profile().to_dict()
    d["format"] = "vllm-profile"
    p.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="field format: expected 'sagellm-profile'"):
        Profile.load(p)
    d["format"] = FORMAT
    d["version"] = 2
    p.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="field version"):
        Profile.load(p)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        Profile.load(tmp_path / "nope.json")
    p.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        Profile.load(p)


def test_canonical_dtype() -> None:
    assert canonical_dtype("bf16") == canonical_dtype("torch.bfloat16") == "bfloat16"
    assert canonical_dtype("FP16") == "float16"
    with pytest.raises(ValueError, match="int3"):
        canonical_dtype("int3")


# ------------------------------------------------------------------------------------------------
# The profiler on a tiny CPU model


torch = pytest.importorskip("torch")


def test_decode_contexts_put_the_longest_first() -> None:
    from engine.profiler import decode_contexts, spread_decode

    assert decode_contexts(BatchShape([], 4, 10)) == [3, 3, 2, 2]
    assert decode_contexts(BatchShape([], 4, 3 * 8 + 32, 32)) == [32, 8, 8, 8]  # no ramp reaches 32
    assert decode_contexts(BatchShape([], 3, 3 * 7 + 1, 8)) == [8, 7, 7]
    assert decode_contexts(BatchShape([], 1, 9, 9)) == [9]
    assert decode_contexts(BatchShape([], 3, 9, 3)) == [3, 3, 3]  # the even share: nothing stands out
    # A max within twice the mean is a ramp, longest and shortest alternating.
    assert decode_contexts(BatchShape([], 5, 500, 150)) == [150, 50, 125, 75, 100]
    assert decode_contexts(spread_decode(4, 100, 0.5)) == [150, 50, 117, 83]
    assert spread_decode(1, 100, 0.5) == BatchShape([], 1, 100)
    assert spread_decode(4, 100, 0.0) == BatchShape([], 4, 400)


def test_decode_spread_zero_profiles_uniform_contexts_and_out_of_range_is_refused() -> None:
    from engine.profiler import ProfileGrid, ShapeLimits, grid_shapes

    lim = ShapeLimits(48, 6, 512, 40, 4)
    for spread, spread_max in ((0.0, False), (None, True)):
        shapes, _ = grid_shapes(ProfileGrid.make(quick=True, decode_spread=spread), lim)
        regular = [s for s in shapes if not s.prefill and s.num_decode > 1 and s.decode_max_context != 32]
        assert regular and all(bool(s.decode_max_context) == spread_max for s in regular)
    with pytest.raises(ValueError, match="decode_spread: expected 0 <= spread < 1"):
        ProfileGrid(decode_spread=1.0)


def test_build_batch_takes_explicit_decode_contexts() -> None:
    from engine.profiler import _Synth, build_batch, release
    from policies.kv.block_manager import BlockManager

    kv = BlockManager(64, 16, enable_prefix_caching=False)
    ctxs = [5, 300, 17]
    batch = build_batch(BatchShape([], 3, 322, 300), kv, _Synth(1000, 0), ctxs)
    assert [s.num_computed_tokens + 1 for s in batch.seqs] == ctxs and batch.num_new_tokens == [1, 1, 1]
    assert kv.num_free_blocks == 64 - (1 + 19 + 2)
    release(batch, kv)
    assert kv.num_free_blocks == 64


def test_the_layout_benchmarks_lognormal_contexts_keep_the_sum() -> None:
    import numpy as np

    from benchmarks.bench_decode_layouts import lognormal

    rng = np.random.default_rng(1)
    for n, mean in ((48, 1024), (96, 2048), (224, 1024)):
        ctx = lognormal(rng, n, mean)
        assert len(ctx) == n and sum(ctx) == n * mean and min(ctx) >= 1 and max(ctx) > 2 * mean


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 300), st.integers(1, 20000), st.data())
def test_decode_contexts_keep_the_shapes_sum_and_max(nd: int, mean: int, data) -> None:
    from engine.profiler import decode_contexts

    total = nd * mean + data.draw(st.integers(0, nd - 1))
    mx = data.draw(st.integers(-(-total // nd), total - nd + 1))
    ctx = decode_contexts(BatchShape([], nd, total, mx))
    assert len(ctx) == nd and sum(ctx) == total and ctx[0] == max(ctx) == mx and min(ctx) >= 1
    if nd > 1 and 2 * total - mx * nd >= nd:  # the ramp: each value within 1 of the exact line
        lo = 2 * total / nd - mx
        for i, c in enumerate(sorted(ctx, reverse=True)):
            assert abs(c - (mx - (mx - lo) * i / (nd - 1))) < 1


def test_profiler_quick_grid_on_cpu(tmp_path: Path) -> None:
    from engine.profiler import ProfileGrid, ShapeLimits, grid_shapes, main_profile, profile_engine
    from engine.testing import single_thread, tiny_engine_config, tiny_spec

    cfg = tiny_engine_config()
    with single_thread():
        prof = profile_engine(cfg, ProfileGrid.quick(), repeats=3, warmup=1, command="test")
    h = prof.header
    assert h.device.startswith("cpu") and h.device_kind == "cpu" and h.dtype == "float32"
    assert (h.block_size, h.num_kv_blocks, h.max_num_batched_tokens, h.max_num_seqs) == (4, 40, 48, 6)
    assert h.model == "tiny-llama" and h.model_config["num_layers"] == 2 and h.command == "test"
    assert h.software["torch"] == torch.__version__ and not h.cuda_graphs and h.graph_buckets == ()
    # Grid points past the pool (40 blocks of 4 tokens), the budget or the sequence cap are noted, not run.
    lim = ShapeLimits(48, 6, 512, 40, 4)
    shapes, notes = grid_shapes(ProfileGrid.quick(), lim)
    assert notes and list(h.notes[2:-1]) == notes and "shuffled free list" in h.notes[1]
    assert h.notes[0].startswith("decode samples of 2+ sequences: contexts spread linearly over +-50%")
    assert h.notes[-1].startswith(f"serving phase: {len(prof.serving)} iterations in 2 s")
    assert len(prof.samples) == len(shapes) == len(prof.overhead)
    # The serving phase logged the engine's own loop: shapes within the limits, every phase timed.
    assert len(prof.serving) > 5
    kinds = {t.as_sample().kind for t in prof.serving}
    assert {"decode", "mixed"} <= kinds
    for t in prof.serving:
        assert lim.why_not(t.shape) is None
        assert t.execute_s > 0 and t.schedule_s > 0 and t.complete_s > 0
        assert t.launch_s is not None and 0 < t.launch_s <= t.execute_s
    counts = prof.counts()
    assert counts["decode"] > 0 and counts["prefill"] > 0 and counts["mixed"] > 0
    for s in prof.samples:
        assert lim.why_not(s.shape) is None
        assert s.n == 3 and all(t > 0 for t in s.times_s) and s.warm_s is not None and s.warm_s > 0
        # every CPU step is eager: its input preparation is timed, inside its launch
        assert s.prep_s is not None and s.launch_s is not None and 0 < s.prep_s <= s.launch_s
    # The uneven decode batch (one 32-token context among 8-token ones) is run and recorded as such;
    # the grid's other decode samples of 2+ sequences spread their contexts +-50% (ProfileGrid.decode_spread).
    dec = [(s.num_decode, s.decode_context, s.decode_max_context) for s in prof.samples if not s.prefill]
    assert (4, 3 * 8 + 32, 32) in dec
    spread = [BatchShape([], n, n * c, c + c // 2 if n > 1 else 0) for n in (1, 2, 3, 4, 6) for c in (8, 32)]
    assert {(n, ctx, mx) for n, ctx, mx in dec if mx != 32} == {
        (s.num_decode, s.decode_context, s.decode_max_context) for s in spread if lim.why_not(s) is None
    }
    for s, o in zip(prof.samples, prof.overhead):
        assert o.num_seqs == s.shape.num_seqs and o.num_prefill_seqs == len(s.prefill)
        assert o.prefill_tokens == s.shape.num_tokens - s.num_decode
    assert Profile.loads(prof.dumps()) == prof
    # The CLI entry point writes a file and fits it.
    with single_thread():
        out = main_profile(
            model=tiny_spec("qwen3"),
            device="cpu",
            quick=True,
            repeats=2,
            warmup=1,
            num_kv_blocks=64,
            max_num_batched_tokens=64,
            max_num_seqs=8,
            out=str(tmp_path / "prof.json"),
        )
    assert Profile.load(out).header.model == "tiny-qwen3"
    with pytest.raises(ValueError, match="unknown option"):
        main_profile(colour="red")
    with pytest.raises(ValueError, match="tp=1"):
        main_profile(tp=2)
