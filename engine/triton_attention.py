"""Triton paged attention: prefill, chunked prefill, prefix-cached prefill and decode in one launch.

Design after vLLM's unified Triton attention kernel and FlashAttention-2's online softmax
(Dao, "FlashAttention-2", 2023): a program owns BLOCK_Q consecutive query tokens of one
sequence for one KV head, and the GROUP query heads that share that KV head are packed into
the rows of its tile (row r = query r // GROUP_PAD, head r % GROUP_PAD), so K and V are read
once per group, which is what makes GQA decode cheap. Keys are walked in BLOCK_N tiles through
the block table; query i of a sequence with context C and q_len n sits at position C - n + i
and sees keys 0 .. C - n + i, which covers full prefills (C = n), chunks and prefix-cache
hits (C > n) and decodes (n = 1) alike.

Long-context decode at small batch leaves most SMs idle with one program per (sequence, KV
head), so the key range can be split into NUM_SPLITS parts written as partial results plus
log-sum-exp and merged by a second kernel (the split-KV scheme of Flash-Decoding, Dao et al.
2023). The split count is a launch constant, never derived from device data, so the launch is
CUDA-graph safe; each program derives its own key range from the context length it reads.

Batch-1 decode graphs have a kernel of their own (`decode_one_from_parts`) that starts from the
qkv projection's split-K partial sums: it does rotary, the KV write, the split attention and the
merge in one launch, where the general path takes three (measured on an H200 in a Llama-8B
batch-1 graph: 4.48 -> 4.37 ms a step at a 648-token context, 5.03 -> 4.87 ms at 16k).

Imported only on CUDA (triton is absent on CPU CI).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from engine.attention import AttentionMetadata
from engine.triton_ops import store_kv
from engine.triton_splitk import _sum_parts


@triton.jit
def _softmax_update(s, v, m_i, l_i, acc, IEEE: tl.constexpr):
    """Fold one key tile (log2-domain scores s [M, N], values v [N, D]) into the online softmax's
    running max m_i, sum l_i and output acc (FlashAttention-2); rows with no key yet stay at 0."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    if IEEE:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def _paged_attn_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    out_ptr,
    part_ptr,
    lse_ptr,
    cu_q_ptr,
    ctx_ptr,
    bt_ptr,
    tile_seq_ptr,
    tile_q_ptr,
    scale_log2,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_ot,
    stride_oh,
    stride_ps,
    stride_pt,
    stride_ph,
    stride_ls,
    stride_lt,
    stride_bt,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    D_PAD: tl.constexpr,
    PAGE: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    IEEE: tl.constexpr,
):
    tile = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    seq = tl.load(tile_seq_ptr + tile)
    q0 = tl.load(tile_q_ptr + tile)  # first query index (within the sequence) of this tile
    q_start = tl.load(cu_q_ptr + seq)
    q_len = tl.load(cu_q_ptr + seq + 1) - q_start
    ctx = tl.load(ctx_ptr + seq)
    prefix = ctx - q_len

    offs_m = tl.arange(0, BLOCK_M)
    qi = q0 + offs_m // GROUP_PAD
    hh = offs_m % GROUP_PAD
    head = kvh * GROUP + hh
    row_ok = (qi < q_len) & (hh < GROUP)
    offs_d = tl.arange(0, D_PAD)
    d_ok = offs_d < HEAD_DIM
    q = tl.load(
        q_ptr + (q_start + qi)[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :],
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    qpos = prefix + qi

    # Keys this tile needs: up to the position of its last valid query.
    kv_end = tl.minimum(ctx, prefix + tl.minimum(q0 + BLOCK_Q, q_len))
    n_tiles = tl.cdiv(kv_end, BLOCK_N)
    per_split = tl.cdiv(n_tiles, NUM_SPLITS)
    t_lo = split * per_split
    t_hi = tl.minimum(n_tiles, t_lo + per_split)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    for t in range(t_lo, t_hi):
        kpos = t * BLOCK_N + offs_n
        k_ok = kpos < kv_end
        blk = tl.load(bt_ptr + seq * stride_bt + kpos // PAGE, mask=k_ok, other=0).to(tl.int64)
        slot = kpos % PAGE
        k = tl.load(
            k_ptr + blk[None, :] * stride_kb + slot[None, :] * stride_ks + kvh * stride_kh + offs_d[:, None],
            mask=k_ok[None, :] & d_ok[:, None],
            other=0.0,
        )
        if IEEE:  # float32 models: exact products, no TF32 rounding
            s = tl.dot(q, k, input_precision="ieee") * scale_log2
        else:
            s = tl.dot(q, k) * scale_log2
        allowed = (kpos[None, :] <= qpos[:, None]) & k_ok[None, :]
        s = tl.where(allowed, s, float("-inf"))
        v = tl.load(
            v_ptr + blk[:, None] * stride_vb + slot[:, None] * stride_vs + kvh * stride_vh + offs_d[None, :],
            mask=k_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        m_i, l_i, acc = _softmax_update(s, v, m_i, l_i, acc, IEEE)

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_safe[:, None]
    rows = q_start + qi
    if NUM_SPLITS == 1:
        tl.store(
            out_ptr + rows[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :],
            o.to(out_ptr.dtype.element_ty),
            mask=row_ok[:, None] & d_ok[None, :],
        )
    else:
        tl.store(
            part_ptr
            + split * stride_ps
            + rows[:, None] * stride_pt
            + head[:, None] * stride_ph
            + offs_d[None, :],
            o,
            mask=row_ok[:, None] & d_ok[None, :],
        )
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log2(l_safe))  # log2 domain
        tl.store(lse_ptr + split * stride_ls + rows * stride_lt + head, lse, mask=row_ok)


@triton.jit
def _merge_splits_kernel(
    part_ptr,
    lse_ptr,
    out_ptr,
    stride_ps,
    stride_pt,
    stride_ph,
    stride_ls,
    stride_lt,
    stride_ot,
    stride_oh,
    NUM_SPLITS: tl.constexpr,
    S_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    D_PAD: tl.constexpr,
):
    t = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, S_PAD)
    s_ok = offs_s < NUM_SPLITS
    lse = tl.load(lse_ptr + offs_s * stride_ls + t * stride_lt + h, mask=s_ok, other=float("-inf"))
    m = tl.max(lse, 0)
    w = tl.where(s_ok & (lse > float("-inf")), tl.exp2(lse - m), 0.0)
    offs_d = tl.arange(0, D_PAD)
    d_ok = offs_d < HEAD_DIM
    part = tl.load(
        part_ptr + offs_s[:, None] * stride_ps + t * stride_pt + h * stride_ph + offs_d[None, :],
        mask=s_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    o = tl.sum(part * w[:, None], 0) / tl.sum(w, 0)
    tl.store(out_ptr + t * stride_ot + h * stride_oh + offs_d, o.to(out_ptr.dtype.element_ty), mask=d_ok)


@triton.jit
def _decode_one_parts_kernel(
    p_ptr, pos_ptr, slot_ptr, cos_ptr, sin_ptr, k_ptr, v_ptr, bt_ptr,
    out_ptr, opart_ptr, lse_ptr, arrivals_ptr,
    stride_ps, stride_c, stride_kb, stride_ks, stride_kh, scale_log2,
    HQ: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, D: tl.constexpr,
    D_PAD: tl.constexpr, HALF: tl.constexpr, HALF_PAD: tl.constexpr, S: tl.constexpr,
    PAGE: tl.constexpr, BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr, S_PAD: tl.constexpr,
    IEEE: tl.constexpr,
):  # fmt: skip
    kvh = tl.program_id(0)
    split = tl.program_id(1)
    dt = out_ptr.dtype.element_ty
    pos = tl.load(pos_ptr)
    ctx = pos + 1
    d = tl.arange(0, HALF_PAD)
    d_ok = d < HALF
    c1 = tl.load(cos_ptr + pos * stride_c + d, mask=d_ok, other=0.0)
    s1 = tl.load(sin_ptr + pos * stride_c + d, mask=d_ok, other=0.0)
    c = c1[None, :]
    sn = s1[None, :]
    # q: the GROUP heads of this KV head, summed from the parts and rotated, as two halves
    r = tl.arange(0, BLOCK_M)
    r_ok = r < GROUP
    head = kvh * GROUP + r
    m = r_ok[:, None] & d_ok[None, :]
    offs = head[:, None] * D + d[None, :]
    a = _sum_parts(p_ptr, offs, m, S, stride_ps).to(dt).to(tl.float32)
    b = _sum_parts(p_ptr, offs + HALF, m, S, stride_ps).to(dt).to(tl.float32)
    q_lo = (a * c - b * sn).to(dt)
    q_hi = (b * c + a * sn).to(dt)

    n_tiles = tl.cdiv(ctx, BLOCK_N)
    per_split = tl.cdiv(n_tiles, NUM_SPLITS)
    t_lo = split * per_split
    t_hi = tl.minimum(n_tiles, t_lo + per_split)
    if (t_lo < n_tiles) & (n_tiles <= t_hi):  # this program reads the new token: store its k, v first
        slot = tl.load(slot_ptr).to(tl.int64)
        at = (slot // PAGE) * stride_kb + (slot % PAGE) * stride_ks + kvh * stride_kh
        ko = (HQ + kvh) * D + d
        ka = _sum_parts(p_ptr, ko, d_ok, S, stride_ps).to(dt).to(tl.float32)
        kb = _sum_parts(p_ptr, ko + HALF, d_ok, S, stride_ps).to(dt).to(tl.float32)
        kt = k_ptr.dtype.element_ty
        tl.store(k_ptr + at + d, (ka * c1 - kb * s1).to(dt).to(kt), mask=d_ok)
        tl.store(k_ptr + at + HALF + d, (kb * c1 + ka * s1).to(dt).to(kt), mask=d_ok)
        vo = ko + HQ // GROUP * D  # v rows follow the HQ // GROUP k heads
        va = _sum_parts(p_ptr, vo, d_ok, S, stride_ps).to(dt).to(kt)
        vb = _sum_parts(p_ptr, vo + HALF, d_ok, S, stride_ps).to(dt).to(kt)
        tl.store(v_ptr + at + d, va, mask=d_ok)
        tl.store(v_ptr + at + HALF + d, vb, mask=d_ok)
    tl.debug_barrier()  # the CTA's loads below see those stores

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    dd = tl.arange(0, D_PAD)
    dd_ok = dd < D
    acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    for t in range(t_lo, t_hi):
        kpos = t * BLOCK_N + offs_n
        k_ok = kpos < ctx
        blk = tl.load(bt_ptr + kpos // PAGE, mask=k_ok, other=0).to(tl.int64)
        base = blk * stride_kb + (kpos % PAGE) * stride_ks + kvh * stride_kh
        km = k_ok[None, :] & d_ok[:, None]
        k_lo = tl.load(k_ptr + base[None, :] + d[:, None], mask=km, other=0.0)
        k_hi = tl.load(k_ptr + base[None, :] + HALF + d[:, None], mask=km, other=0.0)
        if IEEE:  # float32 models: exact products, no TF32 rounding
            s = tl.dot(q_lo, k_lo, input_precision="ieee") + tl.dot(q_hi, k_hi, input_precision="ieee")
        else:
            s = tl.dot(q_lo, k_lo) + tl.dot(q_hi, k_hi)
        s = tl.where(k_ok[None, :], s * scale_log2, float("-inf"))
        v = tl.load(v_ptr + base[:, None] + dd[None, :], mask=k_ok[:, None] & dd_ok[None, :], other=0.0)
        m_i, l_i, acc = _softmax_update(s, v, m_i, l_i, acc, IEEE)

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_safe[:, None]
    om = r_ok[:, None] & dd_ok[None, :]
    if NUM_SPLITS == 1:
        tl.store(out_ptr + head[:, None] * D + dd[None, :], o.to(dt), mask=om)
    else:
        tl.store(opart_ptr + split * HQ * D + head[:, None] * D + dd[None, :], o, mask=om)
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log2(l_safe))  # log2 domain
        tl.store(lse_ptr + split * HQ + head, lse, mask=r_ok)
        # The last of this KV head's splits to arrive merges them all (the "last block" reduction of
        # CUDA's threadFenceReduction sample): one launch instead of a merge kernel after it.
        tl.debug_barrier()  # every thread's stores precede the release below
        arrived = tl.atomic_add(arrivals_ptr + kvh, 1, sem="acq_rel", scope="gpu")
        if arrived == NUM_SPLITS - 1:
            tl.debug_barrier()
            ss = tl.arange(0, S_PAD)
            s_ok = ss < NUM_SPLITS
            for g in tl.static_range(GROUP):
                h = kvh * GROUP + g
                # .cg: read the other programs' results from L2, never from a stale L1 line
                ls = tl.load(lse_ptr + ss * HQ + h, mask=s_ok, other=float("-inf"), cache_modifier=".cg")
                w = tl.where(s_ok & (ls > float("-inf")), tl.exp2(ls - tl.max(ls, 0)), 0.0)
                ps = tl.load(
                    opart_ptr + ss[:, None] * HQ * D + h * D + dd[None, :],
                    mask=s_ok[:, None] & dd_ok[None, :],
                    other=0.0,
                    cache_modifier=".cg",
                )
                oh = tl.sum(ps * w[:, None], 0) / tl.sum(w, 0)
                tl.store(out_ptr + h * D + dd, oh.to(dt), mask=dd_ok)
            tl.atomic_xchg(arrivals_ptr + kvh, 0)  # ready for the next launch


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class TritonPagedAttention:
    """Attention backend running `_paged_attn_kernel` (plus the merge kernel when split)."""

    name = "triton"

    def __init__(
        self,
        device: torch.device,
        num_heads: int,
        num_kv_heads: int,
        prefill_block_m: int = 128,
        split_block: int = 64,
    ) -> None:
        self.device = device
        self.group = num_heads // num_kv_heads
        self.kv_heads = num_kv_heads
        self.num_sms = torch.cuda.get_device_properties(device).multi_processor_count
        self.prefill_block_m = prefill_block_m
        # The split heuristic's key granularity (mirrored by backends/calibrated.py SPLIT_BLOCK_N):
        # a split reads at least 2 * split_block keys; splits past a short context read none.
        self.split_block = split_block
        # decode_one_from_parts: per-KV-head arrival counters (each launch leaves them at zero) and
        # split scratch, kept across launches so a captured graph needs no memset
        self._arrivals = torch.zeros(num_kv_heads, dtype=torch.int32, device=device)
        self._one_scratch: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    # -- launch planning ---------------------------------------------------------------------
    def tile_rows(self, decode_only: bool) -> tuple[int, int]:
        """(BLOCK_M, BLOCK_Q) for a step: decode packs only the head group (>= 16 rows for tl.dot)."""
        gp = _pow2(self.group)
        block_m = max(16, gp) if decode_only else max(self.prefill_block_m, gp)
        return block_m, block_m // gp

    def launch_config(self, decode: bool, programs: int, dtype: torch.dtype) -> tuple[int, int, int]:
        """(BLOCK_N, num_warps, num_stages) of a launch of `programs` (tile, KV head) programs.

        A step lasts as long as its longest program, so wide key tiles with a deep pipeline (128 keys,
        3 stages) pay wherever few programs or one long context set the pace; with many programs the
        launch is bandwidth-bound and narrower tiles keep more of them resident. Measured per layer on
        an H200 with Llama-8B heads (a sweep of tile width x warps x stages; 128/3 against 64/2): one
        4k decode among 31 short ones 148 -> 86 us, batch-1 decode at 16k 32 -> 27 us, a 512-token
        chunk over a 16k prefix 707 -> 594 us, 1,800 prefill tokens beside 200 decodes 667 -> 615 us,
        but 64 uniform 640-token decodes 46.6 -> 48.8 us, hence 64/2 for decode launches of at least
        two programs per SM. float32 (test models) keeps 64/2: 128-key fp32 tiles overflow shared memory.
        """
        warps = 4 if decode else 8
        if dtype == torch.float32 or (decode and programs >= 2 * self.num_sms):
            return 64, warps, 2
        return 128, warps, 3

    def num_splits(self, num_tiles: int, max_context: int) -> int:
        """Split the key range when the grid would leave SMs idle and contexts are long enough."""
        programs = num_tiles * self.kv_heads
        if programs >= self.num_sms or max_context <= 2 * self.split_block:
            return 1
        by_sms = -(-2 * self.num_sms // programs)
        by_len = -(-max_context // (2 * self.split_block))
        return max(1, min(by_sms, by_len, 32))

    def prepare(self, meta: AttentionMetadata) -> None:
        """Tile -> (sequence, first query) maps and the split count, once per step for all layers.

        In a step with prefill tokens, one-token sequences (decodes) get tiles of their own
        ("dtile_seq"), launched separately with decode-sized tiles: in a prefill tile of 128 rows
        a decode fills the 4 rows of its head group, so it read its KV at the prefill tile's cost
        per key (~77 ns a context token over a layer stack on an H200, against ~30 ns in the decode
        launch), and its programs, dispatched before the chunk's, delayed the chunk's long ones."""
        decode = meta.is_decode_only
        _, block_q = self.tile_rows(decode)
        seqs: list[int] = []
        starts: list[int] = []
        singles: list[int] = []
        for b, n in enumerate(meta.q_lens):
            if n == 1 and not decode:
                singles.append(b)
                continue
            for q0 in range(0, n, block_q):
                seqs.append(b)
                starts.append(q0)
        meta.extra["tile_seq"] = torch.tensor(seqs, dtype=torch.int32, device=self.device)
        meta.extra["tile_q"] = torch.tensor(starts, dtype=torch.int32, device=self.device)
        if not decode:
            meta.extra["dtile_seq"] = torch.tensor(singles, dtype=torch.int32, device=self.device)
            meta.extra["dtile_q"] = torch.zeros(len(singles), dtype=torch.int32, device=self.device)
        meta.num_splits = self.num_splits(len(seqs), meta.max_context_len) if decode else 1

    # -- the call ----------------------------------------------------------------------------
    def decode_one_from_parts(
        self,
        part: torch.Tensor,
        num_heads: int,
        head_dim: int,
        positions: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """Attention of one decode token straight from the split-K qkv partial sums [S, (Hq + 2 Hk) * D]
        (engine/triton_splitk.py): each program sums and rotates its q heads, the program that reads
        the new token writes its rotated k and v to the pools first, and the last split of a KV head
        to finish merges the splits. One launch for what is otherwise rotary + KV write, attention and
        merge, three latency-bound launches a layer at batch 1. Returns [1, Hq, D] in `dtype`."""
        s, width = part.shape
        kv_heads = k_cache.shape[2]
        if width != (num_heads + 2 * kv_heads) * head_dim or meta.num_seqs != 1 or not meta.is_decode_only:
            raise ValueError(
                f"decode_one_from_parts: one decode token of {num_heads}+2x{kv_heads} heads of {head_dim}, "
                f"got {width} columns for {meta.num_seqs} sequences"
            )
        if k_cache.stride() != v_cache.stride() or k_cache.stride(3) != 1:
            raise ValueError("decode_one_from_parts needs K and V pools of one contiguous layout")
        splits = meta.num_splits
        key = (splits, num_heads, head_dim)
        if key not in self._one_scratch:  # allocated by the warm-up step, before graph capture
            self._one_scratch[key] = (
                torch.empty((splits, num_heads, head_dim), dtype=torch.float32, device=part.device),
                torch.empty((splits, num_heads), dtype=torch.float32, device=part.device),
            )
        opart, lse = self._one_scratch[key]
        out = torch.empty((1, num_heads, head_dim), dtype=dtype, device=part.device)
        block_m, _ = self.tile_rows(True)
        block_n, num_warps, num_stages = self.launch_config(True, kv_heads, dtype)
        half = head_dim // 2
        _decode_one_parts_kernel[(kv_heads, splits)](
            part, positions, meta.slot_mapping, cos, sin, k_cache, v_cache, meta.block_tables,
            out, opart, lse, self._arrivals,
            part.stride(0), cos.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            scale * math.log2(math.e),
            HQ=num_heads, GROUP=self.group, BLOCK_M=block_m, D=head_dim, D_PAD=_pow2(head_dim), HALF=half,
            HALF_PAD=max(16, _pow2(half)), S=s, PAGE=k_cache.shape[1], BLOCK_N=block_n, NUM_SPLITS=splits,
            S_PAD=_pow2(splits), IEEE=dtype == torch.float32, num_warps=num_warps, num_stages=num_stages,
        )  # fmt: skip
        return out


    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        return self.attend(q, k_cache, v_cache, meta, scale)

    def attend(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        launch: tuple[int, int, int] | None = None,
    ) -> torch.Tensor:
        """`launch`: (BLOCK_N, num_warps, num_stages) instead of `launch_config`'s (benchmarks)."""
        num_heads = q.shape[1]
        kv_heads = k_cache.shape[2]
        group = num_heads // kv_heads
        if group != self.group or kv_heads != self.kv_heads:
            raise ValueError(
                f"backend built for {self.kv_heads} KV heads x group {self.group}, "
                f"called with {kv_heads} x {group}"
            )
        if "tile_seq" not in meta.extra:
            raise RuntimeError("TritonPagedAttention.prepare(meta) must run before the forward pass")
        out = torch.empty_like(q)
        decode = meta.is_decode_only
        tiles = (meta.extra["tile_seq"], meta.extra["tile_q"])
        if decode:
            self._launch(q, k_cache, v_cache, out, meta, scale, tiles, True, meta.num_splits, launch)
            return out
        if tiles[0].numel():
            self._launch(q, k_cache, v_cache, out, meta, scale, tiles, False, 1, launch)
        singles = (meta.extra["dtile_seq"], meta.extra["dtile_q"])
        if singles[0].numel():
            self._launch(q, k_cache, v_cache, out, meta, scale, singles, True, 1, launch)
        return out

    def _launch(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        out: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        tiles: tuple[torch.Tensor, torch.Tensor],
        decode_tiles: bool,
        num_splits: int,
        launch: tuple[int, int, int] | None,
    ) -> None:
        """One kernel launch over `tiles` (sequence, first query) with decode- or prefill-sized
        tiles, writing its rows of `out` (through split parts and the merge when split)."""
        num_heads, head_dim = q.shape[1], q.shape[2]
        kv_heads, page = self.kv_heads, k_cache.shape[1]
        block_m, block_q = self.tile_rows(decode_tiles)
        tile_seq, tile_q = tiles
        n_tiles = tile_seq.shape[0]
        if num_splits > 1:
            part = torch.empty((num_splits, *q.shape), dtype=torch.float32, device=q.device)
            lse = torch.empty((num_splits, q.shape[0], num_heads), dtype=torch.float32, device=q.device)
        else:
            part, lse = out, out  # unused by the kernel when NUM_SPLITS == 1
        d_pad = _pow2(head_dim)
        programs = n_tiles * kv_heads
        block_n, num_warps, num_stages = launch or self.launch_config(decode_tiles, programs, q.dtype)
        _paged_attn_kernel[(n_tiles, kv_heads, num_splits)](
            q,
            k_cache,
            v_cache,
            out,
            part,
            lse,
            meta.cu_seqlens_q,
            meta.context_lens,
            meta.block_tables,
            tile_seq,
            tile_q,
            scale * math.log2(math.e),
            q.stride(0),
            q.stride(1),
            k_cache.stride(0),
            k_cache.stride(1),
            k_cache.stride(2),
            v_cache.stride(0),
            v_cache.stride(1),
            v_cache.stride(2),
            out.stride(0),
            out.stride(1),
            part.stride(0) if num_splits > 1 else 0,
            part.stride(1) if num_splits > 1 else 0,
            part.stride(2) if num_splits > 1 else 0,
            lse.stride(0) if num_splits > 1 else 0,
            lse.stride(1) if num_splits > 1 else 0,
            meta.block_tables.stride(0),
            GROUP=self.group,
            GROUP_PAD=_pow2(self.group),
            BLOCK_Q=block_q,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            HEAD_DIM=head_dim,
            D_PAD=d_pad,
            PAGE=page,
            NUM_SPLITS=num_splits,
            IEEE=q.dtype == torch.float32,
            num_warps=num_warps,
            num_stages=num_stages,
        )
        if num_splits > 1:
            _merge_splits_kernel[(q.shape[0], num_heads)](
                part,
                lse,
                out,
                part.stride(0),
                part.stride(1),
                part.stride(2),
                lse.stride(0),
                lse.stride(1),
                out.stride(0),
                out.stride(1),
                NUM_SPLITS=num_splits,
                S_PAD=_pow2(num_splits),
                HEAD_DIM=head_dim,
                D_PAD=d_pad,
            )
