"""Analytic roofline cost model: protocol, exact decode line, monotonicity, parallelism, memory."""

from __future__ import annotations

import dataclasses
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.accelerators import get_accelerator
from backends.analytic import AnalyticCostModel, AnalyticEfficiency, activation_reserve_bytes, max_kv_blocks
from backends.cost_model import COST_MODELS, BatchShape, CostModel, ParallelLayout
from backends.models import get_model

# (model, accelerator, layout) combinations covering GQA, MHA, qkv bias, q/k norm, tied embeddings,
# replicated KV heads (tp > num_kv_heads) and pipeline stages with fractional layer counts.
CONFIGS = [
    ("llama-3.1-8b", "h100", ParallelLayout(1, 1)),
    ("llama-3.1-8b", "h100", ParallelLayout(2, 1)),
    ("llama-2-7b", "a100", ParallelLayout(1, 2)),
    ("llama-3.1-70b", "h200", ParallelLayout(8, 1)),
    ("llama-2-70b", "ascend-910b", ParallelLayout(4, 2)),
    ("qwen2.5-7b", "hygon-dcu", ParallelLayout(2, 1)),
    ("qwen3-0.6b", "mlu370", ParallelLayout(1, 3)),
    ("qwen3-8b", "cpu", ParallelLayout(1, 1)),
    ("smollm2-135m", "h100", ParallelLayout(9, 1)),
]
_MODELS = {i: AnalyticCostModel(m, a, lay) for i, (m, a, lay) in enumerate(CONFIGS)}

prefill_chunks = st.lists(st.tuples(st.integers(1, 4096), st.integers(0, 32768)), max_size=4)


@st.composite
def decode_part(draw: st.DrawFn) -> tuple[int, int]:
    n = draw(st.integers(0, 512))
    ctx = 0 if n == 0 else draw(st.integers(n, n * 32768))
    return n, ctx


def test_registered_and_protocol() -> None:
    assert COST_MODELS.get("analytic") is AnalyticCostModel
    m = COST_MODELS.create("analytic", model="llama-3.1-8b", accelerator="h100", layout=ParallelLayout(2, 1))
    assert isinstance(m, CostModel)
    assert m.name == "analytic" and m.layout == ParallelLayout(2, 1)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(_MODELS)), st.integers(1, 1024), st.data())
def test_decode_line_is_exact(idx: int, n: int, data: st.DataObject) -> None:
    cm = _MODELS[idx]
    ctx = data.draw(st.integers(n, n * 131072))
    a, b = cm.decode_line(n)
    t = cm.stage_time(BatchShape([], n, ctx))
    assert t == pytest.approx(a + b * ctx, rel=1e-12)
    assert t == a + b * ctx  # bit-exact by construction
    assert a > 0 and b > 0


def test_decode_line_zero_and_empty_batch() -> None:
    cm = _MODELS[0]
    assert cm.stage_time(BatchShape([])) == 0.0
    assert cm.decode_line(0) == (0.0, 0.0)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(_MODELS)), prefill_chunks, decode_part())
def test_breakdown_sums_to_stage_time(idx: int, prefill: list[tuple[int, int]], dec: tuple[int, int]) -> None:
    cm = _MODELS[idx]
    shape = BatchShape(prefill, *dec)
    bd = cm.breakdown(shape)
    assert sum(bd.values()) == pytest.approx(cm.stage_time(shape), rel=1e-9, abs=1e-15)
    assert all(v >= 0 for v in bd.values())
    if shape.num_tokens:
        assert "overhead" in bd
        assert ("tp_comm" in bd) == (cm.layout.tp > 1) and ("pp_send" in bd) == (cm.layout.pp > 1)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(_MODELS)), prefill_chunks, decode_part(), st.integers(1, 2048),
       st.integers(0, 8192))
def test_monotone_in_prefill_tokens_and_context(idx: int, prefill: list[tuple[int, int]],
                                                dec: tuple[int, int], extra: int, cached: int) -> None:
    cm = _MODELS[idx]
    base = cm.stage_time(BatchShape(prefill, *dec))
    if prefill:
        (n, c), rest = prefill[0], prefill[1:]
        more_new = cm.stage_time(BatchShape([(n + extra, c), *rest], *dec))
        more_cached = cm.stage_time(BatchShape([(n, c + cached), *rest], *dec))
        assert more_new > base
        assert more_cached >= base
    added_chunk = cm.stage_time(BatchShape([*prefill, (extra, cached)], *dec))
    assert added_chunk > base
    n, ctx = dec
    if n:
        assert cm.stage_time(BatchShape(prefill, n, ctx + extra)) > base


