"""The Triton paged-attention kernel and the CUDA-graph decode path against the reference (GPU only)."""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _case(
    num_heads: int, kv_heads: int, head_dim: int, page: int, dtype, seqs: list[tuple[int, int]], seed: int
):
    """Random pools and block tables; seqs = [(q_len, context_len)]. Returns q, pools, metadata."""
    from engine.attention import build_metadata

    g = torch.Generator(device="cuda").manual_seed(seed)
    rnd = random.Random(seed)
    need = sum(-(-ctx // page) for _, ctx in seqs)
    num_blocks = need + 7
    ids = list(range(num_blocks))
    rnd.shuffle(ids)  # tables point all over the pool, not at consecutive blocks
    tables, at = [], 0
    for _, ctx in seqs:
        k = -(-ctx // page)
        tables.append(ids[at : at + k])
        at += k
    shape = (num_blocks, page, kv_heads, head_dim)
    kc = torch.randn(shape, generator=g, device="cuda").to(dtype)
    vc = torch.randn(shape, generator=g, device="cuda").to(dtype)
    t = sum(n for n, _ in seqs)
    q = torch.randn((t, num_heads, head_dim), generator=g, device="cuda").to(dtype)
    meta = build_metadata([n for n, _ in seqs], [c for _, c in seqs], tables, page, torch.device("cuda"))
    return q, kc, vc, meta


def _reference(q, kc, vc, meta, scale):
    from engine.attention import paged_attention_reference

    return paged_attention_reference(q.float(), kc.float(), vc.float(), meta, scale)


MIXED = [(37, 37), (1, 300), (20, 95), (1, 1), (64, 64), (5, 2000), (1, 17)]


@pytest.mark.parametrize("heads", [(32, 8, 128), (9, 3, 64), (4, 4, 64), (16, 1, 128), (14, 2, 80)])
@pytest.mark.parametrize("page", [16, 32])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_mixed_batch_matches_reference(heads, page, dtype) -> None:
    from engine.triton_attention import TritonPagedAttention

    h, kvh, d = heads
    q, kc, vc, meta = _case(h, kvh, d, page, dtype, MIXED, seed=h * page)
    be = TritonPagedAttention(torch.device("cuda"), h, kvh)
    be.prepare(meta)
    got = be.attend(q, kc, vc, meta, d**-0.5).float()
    want = _reference(q, kc, vc, meta, d**-0.5)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)


@pytest.mark.parametrize("splits", [1, 2, 3, 8, 32])
@pytest.mark.parametrize("ctxs", [[4000], [1, 70, 129, 1500], [128] * 5])
def test_split_kv_decode_matches_reference(splits: int, ctxs: list[int]) -> None:
    from engine.triton_attention import TritonPagedAttention

    q, kc, vc, meta = _case(32, 8, 128, 16, torch.bfloat16, [(1, c) for c in ctxs], seed=splits)
    be = TritonPagedAttention(torch.device("cuda"), 32, 8)
    be.prepare(meta)
    meta.num_splits = splits
    got = be.attend(q, kc, vc, meta, 128**-0.5).float()
    torch.testing.assert_close(got, _reference(q, kc, vc, meta, 128**-0.5), atol=2e-2, rtol=2e-2)


def test_heuristic_splits_small_long_decodes() -> None:
    from engine.triton_attention import TritonPagedAttention

    be = TritonPagedAttention(torch.device("cuda"), 32, 8)
    assert be.num_splits(1, 8192) > 1
    assert be.num_splits(256, 8192) == 1
    assert be.num_splits(1, 64) == 1
    # Wide, deep key tiles where few programs set the pace; narrow ones for wide decode launches and fp32.
    assert be.launch_config(True, 8, torch.bfloat16) == (128, 4, 3)
    assert be.launch_config(True, 2 * be.num_sms, torch.bfloat16) == (64, 4, 2)
    assert be.launch_config(False, 10 * be.num_sms, torch.bfloat16) == (128, 8, 3)
    assert be.launch_config(False, 8, torch.float32) == (64, 8, 2)
    # The calibrated cost model's mirrors of both choices (backends/calibrated.py) agree with the kernel.
    from backends.calibrated import triton_decode_splits, triton_decode_tile

    for rows in (1, 2, 8, 16, 32, 33, 48, 64, 256):
        assert triton_decode_splits(rows, 8, be.num_sms, 32768) == be.num_splits(rows, 32768), rows
        for dt, name in ((torch.bfloat16, "bfloat16"), (torch.float32, "float32")):
            want = be.launch_config(True, rows * 8, dt)[0]
            assert triton_decode_tile(rows, 8, be.num_sms, name) == want, (rows, name)


def _gpu_runner(
    family: str, graphs: bool, backend: str = "triton", dtype: str = "float32", gemv: str = "cublas"
):
    from engine.config import EngineConfig
    from engine.model_runner import ModelRunner
    from engine.testing import tiny_spec

    return ModelRunner(
        EngineConfig(
            model=tiny_spec(family),
            device="cuda",
            dtype=dtype,
            block_size=16,
            num_kv_blocks=64,
            max_num_seqs=8,
            cuda_graphs=graphs,
            attention_backend=backend,
            decode_gemv=gemv,
            seed=5,
        )
    )


@pytest.mark.parametrize("gemv", ["cublas", "split", "fused"])
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_engine_on_gpu_matches_dense_reference_with_graphs(family: str, gemv: str) -> None:
    from engine.reference import dense_logits
    from engine.testing import StepDriver, make_seq
    from engine.weights import hf_state_dict_of

    r = _gpu_runner(family, graphs=True, gemv=gemv)
    assert r.graphs is not None
    assert r.graphs.info["batch1_variant"] == gemv
    sd = hf_state_dict_of(r.model)
    drv = StepDriver(r)
    g = torch.Generator().manual_seed(0)
    seqs = [make_seq(i, torch.randint(0, 101, (n,), generator=g).tolist()) for i, n in enumerate((40, 7, 23))]
    drv.step([(s, s.num_tokens) for s in seqs])
    for step in range(20):  # decode-only steps run through the bucket-4 graph with one padded row
        live = seqs if step < 10 else seqs[:1]  # then a batch of 1 through the bucket-1 graph
        for s in live:
            drv.append(s, (step * 7 + s.id) % 101)
        got = drv.step([(s, 1) for s in live])
        want = torch.stack([dense_logits(r.spec, sd, s.token_ids)[-1] for s in live])
        torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_step_graphs_match_eager_steps(family: str) -> None:
    from backends.cost_model import BatchShape
    from engine.profiler import _Synth, build_batch, release
    from policies.kv.block_manager import BlockManager

    r = _gpu_runner(family, graphs=True)
    sg = r.step_graphs
    assert sg is not None
    kv = BlockManager(r.num_blocks, r.block_size, enable_prefix_caching=False)
    synth = _Synth(r.spec.vocab_size, seed=3)
    shapes = [
        BatchShape([(5, 0)]),  # a short prompt in the smallest bucket
        BatchShape([(30, 16)]),  # a chunk over a cached prefix
        BatchShape([(3, 0), (40, 20)], 3, 3 * 50),  # chunks beside decodes
        BatchShape([(100, 0), (1, 7)], 2, 70),  # a one-token chunk and padded tiles
        BatchShape([(150, 300)], 4, 4 * 90),
    ]
    with torch.inference_mode():
        for shape in shapes:
            batch = build_batch(shape, kv, synth)
            try:
                t = sg.bucket(batch)
                assert t is not None and t >= shape.num_tokens
                rows, seqs = sg.load(batch, t)
                got_tokens = sg.replay(t, len(rows))
                got = sg.logits(t)[: len(rows)].clone()
                inp = r.prepare(batch)
                hidden = r.forward_hidden(inp)
                assert inp.sample_rows == rows and [s.id for s in inp.sample_seqs] == [s.id for s in seqs]
                want = r.model.compute_logits(hidden[torch.tensor(rows, device=hidden.device)])
                torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
                assert got_tokens == want.argmax(dim=-1).tolist()
                assert r.execute(batch) == got_tokens  # and the runner routes the step to the graph
            finally:
                release(batch, kv)


def test_graphs_and_eager_and_torch_backend_and_async_generate_the_same() -> None:
    from engine.config import EngineConfig
    from engine.llm_engine import LLMEngine
    from engine.sampling import SamplingParams
    from engine.testing import tiny_spec

    outs = []
    # async: the next step's inputs take the PENDING ids from the device (decode graphs, step
    # graphs at this token budget, and eager steps), for the greedy generate
    for graphs, backend, overlap in (
        (True, "triton", "off"), (True, "triton", "graphs"), (True, "triton", "all"),
        (False, "triton", "all"), (False, "torch", "off"),
    ):  # fmt: skip
        cfg = EngineConfig(
            model=tiny_spec("qwen3"),
            device="cuda",
            dtype="float32",
            block_size=16,
            num_kv_blocks=64,
            max_num_seqs=8,
            max_num_batched_tokens=32,
            cuda_graphs=graphs,
            attention_backend=backend,
            async_scheduling=overlap,
            seed=5,
        )
        eng = LLMEngine(cfg)
        g = torch.Generator().manual_seed(1)
        prompts = [torch.randint(1, 101, (n,), generator=g).tolist() for n in (5, 50, 17, 33, 2)]
        res = eng.generate(prompts, SamplingParams(max_tokens=24, ignore_eos=True))
        # seeded nucleus sampling: graph rows redraw from the graph's logits with the same generator
        hot = SamplingParams(max_tokens=24, ignore_eos=True, temperature=0.8, top_p=0.9, seed=11)
        res2 = eng.generate(prompts, [hot if i % 2 else SamplingParams(max_tokens=24, ignore_eos=True)
                                      for i in range(len(prompts))])  # fmt: skip
        outs.append([o.output_token_ids for o in res] + [o.output_token_ids for o in res2])
    assert outs[0] == outs[1] == outs[2] == outs[3] == outs[4]
    assert outs[0][1] != outs[0][len(prompts) + 1]  # the sampled request did not decode greedily


def test_profile_on_gpu_times_graph_devices_and_launches() -> None:
    """The grid's async fields on CUDA: every step has its launch seconds, every graph step its device
    seconds (queued behind another of its shape), and the calibrated model fits both."""
    from backends.calibrated import CalibratedCostModel
    from engine.profiler import ProfileGrid, profile_engine
    from engine.testing import tiny_engine_config

    cfg = tiny_engine_config("cuda", step_graph_tokens=16, seed=5)  # longer steps run eager
    prof = profile_engine(cfg, ProfileGrid.quick(), repeats=3, warmup=1, command="test")
    graphed = [s for s in prof.samples if s.device_s is not None]
    eager = [s for s in prof.samples if s.device_s is None]
    assert graphed and eager and all(s.launch_s is not None and s.launch_s > 0 for s in prof.samples)
    assert all(s.device_s > 0 for s in graphed)
    assert not [s for s in eager if s.prefill == () and s.num_decode <= cfg.max_num_seqs]  # decodes graph
    m = CalibratedCostModel(profile=prof)
    assert any("host part of a decode graph step" in n for n in m.notes)
    assert any("eager launch" in n for n in m.notes)


def test_memory_based_kv_sizing_on_gpu() -> None:
    from engine.config import EngineConfig
    from engine.model_runner import ModelRunner
    from engine.testing import tiny_spec

    r = ModelRunner(
        EngineConfig(
            model=tiny_spec("llama"),
            device="cuda",
            gpu_memory_utilization=0.05,
            max_num_seqs=4,
            cuda_graphs=False,
        )
    )
    free, total = torch.cuda.mem_get_info()
    assert r.num_blocks > 100
    assert r.kv.nbytes <= 0.05 * total


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_ops_match_unfused_pytorch(dtype) -> None:
    from engine import triton_ops
    from engine.attention import write_kv
    from engine.model import MLP, RMSNorm, RotaryEmbedding
    from engine.testing import tiny_spec

    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    g = torch.Generator(device="cuda").manual_seed(0)

    def rnd(*shape):
        return torch.randn(shape, generator=g, device="cuda").to(dtype)

    norm = RMSNorm(96, 1e-5).cuda().to(dtype)
    with torch.no_grad():
        norm.weight.copy_(rnd(96))
    x, res = rnd(7, 96), rnd(7, 96)
    want_out, want_res = norm.add_forward(x, res.clone())
    norm.fused = True
    got_res = res.clone()
    got_out, _ = norm.add_forward(x, got_res)
    torch.testing.assert_close(got_out, want_out, **tol)
    torch.testing.assert_close(got_res, want_res, **tol)
    # per-head norm of a strided [T, H, D] view (Qwen3 q/k norm on a slice of the qkv output)
    qkv = rnd(5, 3 * 4 * 32)
    qv = qkv[:, : 4 * 32].view(5, 4, 32)
    hn = RMSNorm(32, 1e-6).cuda().to(dtype)
    want = hn(qv)
    hn.fused = True
    torch.testing.assert_close(hn(qv), want, **tol)

    spec = tiny_spec("llama", head_dim=32)
    rot = RotaryEmbedding(spec, 300).cuda()
    q, k = rnd(9, 4, 32), rnd(9, 2, 32)
    pos = torch.tensor([0, 1, 5, 63, 64, 65, 200, 299, 7], device="cuda")
    wq, wk = rot(pos, q.clone(), k.clone())
    rot.fused = True
    gq, gk = rot(pos, q.clone(), k.clone())
    torch.testing.assert_close(gq, wq, **tol)
    torch.testing.assert_close(gk, wk, **tol)

    mlp = MLP(spec).cuda().to(dtype)
    h = rnd(6, 64)
    with torch.no_grad():
        want = mlp(h)
        mlp.fused = True
        torch.testing.assert_close(mlp(h), want, **tol)

    kv_shape = (5, 16, 2, 32)
    kc, vc = (
        torch.zeros(kv_shape, device="cuda", dtype=dtype),
        torch.zeros(kv_shape, device="cuda", dtype=dtype),
    )
    kc2, vc2 = kc.clone(), vc.clone()
    kk = rnd(4, 3 * 2 * 32)[:, :64].view(4, 2, 32)  # strided views, as sliced from qkv
    vv = rnd(4, 3 * 2 * 32)[:, 64:128].view(4, 2, 32)
    slots = torch.tensor([3, 17, 40, 79], device="cuda")
    write_kv(kk, vv, kc, vc, slots)
    triton_ops.store_kv(kk, vv, kc2, vc2, slots)
    assert torch.equal(kc, kc2) and torch.equal(vc, vc2)

    # rope + KV write in one kernel == rotary, then write_kv of the rotated keys
    rot.fused = False
    qkv = rnd(4, (4 + 2 * 2) * 32)
    q, k, v = qkv[:, :128].view(4, 4, 32), qkv[:, 128:192].view(4, 2, 32), qkv[:, 192:].view(4, 2, 32)
    pos4 = torch.tensor([0, 5, 64, 299], device="cuda", dtype=torch.int32)
    wq, wk = rot(pos4.long(), q.clone(), k.clone())
    kc, vc = torch.zeros_like(kc), torch.zeros_like(vc)
    write_kv(wk, v, kc, vc, slots)
    kc2, vc2 = torch.zeros_like(kc), torch.zeros_like(vc)
    gq = q.clone()
    triton_ops.rope_store_kv_(gq, k, v, pos4, rot.cos, rot.sin, kc2, vc2, slots.to(torch.int32))
    torch.testing.assert_close(gq, wq, **tol)
    torch.testing.assert_close(kc2, kc, **tol)
    assert torch.equal(vc2, vc)

    # ... and with Qwen3's per-head q/k RMSNorm in front: the unfused PyTorch norms, then the above
    qn, kn = RMSNorm(32, 1e-6).cuda().to(dtype), RMSNorm(32, 1e-6).cuda().to(dtype)
    with torch.no_grad():
        qn.weight.copy_(rnd(32))
        kn.weight.copy_(rnd(32))
    q, k = 3 * q, 0.5 * k  # scales the norm has to take out
    wq, wk = rot(pos4.long(), qn(q.clone()), kn(k.clone()))
    kc, vc = torch.zeros_like(kc), torch.zeros_like(vc)
    write_kv(wk, v, kc, vc, slots)
    kc2, vc2 = torch.zeros_like(kc), torch.zeros_like(vc)
    gq = q.clone()
    norms = (qn.weight, kn.weight, 1e-6)
    triton_ops.rope_store_kv_(gq, k, v, pos4, rot.cos, rot.sin, kc2, vc2, slots.to(torch.int32), norms)
    torch.testing.assert_close(gq, wq, **tol)
    torch.testing.assert_close(kc2, kc, **tol)
    assert torch.equal(vc2, vc)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(37, 96), (512, 4096), (8, 14336)])
