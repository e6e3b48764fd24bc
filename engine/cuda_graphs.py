"""CUDA graphs for decode-only steps, one per bucketed batch size, from token ids to sampled ids.

A decode step of a large model is a few hundred small launches and a small model's is nothing
but launches; replaying a captured graph removes their CPU cost (the approach of vLLM and
gpt-fast). Each graph covers the whole step: the decoder, the LM head and the greedy argmax,
so what crosses the bus per step is one host-to-device copy of the step's inputs and one
device-to-host copy of the sampled ids (as in nano-vllm, where only the sampler's output comes
back). Non-greedy rows sample on the host side from the graph's logits.

Inputs live in one packed int32 device buffer, [ids | positions | slots | context lens | sources]
(each `max bucket` long) followed by the block tables [max bucket, max blocks]; the host fills a
pinned mirror and sends the prefix the step uses in a single non-blocking copy. Two mirrors
alternate so the host never writes a buffer a copy may still be reading. The greedy ids land in
the runner's `sampled` buffer, shared by every kind of step; a row whose input id the host does not
have yet (it was sampled by the step still running: the engine's overlapped loop) names its row of
`sampled` in `sources` (-1 elsewhere), and the graph's first op takes the id from there.

Graphs need fixed shapes and addresses: a batch of b sequences runs in the smallest bucket >= b
with the remaining rows padded; they read and write only the KV cache's scratch block and their
outputs are dropped. The attention launch inside the graph uses the worst-case split count for
its bucket, which is safe because each program derives its key range from the context length
it reads. After capture every graph is replayed on its capture inputs, and a bucket that a larger
one beats by more than 5% is dropped (`fastest_buckets`; GEMM speed is not monotone in the row
count), so its batches pad up.

At batch 1 every projection is a bandwidth-bound GEMV, and cuBLAS leaves bandwidth unused on the
narrower ones, so the batch-1 graph has variants: "cublas"; "split", where the projections that
the timing plan gave to the split-K kernel of engine/triton_splitk.py use it; "split-attn", the
split for qkv and o only; and "fused" (engine/triton_gemv.py, each norm fused into its GEMV; slower
than cuBLAS on an H200, kept as an option). With gemv="auto" the first three (those the plan makes
distinct) are captured, replayed and timed, and the fastest is kept.
"""

from __future__ import annotations

import torch

from engine.attention import AttentionMetadata
from engine.kv_cache import KVCache
from engine.model import DecoderModel
from engine.sampling import greedy_ids
from policies.sequence import PENDING, Sequence

GEMV_MODES = ("auto", "cublas", "split", "fused")


def decode_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then multiples of 16 (of 32 past 128) up to and including max_batch's bucket."""
    sizes = [1, 2, 4, 8]
    s = 16
    while sizes[-1] < max_batch:
        sizes.append(s)
        s += 16 if s < 128 else 32
    return [b for b in sizes if b < max_batch] + [next(b for b in sizes if b >= max_batch)]


def replay_ms(g: torch.cuda.CUDAGraph, reps: int = 20) -> float:
    """Mean device time of one replay of a captured graph, after one untimed replay."""
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        g.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


def fastest_buckets(ms: dict[int, float], margin: float = 0.05) -> list[int]:
    """The buckets steps may run in, given each captured graph's replay time (on padding inputs, so
    the GEMMs at the bucket's size dominate): all of them but those that a larger bucket beats by
    more than `margin`, whose steps pad up to it instead. GEMM speed is not monotone in the row
    count: on an H200, Llama-8B's 448-token step graph replays in 15.3 ms against 12.7 ms for the
    512-token one (cuBLAS's kernel choice for that shape). The largest bucket always stays."""
    keep: list[int] = []
    best = float("inf")
    for t in sorted(ms, reverse=True):
        if ms[t] <= best * (1.0 + margin):
            keep.append(t)
        best = min(best, ms[t])
    return sorted(keep)