def test_prefill_time_grows_with_chunk_strictly() -> None:
    cm = _MODELS[0]
    times = [cm.stage_time(BatchShape([(n, 0)])) for n in (1, 16, 256, 2048, 8192)]
    assert times == sorted(times) and len(set(times)) == len(times)
    # Large prefill is compute-bound: time roughly proportional to tokens.
    assert times[4] / times[3] == pytest.approx(4, rel=0.15)


def test_decode_batch1_streams_weights() -> None:
    m, acc = get_model("llama-3.1-8b"), get_accelerator("h100")
    eff = AnalyticEfficiency()
    cm = AnalyticCostModel(m, acc, ParallelLayout(), efficiency=eff)
    shape = BatchShape([], 1, 1024)
    t = cm.stage_time(shape)
    # Every weight is read once, except the untied embedding table of which one row is gathered.
    streamed = m.weight_bytes(2) - 2 * m.vocab_size * m.hidden_size
    weight_time = streamed / (acc.memory_bw_gbps * 1e9 * eff.gemm_memory)
    assert weight_time < t < 1.3 * weight_time
    # With ideal efficiency and no overhead the roofline is bandwidth-bound on weights.
    ideal = AnalyticCostModel(m, acc, efficiency=AnalyticEfficiency(1, 1, 1, 1, 1, 1, 0.0, 0.0))
    ideal_weight_time = streamed / (acc.memory_bw_gbps * 1e9)
    assert ideal_weight_time < ideal.stage_time(shape) < 1.05 * ideal_weight_time


@pytest.mark.parametrize("name", ["llama-3.1-8b", "qwen2.5-7b", "qwen3-0.6b", "smollm2-135m"])
def test_memory_terms_are_exact_weight_streaming(name: str) -> None:
    m, acc = get_model(name), get_accelerator("h100")
    eff = AnalyticEfficiency()
    cm = AnalyticCostModel(m, acc, efficiency=eff)
    ops = cm.op_table(BatchShape([], 1, 100))
    gemm_rate = acc.memory_bw_gbps * 1e9 * eff.gemm_memory
    for op in ops:
        if op.op in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head"):
            assert op.bound == "memory"
            expected = op.count * (op.weight_bytes + op.act_bytes) / gemm_rate
            assert op.seconds == pytest.approx(expected, rel=1e-12)
    # Every parameter is read once per step, except the embedding table, of which one row is read
    # (a tied table is read whole by the LM head).
    streamed = sum(op.count * op.weight_bytes for op in ops)
    h, table = m.hidden_size, m.vocab_size * m.hidden_size
    expected = (m.num_params - (0 if m.tie_word_embeddings else table) + h) * 2
    assert streamed == pytest.approx(expected, rel=1e-12)


def test_tensor_parallel_cuts_compute_adds_allreduce() -> None:
    shape = BatchShape([(1024, 0)], 32, 32 * 2000)
    tp1 = AnalyticCostModel("llama-3.1-8b", "h100", ParallelLayout(1, 1))
    tp2 = AnalyticCostModel("llama-3.1-8b", "h100", ParallelLayout(2, 1))
    b1, b2 = tp1.breakdown(shape), tp2.breakdown(shape)
    work = ("qkv_proj", "o_proj", "mlp", "attention_prefill", "attention_decode", "lm_head")
    assert sum(b2[k] for k in work) < 0.6 * sum(b1[k] for k in work)
    assert "tp_comm" not in b1 and b2["tp_comm"] > 0
    assert tp2.stage_time(shape) < tp1.stage_time(shape)
    # Ring all-reduce of T*h*2 bytes, twice per layer plus the embedding's.
    ops = {op.op: op for op in tp2.op_table(shape)}
    ar = ops["allreduce_x2"]
    link = 450e9 * AnalyticEfficiency().allreduce
    assert ar.seconds == pytest.approx(2 * 32 * (2 * 1 / 2 * shape.num_tokens * 4096 * 2 / link + 10e-6))


def test_pipeline_stage_is_a_slice_of_the_pass() -> None:
    shape = BatchShape([(512, 128)], 16, 16 * 900)
    full = AnalyticCostModel("llama-3.1-8b", "h100", ParallelLayout(1, 1))
    for pp in (2, 4):
        cm = AnalyticCostModel("llama-3.1-8b", "h100", ParallelLayout(1, pp))
        stage = cm.stage_time(shape)
        send = cm.breakdown(shape)["pp_send"]
        assert stage < full.stage_time(shape)
        # Even split: the pp stages add up to one full pass (overhead included once) plus the sends.
        assert pp * (stage - send) == pytest.approx(full.stage_time(shape), rel=1e-12)


def test_fp8_speeds_up_weight_bound_decode() -> None:
    shape = BatchShape([], 8, 8 * 512)
    bf16 = AnalyticCostModel("llama-3.1-8b", "h100").stage_time(shape)
    fp8 = AnalyticCostModel("llama-3.1-8b", "h100", dtype="fp8").stage_time(shape)
    assert fp8 < 0.7 * bf16
    with pytest.raises(ValueError, match="FP8"):
        AnalyticCostModel("llama-3.1-8b", "a100", dtype="fp8")