def test_fused_gemv_matches_unfused(dtype, shape) -> None:
    from engine.model import RMSNorm
    from engine.triton_gemv import CANDIDATES, NORM, SILU, gemv

    n, k = shape
    g = torch.Generator(device="cuda").manual_seed(n)

    def rnd(*s):
        return torch.randn(s, generator=g, device="cuda").to(dtype)

    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=2e-2)
    w, x, res, bias = rnd(n, k) * 0.05, rnd(1, k), rnd(1, k), rnd(n)
    norm = RMSNorm(k, 1e-5).cuda().to(dtype)
    with torch.no_grad():
        norm.weight.copy_(rnd(k))
    want_h, want_res = norm.add_forward(x, res.clone())
    for cfg in CANDIDATES:
        lin = torch.nn.functional.linear
        torch.testing.assert_close(gemv(w, x, bias=bias, config=cfg), lin(x, w, bias), **tol)
        ro = torch.full_like(x, float("nan"))
        got = gemv(w, x, mode=NORM, residual=res, norm_weight=norm.weight, eps=1e-5, res_out=ro, config=cfg)
        assert torch.equal(ro, want_res)  # the residual stream is bit-exact
        torch.testing.assert_close(got, lin(want_h, w), **tol)
        got = gemv(w, x, mode=NORM, norm_weight=norm.weight, eps=1e-5, config=cfg)
        torch.testing.assert_close(got, lin(norm(x), w), **tol)
        x2 = rnd(1, 2 * k)
        ref = (torch.nn.functional.silu(x2[:, :k].float()) * x2[:, k:].float()).to(dtype)
        torch.testing.assert_close(gemv(w, x2, mode=SILU, config=cfg), lin(ref, w), **tol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("ctx", [1, 37, 128, 700, 3000])
@pytest.mark.parametrize("splits", [1, 5, 32])
def test_decode_one_from_parts_matches_rope_write_and_attention(dtype, ctx: int, splits: int) -> None:
    """The fused batch-1 kernel (sum qkv parts, rotate, write the new k/v, split attention, merge by
    the last split) == the unsplit projection, the rotary module, write_kv and the reference
    attention; the pools end up holding the same new token, and repeated launches (the arrival
    counters reset themselves) give the same result."""
    from engine.attention import build_metadata, paged_attention_reference, write_kv
    from engine.model import RotaryEmbedding
    from engine.testing import tiny_spec
    from engine.triton_attention import TritonPagedAttention
    from engine.triton_splitk import SplitConfig, gemv_split

    g = torch.Generator(device="cuda").manual_seed(ctx + splits)
    hq, hk, dim, page, k = 8, 2, 64, 16, 512
    spec = tiny_spec("llama", head_dim=dim, num_heads=hq, num_kv_heads=hk, max_position_embeddings=4096)
    rot = RotaryEmbedding(spec, 4096).cuda()
    blocks = -(-ctx // page) + 3
    perm = torch.randperm(blocks, generator=torch.Generator().manual_seed(ctx)).tolist()
    table = perm[: -(-ctx // page)]
    kc = (torch.randn((blocks, page, hk, dim), generator=g, device="cuda") * 0.5).to(dtype)
    vc = torch.randn((blocks, page, hk, dim), generator=g, device="cuda").to(dtype)
    x = torch.randn((1, k), generator=g, device="cuda").to(dtype)
    w = (torch.randn(((hq + 2 * hk) * dim, k), generator=g, device="cuda") * 0.05).to(dtype)
    pos = ctx - 1
    meta = build_metadata([1], [ctx], [table], page, torch.device("cuda"))
    meta.num_splits = splits
    positions = torch.tensor([pos], device="cuda")
    # reference: unsplit projection, rotary, write, attention over the gathered blocks
    qkv = torch.nn.functional.linear(x, w)
    q, kk, v = qkv[:, : hq * dim], qkv[:, hq * dim : (hq + hk) * dim], qkv[:, (hq + hk) * dim :]
    q, kk = rot(positions, q.view(1, hq, dim), kk.view(1, hk, dim))
    k_ref, v_ref = kc.clone(), vc.clone()
    write_kv(kk, v.view(1, hk, dim), k_ref, v_ref, meta.slot_mapping)
    want = paged_attention_reference(q, k_ref, v_ref, meta, dim**-0.5)
    be = TritonPagedAttention(torch.device("cuda"), hq, hk)
    part = gemv_split(w, x, SplitConfig(16, 256, 4))
    tol = dict(atol=2e-5, rtol=2e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    for _ in range(3):
        got = be.decode_one_from_parts(
            part, hq, dim, positions, rot.cos, rot.sin, kc, vc, meta, dim**-0.5, dtype
        )
        torch.testing.assert_close(got, want, **tol)
        torch.testing.assert_close(kc, k_ref, **tol)
        torch.testing.assert_close(vc, v_ref, **tol)
    assert int(be._arrivals.abs().sum()) == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_split_gemv_consumers_match_unsplit(dtype) -> None:
    """Split-K partials reduced by the norm and SiLU kernels == the unsplit projection followed by
    the ordinary ops (several split counts; the qkv consumer has a test of its own above)."""
    from engine.model import RMSNorm
    from engine.triton_splitk import SplitConfig, add_rms_norm_parts, gemv_split, silu_and_mul_parts

    g = torch.Generator(device="cuda").manual_seed(3)

    def rnd(*s, scale=1.0):
        return (torch.randn(s, generator=g, device="cuda") * scale).to(dtype)

    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=2e-2)
    lin = torch.nn.functional.linear
    k = 1024
    for cfg in (SplitConfig(16, 1024, 8), SplitConfig(8, 256, 4), SplitConfig(32, 512, 8)):
        x = rnd(1, k)
        # o_proj -> residual add + RMSNorm
        w = rnd(512, k, scale=0.03)
        res = rnd(1, 512)
        norm = RMSNorm(512, 1e-5).cuda().to(dtype)
        want_h, want_res = norm.add_forward(lin(x, w), res.clone())
        got_res = res.clone()
        got_h = add_rms_norm_parts(gemv_split(w, x, cfg), got_res, norm.weight, 1e-5)
        torch.testing.assert_close(got_res, want_res, **tol)
        torch.testing.assert_close(got_h, want_h, **tol)
        # gate_up -> SiLU-and-multiply
        w = rnd(2 * 384, k, scale=0.03)
        gu = lin(x, w).float()
        want = (torch.nn.functional.silu(gu[:, :384]) * gu[:, 384:]).to(dtype)
        torch.testing.assert_close(silu_and_mul_parts(gemv_split(w, x, cfg), dtype), want, **tol)


def test_gpu_telemetry_reads_the_card() -> None:
    """NVML through ctypes on the real driver: a clock, a power draw and a temperature."""
    from engine.device import get_device
    from engine.telemetry import open_gpu_telemetry

    reader, why = open_gpu_telemetry(get_device("cuda"))
    assert reader is not None, why
    s = reader()
    assert 100 < s.sm_mhz < 5000 and 100 < s.mem_mhz < 10000 and 0 < s.power_w < 2000 and 0 < s.temp_c < 120


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows", [1, 3, 64, 200])
def test_two_stage_argmax_is_torch_argmax(dtype, rows: int) -> None:
    """Random rows, a tie across chunks (the first index wins), a row of equal values, -inf and
    NaN entries, a vocabulary that is no multiple of the chunk, and a strided (padded) row layout."""
    from engine.sampling import greedy_ids
    from engine.triton_argmax import argmax_rows, chunk_size

    vocab = 128_256 + 5
    g = torch.Generator(device="cuda").manual_seed(rows)
    full = torch.randn((rows, vocab + 64), generator=g, device="cuda").to(dtype)
    x = full[:, :vocab]  # stride(0) > vocab
    c = chunk_size(rows)
    x[0, 3 * c + 7] = 40.0
    x[0, 5] = 40.0  # tie with a later chunk: index 5
    if rows > 1:
        x[1].fill_(-1.0)  # all equal: index 0
        x[1, vocab - 1] = float("-inf")
    if rows > 2:
        x[2, vocab - 2] = 50.0  # in the last, partial chunk
    ref = torch.argmax(x, dim=-1)
    out = torch.full((rows,), -1, dtype=torch.int64, device="cuda")
    assert torch.equal(argmax_rows(x, out), ref)
    assert torch.equal(greedy_ids(x, torch.empty_like(out)), ref)
    x[rows - 1, 17] = float("nan")
    assert int(argmax_rows(x, out)[rows - 1]) == 17
    with pytest.raises(ValueError, match="int64"):
        argmax_rows(x, out.to(torch.int32))
