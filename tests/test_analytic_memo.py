"""The analytic model's memoized pieces (`_gemms` per token count, `_head` per sequence count)
give the same floats as the stage formula written out in one expression, in any call order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from backends.analytic import AnalyticCostModel
from backends.cost_model import BatchShape, ParallelLayout


def _reference_rest(m: AnalyticCostModel, prefill: list[tuple[int, int]], nd: int) -> float:
    """`_rest` as one expression (the form before the memos), for prefill batches."""
    nt = sum(n for n, _ in prefill)
    kvt = sum(c + n for n, c in prefill)
    fl = 0.0
    for n, c in prefill:
        fl += n * (c + (n + 1) * 0.5)
    t = nd + nt
    s = nd + len(prefill)
    attn = max(fl * m._pf_c, kvt * m._pf_kv + nt * m._pf_qo)
    layer = (
        max(t * m._qkv_c, m._qkv_w + t * m._qkv_a)
        + max(t * m._o_c, m._o_w + t * m._o_a)
        + max(t * m._gu_c, m._gu_w + t * m._gu_a)
        + max(t * m._dn_c, m._dn_w + t * m._dn_a)
        + attn
        + t * m._layer_tok
        + m._layer_const
    )
    return (
        layer * m.layers_per_stage
        + (max(s * m._lm_c, m._lm_w + s * m._lm_a) + s * m._gather_seq) * m._inv_pp
        + t * m._pass_tok
        + m._pass_const
        + t * m._send_tok
        + m._send_const
        + m._overhead
    )


_MODEL = AnalyticCostModel("llama-2-70b", "a100-80gb", ParallelLayout(2, 2))

chunk = st.tuples(st.integers(1, 600), st.integers(0, 4000))


@settings(max_examples=300, deadline=None)
@given(st.lists(chunk, min_size=1, max_size=4), st.integers(0, 130), st.integers(0, 3000))
def test_memoized_stage_time_matches_formula(prefill, nd, per_seq):
    ctx = nd * (per_seq + 1)
    shape = BatchShape(prefill, nd, ctx, per_seq + 1 if nd else 0)
    want = _reference_rest(_MODEL, prefill, nd) + _MODEL._decode_b * ctx
    assert _MODEL.stage_time(shape) == want
    assert _MODEL.stage_time(shape) == want  # second call: both pieces come from the memos