def replay_greedy(entry: tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor], n: int) -> list[int]:
    """Replay a captured step (graph, logits, greedy ids) and return its first n greedy ids, with a
    device-wide wait (tests and probes; the runner overlaps this, see ModelRunner.launch)."""
    g, _, tokens = entry
    g.replay()
    return tokens[:n].tolist()


def pending_source(seq: Sequence, sources: dict[int, int] | None) -> int:
    """The row of `sampled` that holds `seq`'s PENDING input id."""
    row = None if sources is None else sources.get(seq.id)
    if row is None:
        raise ValueError(
            f"sequence {seq.id}: its input id is pending, but the step in flight did not sample it "
            f"(only the last launched step's ids can be pending)"
        )
    return row


def resolve_ids(ids: torch.Tensor, src: torch.Tensor, sampled: torch.Tensor) -> torch.Tensor:
    """Input ids with the rows that name a source (src >= 0) taken from `sampled`, on the device:
    the ids that the previous step sampled and the host has not seen yet. Capturable (no host
    sync); src = -1 indexes sampled's last row, which `where` then ignores."""
    return torch.where(src < 0, ids, sampled[src])


class DecodeGraphs:
    def __init__(
        self,
        model: DecoderModel,
        kv: KVCache,
        backend,
        max_model_len: int,
        max_batch: int,
        gemv: str = "auto",
        sampled: torch.Tensor | None = None,
    ) -> None:
        if gemv not in GEMV_MODES:
            raise ValueError(f"DecodeGraphs gemv must be one of {GEMV_MODES}, got {gemv!r}")
        self.model = model
        self.kv = kv
        self.backend = backend
        dev = kv.k.device
        self.stage_inputs(decode_buckets(max_batch), kv.block_size, kv.scratch_block, max_model_len, dev)
        # The greedy ids of every step: the runner's buffer, shared with its other paths.
        if sampled is None:
            sampled = torch.zeros(self.big, dtype=torch.int64, device=dev)
        if sampled.shape[0] < self.big:
            raise ValueError(f"DecodeGraphs: sampled buffer has {sampled.shape[0]} rows, needs {self.big}")
        self.sampled = sampled
        self.cu = torch.arange(self.big + 1, dtype=torch.int32, device=dev)
        self.tile_seq = torch.arange(self.big, dtype=torch.int32, device=dev)
        self.tile_q = torch.zeros(self.big, dtype=torch.int32, device=dev)
        # bucket -> (graph, logits [bucket, vocab], argmax ids [bucket])
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self.info: dict = {}  # choices and timings made while capturing, for benchmark records
        self._capture(gemv)

    def stage_inputs(
        self,
        buckets: list[int],
        block_size: int,
        scratch_block: int,
        max_model_len: int,
        device: torch.device,
        pin: bool = True,
    ) -> None:
        """Allocate the packed input buffer and its host mirrors (pin=False: CPU tests of `load`)."""
        self._set_buckets(buckets)
        big = self.big
        bs = block_size
        self.block_size = bs
        self.max_model_len = max_model_len
        self.max_blocks = -(-max_model_len // bs)
        self.scratch_block = scratch_block
        self.scratch_slot = scratch_block * bs
        self._hdr = 5 * big
        total = self._hdr + big * self.max_blocks
        init = torch.empty(total, dtype=torch.int32)
        init[: 2 * big] = 0  # token 0 at position 0 ...
        init[2 * big : 3 * big] = self.scratch_slot  # ... written to the scratch block ...
        init[3 * big : 4 * big] = 1  # ... with a context of one key ...
        init[4 * big : 5 * big] = -1  # ... and the id the host wrote
        init[self._hdr :] = scratch_block
        self.buf = init.to(device, copy=True)
        self._host = [init.clone().pin_memory() if pin else init.clone() for _ in range(2)]
        self._np = [h.numpy() for h in self._host]
        self._tab = [a[self._hdr :].reshape(big, self.max_blocks) for a in self._np]
        # Per host buffer and row: the block table list last written there and how much of it. A
        # running sequence's table only grows (the block manager appends; freeing gives the sequence
        # a new list), so when a row holds the same list again only its new tail is written.
        self._rows: list[list[tuple[list[int], int] | None]] = [[None] * big for _ in range(2)]
        self._flip = 0
        self.input_ids = self.buf[0:big]
        self.positions = self.buf[big : 2 * big]
        self.slots = self.buf[2 * big : 3 * big]
        self.ctx = self.buf[3 * big : 4 * big]
        self.src = self.buf[4 * big : 5 * big]
        self.tables = self.buf[self._hdr :].view(big, self.max_blocks)

    def _set_buckets(self, buckets: list[int]) -> None:
        self.buckets = buckets
        self.big = buckets[-1]
        self.bucket_of = [0] * (self.big + 1)  # batch size -> bucket
        for b in range(1, self.big + 1):
            self.bucket_of[b] = next(s for s in buckets if s >= b)

    def _meta(self, b: int, split: bool = False) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slots[:b],
            cu_seqlens_q=self.cu[: b + 1],
            context_lens=self.ctx[:b],
            block_tables=self.tables[:b],
            q_lens=[1] * b,
            context_lens_host=[1] * b,
            block_tables_host=[[self.scratch_block]] * b,
            max_q_len=1,
            max_context_len=self.max_model_len,
            num_splits=self.backend.num_splits(b, self.max_model_len),
            extra={"tile_seq": self.tile_seq[:b], "tile_q": self.tile_q[:b]},
            split_gemv=split,
        )

    def _forward(self, b: int, variant: str) -> tuple[torch.Tensor, torch.Tensor]:
        meta = self._meta(b, split=variant.startswith("split"))
        ids, pos = resolve_ids(self.input_ids[:b], self.src[:b], self.sampled), self.positions[:b]
        if variant == "fused":
            logits = self.model.decode_logits_gemv(ids, pos, meta)
        else:
            if variant == "split":
                self.model.apply_decode_split()
            elif variant == "split-attn":
                self.model.apply_decode_split(("qkv", "o"))
            logits = self.model.compute_logits(self.model(ids, pos, meta))
        return logits, greedy_ids(logits, self.sampled[:b])

    def _batch1_variants(self, gemv: str) -> list[str]:
        """Graph variants to capture at batch 1 (timing picks one), tuning their kernels first."""
        if gemv == "cublas":
            return ["cublas"]
        if gemv == "fused":
            self.info["gemv_tuning_ms"] = self.model.tune_decode_gemv()
            return ["fused"]
        plan = self.model.plan_decode_split(force=gemv == "split")
        self.info["split_plan"] = plan
        if gemv == "split":
            return ["split"]
        chosen = {k for k, v in plan.items() if v["chosen"] != "cublas"}
        variants = ["cublas"]
        if chosen:
            variants.append("split")
        if chosen & {"qkv", "o"} and chosen - {"qkv", "o"}:
            variants.append("split-attn")
        return variants

    @torch.inference_mode()
    def _capture(self, gemv: str) -> None:
        pool = None
        for b in reversed(self.buckets):  # largest first, so smaller graphs reuse its memory pool
            variants = self._batch1_variants(gemv) if b == 1 else ["cublas"]
            captured = []
            for variant in variants:
                self._forward(b, variant)  # warm up (Triton compiles here)
                torch.cuda.synchronize()
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, pool=pool):
                    logits, tokens = self._forward(b, variant)
                pool = g.pool()
                captured.append((variant, g, logits, tokens))
            if b == 1:
                times = {v: replay_ms(g) for v, g, _, _ in captured}
                self.info["batch1_graph_ms_ctx1"] = times
                variant, g, logits, tokens = min(captured, key=lambda c: times[c[0]])
                self.info["batch1_variant"] = variant
            else:
                _, g, logits, tokens = captured[0]
            self.graphs[b] = (g, logits, tokens)
        self.model.apply_decode_split(())  # eager steps never split; leave the modules clean
        torch.cuda.synchronize()
        # Replayed on the capture inputs (context 1): the projections at the bucket's rows dominate.
        ms = {b: replay_ms(self.graphs[b][0], reps=10) for b in self.buckets}
        self.info["bucket_replay_ms_ctx1"] = ms
        self._set_buckets(fastest_buckets(ms))
        for b in set(self.graphs) - set(self.buckets):
            del self.graphs[b]

    # -- per step ------------------------------------------------------------------------------
    def accepts(self, num_new_tokens: list[int]) -> bool:
        """A step runs here when every sequence computes exactly one token and a bucket fits it."""
        n = len(num_new_tokens)
        return 0 < n <= self.big and sum(num_new_tokens) == n

    def load(
        self, seqs: list[Sequence], sources: dict[int, int] | None = None
    ) -> tuple[int, list[int] | None]:
        """Stage one decode step's inputs and send them to the device. A sequence whose input id is
        PENDING takes it from row sources[its id] of `sampled` (the step in flight sampled it).

        Returns (bucket, rows that sample), rows None when every row samples (the usual case).
        """
        b = len(seqs)
        size = self.bucket_of[b]
        self._flip ^= 1
        h = self._np[self._flip]
        tab = self._tab[self._flip]
        rows = self._rows[self._flip]
        bs = self.block_size
        maxb = self.max_blocks
        limit = self.max_model_len
        ids: list[int] = []
        pos: list[int] = []
        slots: list[int] = []
        src = h[4 * self.big : 4 * self.big + b]
        src[:] = -1
        sample: list[int] | None = None
        width = 1
        for i, seq in enumerate(seqs):
            c = seq.num_computed_tokens
            toks = seq.token_ids
            bt = seq.block_table
            if toks is None or c >= len(toks) or c >= limit or c // bs >= len(bt):
                raise ValueError(
                    f"sequence {seq.id}: cannot decode position {c} (token ids: "
                    f"{None if toks is None else len(toks)}, max_model_len={limit}, "
                    f"KV blocks: {len(bt)} of {bs})"
                )
            tok = toks[c]
            if tok == PENDING:
                src[i] = pending_source(seq, sources)
                tok = 0
            ids.append(tok)
            pos.append(c)
            slots.append(bt[c // bs] * bs + c % bs)
            nb = len(bt)
            if nb > maxb:  # blocks past max_model_len are never read
                nb = maxb
            held = rows[i]
            if held is not None and held[0] is bt and held[1] <= nb:
                if held[1] < nb:
                    tab[i, held[1] : nb] = bt[held[1] : nb]
            else:
                tab[i, :nb] = bt if nb == len(bt) else bt[:nb]
            rows[i] = (bt, nb)
            if nb > width:
                width = nb
            if c + 1 != len(toks):  # a one-token prefill chunk that does not end its prompt
                if sample is None:
                    sample = list(range(i))
            elif sample is not None:
                sample.append(i)
        big = self.big
        h[0:b] = ids
        h[big : big + b] = pos
        h[2 * big : 2 * big + b] = slots
        ctx = h[3 * big : 3 * big + b]
        ctx[:] = pos
        ctx += 1
        if size > b:  # padding rows: token 0 at position 0, reading and writing the scratch block
            h[b:size] = 0
            h[big + b : big + size] = 0
            h[2 * big + b : 2 * big + size] = self.scratch_slot
            h[3 * big + b : 3 * big + size] = 1
            h[4 * big + b : 4 * big + size] = -1
            tab[b:size, 0] = self.scratch_block
            rows[b:size] = [None] * (size - b)
        n = self._hdr + (size - 1) * maxb + width
        self.buf[:n].copy_(self._host[self._flip][:n], non_blocking=True)
        return size, sample

    def logits(self, size: int) -> torch.Tensor:
        """The logits [bucket, vocab] of the last replay of bucket `size` (valid until the next)."""
        return self.graphs[size][1]