def test_hardware_ordering_for_decode() -> None:
    shape = BatchShape([], 32, 32 * 1024)
    t = {a: AnalyticCostModel("llama-3.1-8b", a).stage_time(shape) for a in ("h200", "h100", "a100", "cpu")}
    assert t["h200"] < t["h100"] < t["a100"] < t["cpu"]


def test_invalid_inputs() -> None:
    cm = _MODELS[0]
    with pytest.raises(ValueError, match="decode_context"):
        cm.stage_time(BatchShape([], 4, 3))
    with pytest.raises(ValueError, match="decode_context"):
        cm.stage_time(BatchShape([], 0, 10))
    with pytest.raises(ValueError, match="prefill entry"):
        cm.stage_time(BatchShape([(0, 5)]))
    with pytest.raises(ValueError, match="prefill entry"):
        cm.stage_time(BatchShape([(5, -1)]))
    with pytest.raises(ValueError, match="num_heads"):
        AnalyticCostModel("llama-3.1-8b", "h100", ParallelLayout(3, 1))
    AnalyticCostModel("qwen3-8b", "h100", ParallelLayout(32, 1))  # 8 KV heads replicated over 32: fine
    with pytest.raises(ValueError, match="num_kv_heads"):
        AnalyticCostModel("qwen2.5-7b", "h100", ParallelLayout(7, 1))  # 28 heads split, 4 KV heads cannot
    with pytest.raises(ValueError, match="dtype"):
        AnalyticCostModel("llama-3.1-8b", "h100", dtype="fp32")
    with pytest.raises(ValueError, match="gemm_compute"):
        AnalyticEfficiency(gemm_compute=1.5)
    with pytest.raises(KeyError, match="unknown model"):
        AnalyticCostModel("no-such-model", "h100")


def test_stage_time_is_fast() -> None:
    cm = AnalyticCostModel("llama-3.1-8b", "h100")
    shape = BatchShape([(512, 2048)], 200, 200 * 1500)
    n = 20000
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            cm.stage_time(shape)
        best = min(best, (time.perf_counter() - t0) / n)
    assert best < 10e-6, f"stage_time took {best * 1e6:.2f} us per call"


def test_max_kv_blocks_by_hand() -> None:
    m, acc, lay = get_model("llama-3.1-8b"), get_accelerator("h100"), ParallelLayout()
    reserve = 2 * 2**30
    blocks = max_kv_blocks(m, acc, lay, 16, gpu_memory_utilization=0.9, activation_reserve=reserve)
    free = 0.9 * 80 * 2**30 - m.weight_bytes(2) - reserve
    assert blocks == int(free // (16 * m.kv_bytes_per_token(2)))
    cm = AnalyticCostModel(m, acc)
    assert cm.max_kv_blocks(16, activation_reserve=reserve) == blocks
    assert cm.max_kv_blocks(16, gpu_memory_utilization=0.95) > cm.max_kv_blocks(16)
    default_reserve = activation_reserve_bytes(m, lay)  # 8192 batched tokens, 256 sequences
    assert 0.5 * 2**30 < default_reserve < 2 * 2**30
    assert cm.max_kv_blocks(16) == max_kv_blocks(m, acc, lay, 16, activation_reserve=default_reserve) > blocks


def test_max_kv_blocks_parallel_and_errors() -> None:
    m, acc = get_model("llama-3.1-70b"), get_accelerator("h100")
    with pytest.raises(ValueError, match="does not fit"):
        max_kv_blocks(m, acc, ParallelLayout(1, 1), 16)
    tp4 = max_kv_blocks(m, acc, ParallelLayout(4, 1), 16)
    tp8 = max_kv_blocks(m, acc, ParallelLayout(8, 1), 16)
    assert 0 < tp4 < tp8
    # pp splits layers: 80 layers over 3 stages -> 27/27/26, the 27-layer stage with the embedding binds.
    pp3 = max_kv_blocks(m, acc, ParallelLayout(2, 3), 16)
    assert pp3 > 0
    with pytest.raises(ValueError, match="block_size"):
        max_kv_blocks(m, acc, ParallelLayout(8, 1), 0)
    # Replicated KV heads: with tp=16 > 8 KV heads each device still holds one whole KV head, so the
    # KV bytes per token per device are those of tp=8 and only the smaller weight shard frees room.
    small = dataclasses.replace(m, num_layers=8)
    tp8_small = max_kv_blocks(small, acc, ParallelLayout(8, 1), 16, activation_reserve=0)
    tp16_small = max_kv_blocks(small, acc, ParallelLayout(16, 1), 16, activation_reserve=0)
    assert tp8_small < tp16_small < 1.05 * tp8_small
