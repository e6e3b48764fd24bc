"""CUDA graphs for steps that carry prefill tokens, one per bucketed token count.

An eager step launches a few hundred kernels from Python (cuBLAS GEMMs, Triton norms, rotary and
attention); on the H200 hosts we measured, that costs 10 to 25 ms of CPU whatever the step's size,
more than the GPU needs for the whole step below roughly 500 to 1,000 tokens, and its length moves
with the host's CPU state (after a wait on the device it is slower). A captured graph replays the
same work for well under a millisecond of CPU, so prefill and chunked-prefill steps become
device-bound like decode steps (vLLM V1 captures such graphs piecewise around attention; here the
paged attention launch itself is captured, because its grid can be padded).

A step of T new tokens over S sequences runs in the smallest bucket >= T. Every input lives in
one packed int32 device buffer filled by one host-to-device copy: token ids, positions and KV
slots (padded tokens: id 0, position 0, the KV cache's scratch slot), each token's source row in
the runner's `sampled` buffer where its id is still on the device (-1 elsewhere; see
engine/cuda_graphs.py), the sequences' row offsets
and context lengths (unused sequence rows: no rows, no context), their block tables, the
attention launches' tile -> (sequence, first query) maps (prefill tiles for the chunks, and
decode-sized tiles for one-token sequences, launched apart as TritonPagedAttention.prepare plans
them) and the rows to sample. Each attention grid is the bucket's worst-case tile count; padding
tiles point at an unused sequence row, so their programs load nothing and store nothing. Padded
token rows flow through the GEMMs (rows are independent) and are never sampled. The graph ends
with the LM head on the sampled rows (as many as the bucket allows sequences) and the greedy argmax,
written to `sampled`.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.attention import AttentionMetadata
from engine.cuda_graphs import fastest_buckets, pending_source, replay_greedy, replay_ms, resolve_ids
from engine.kv_cache import KVCache
from engine.model import DecoderModel
from engine.sampling import greedy_ids
from policies.scheduling.batch import ScheduledBatch
from policies.sequence import PENDING, Sequence


def step_buckets(max_tokens: int) -> list[int]:
    """16, 32, 64, 128, then steps of 64 up to 512 and of 128 beyond, up to and including
    max_tokens' bucket: padding a step costs device time once GEMMs are compute-bound (past a few
    hundred tokens), so buckets are fine there; at most 128 padded tokens is ~3 ms on an H200."""
    sizes = [16, 32, 64, 128]
    while sizes[-1] < max_tokens:
        sizes.append(sizes[-1] + (64 if sizes[-1] < 512 else 128))
    return [s for s in sizes if s < max_tokens] + [next(s for s in sizes if s >= max_tokens)]


class StepGraphs:
    def __init__(
        self,
        model: DecoderModel,
        kv: KVCache,
        backend,
        max_model_len: int,
        max_tokens: int,
        max_seqs: int,
        capture: bool = True,
        sampled: torch.Tensor | None = None,
    ) -> None:
        self.model = model
        self.backend = backend
        self.buckets = step_buckets(max_tokens)
        big = self.buckets[-1]
        self.big = big
        self.block_size = bs = kv.block_size
        self.max_model_len = max_model_len
        self.max_blocks = -(-max_model_len // bs)
        self.scratch_block = kv.scratch_block
        self.scratch_slot = kv.scratch_block * bs
        self.block_q = backend.tile_rows(False)[1]
        self.max_seqs = min(max_seqs, big)
        s = self.max_seqs
        self.seqs_of = {t: min(s, t) for t in self.buckets}  # sequences (and sampled rows) per bucket
        self.tiles_of = {t: min(t, -(-t // self.block_q) + self.seqs_of[t]) for t in self.buckets}
        tiles = self.tiles_of[big]
        # Packed layout: ids | positions | slots | sources (big each) | cu (s + 2) | ctx (s + 1) | tile seq |
        # tile q (tiles each) | one-token tile seq | their tile q (s each, the latter always 0) |
        # sample rows (s) | block tables ((s + 1) x max_blocks).
        off = {}
        n = 0
        for name, size in (
            ("ids", big), ("pos", big), ("slots", big), ("src", big), ("cu", s + 2), ("ctx", s + 1),
            ("tseq", tiles), ("tq", tiles), ("dseq", s), ("dq", s), ("rows", s),
            ("tab", (s + 1) * self.max_blocks),
        ):  # fmt: skip
            off[name] = (n, n + size)
            n += size
        self._off = off
        dev = kv.k.device
        pin = dev.type == "cuda"
        init = torch.zeros(n, dtype=torch.int32)
        self.buf = init.to(dev, copy=True)
        self._host = [init.clone().pin_memory() if pin else init.clone() for _ in range(2)]
        self._np = [h.numpy() for h in self._host]
        self._flip = 0
        if sampled is None:
            sampled = torch.zeros(s, dtype=torch.int64, device=dev)
        if sampled.shape[0] < s:
            raise ValueError(f"StepGraphs: sampled buffer has {sampled.shape[0]} rows, needs {s}")
        self.sampled = sampled
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        if capture:
            self._capture()

    def _view(self, name: str) -> torch.Tensor:
        a, b = self._off[name]
        return self.buf[a:b]

    def _meta(self, t: int) -> AttentionMetadata:
        s = self.max_seqs
        tiles = self.tiles_of[t]
        return AttentionMetadata(
            slot_mapping=self._view("slots")[:t],
            cu_seqlens_q=self._view("cu"),
            context_lens=self._view("ctx"),
            block_tables=self._view("tab").view(s + 1, self.max_blocks),
            q_lens=[t],  # host lists: only the launch plan reads them, and it is fixed here
            context_lens_host=[t],
            block_tables_host=[[self.scratch_block]],
            max_q_len=max(t, 2),  # not a decode-only step: prefill tiles, no split-KV
            max_context_len=self.max_model_len,
            num_splits=1,
            extra={
                "tile_seq": self._view("tseq")[:tiles],
                "tile_q": self._view("tq")[:tiles],
                "dtile_seq": self._view("dseq")[: self.seqs_of[t]],
                "dtile_q": self._view("dq")[: self.seqs_of[t]],
            },
        )

    def _forward(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = resolve_ids(self._view("ids")[:t], self._view("src")[:t], self.sampled)
        hidden = self.model(ids, self._view("pos")[:t], self._meta(t))
        n = self.seqs_of[t]
        logits = self.model.compute_logits(hidden.index_select(0, self._view("rows")[:n]))
        return logits, greedy_ids(logits, self.sampled[:n])

    @torch.inference_mode()
    def _capture(self) -> None:
        # Inputs as padding everywhere: every token writes the scratch slot, no sequence has rows.
        h = self._np[0]
        h[:] = 0
        a, b = self._off["slots"]
        h[a:b] = self.scratch_slot
        a, b = self._off["src"]
        h[a:b] = -1
        a, b = self._off["tab"]
        h[a:b] = self.scratch_block
        for name in ("tseq", "dseq"):
            a, b = self._off[name]
            h[a:b] = self.max_seqs  # the always-unused last sequence row
        self.buf.copy_(self._host[0])
        pool = None
        for t in reversed(self.buckets):  # largest first, so smaller graphs reuse its memory pool
            self._forward(t)  # warm up (Triton compiles here)
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                logits, tokens = self._forward(t)
            pool = g.pool()
            self.graphs[t] = (g, logits, tokens)
        torch.cuda.synchronize()
        # Replayed on the padding inputs: the GEMMs run at the bucket's size, attention reads nothing.
        self.replay_ms = {t: replay_ms(self.graphs[t][0], reps=10) for t in self.buckets}
        self.buckets = fastest_buckets(self.replay_ms)
        for t in set(self.graphs) - set(self.buckets):
            del self.graphs[t]

    # -- per step ------------------------------------------------------------------------------
    def bucket(self, batch: ScheduledBatch) -> int | None:
        """The bucket a step runs in, or None when it does not fit one."""
        t = sum(batch.num_new_tokens)
        if t > self.big or len(batch.seqs) > self.max_seqs:
            return None
        return next(b for b in self.buckets if b >= t)

    def load(
        self, batch: ScheduledBatch, t: int, sources: dict[int, int] | None = None
    ) -> tuple[list[int], list[Sequence]]:
        """Stage the step's inputs for bucket `t` and send them; returns (sampled rows in the
        packed token order, their sequences), both in batch order. A PENDING input id (only a
        sequence's last) comes from row sources[its id] of `sampled`, as in DecodeGraphs.load."""
        self._flip ^= 1
        h = self._np[self._flip]
        o = self._off
        bs = self.block_size
        maxb = self.max_blocks
        s = self.max_seqs
        ids = h[o["ids"][0] : o["ids"][1]]
        pos = h[o["pos"][0] : o["pos"][1]]
        slots = h[o["slots"][0] : o["slots"][1]]
        src = h[o["src"][0] : o["src"][1]]
        src[:t] = -1
        cu = h[o["cu"][0] : o["cu"][1]]
        ctx = h[o["ctx"][0] : o["ctx"][1]]
        tseq = h[o["tseq"][0] : o["tseq"][1]]
        tq = h[o["tq"][0] : o["tq"][1]]
        dseq = h[o["dseq"][0] : o["dseq"][1]]
        rows = h[o["rows"][0] : o["rows"][1]]
        tab = h[o["tab"][0] : o["tab"][1]].reshape(s + 1, maxb)
        row = 0
        tile = 0
        single = 0
        sample_rows: list[int] = []
        sample_seqs: list[Sequence] = []
        bq = self.block_q
        for i, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens, strict=True)):
            c = seq.num_computed_tokens
            toks = seq.token_ids
            bt = seq.block_table
            if toks is None or n < 1 or c + n > min(len(toks), self.max_model_len) or len(bt) * bs < c + n:
                raise ValueError(
                    f"sequence {seq.id}: cannot compute {n} tokens from {c} (token ids: "
                    f"{None if toks is None else len(toks)}, max_model_len={self.max_model_len}, "
                    f"KV blocks: {len(bt)} of {bs})"
                )
            ids[row : row + n] = toks[c : c + n]
            if c + n == len(toks) and toks[-1] == PENDING:
                src[row + n - 1] = pending_source(seq, sources)
                ids[row + n - 1] = 0
            p = np.arange(c, c + n)
            pos[row : row + n] = p
            nb = min(len(bt), maxb)
            table = np.asarray(bt[:nb], dtype=np.int32)
            slots[row : row + n] = table[p // bs] * bs + p % bs
            tab[i, :nb] = table
            cu[i] = row
            ctx[i] = c + n
            if n == 1:  # launched with decode-sized tiles (TritonPagedAttention.prepare)
                dseq[single] = i
                single += 1
            else:
                k = -(-n // bq)
                tseq[tile : tile + k] = i
                tq[tile : tile + k] = np.arange(0, n, bq)
                tile += k
            row += n
            if c + n == len(toks):
                sample_rows.append(row - 1)
                sample_seqs.append(seq)
        nseq = len(batch.seqs)
        # Padding: tokens write the scratch slot; sequence rows past the batch have no rows and no
        # context; padding tiles point at the last (never used) sequence row.
        ids[row:t] = 0
        pos[row:t] = 0
        slots[row:t] = self.scratch_slot
        cu[nseq:] = row
        ctx[nseq:] = 0
        tseq[tile : self.tiles_of[t]] = s
        tq[tile : self.tiles_of[t]] = 0
        dseq[single : self.seqs_of[t]] = s
        ns = len(sample_rows)
        rows[:ns] = sample_rows
        rows[ns : self.seqs_of[t]] = 0
        n_used = o["tab"][0] + nseq * maxb  # everything up to the batch's block tables
        self.buf[:n_used].copy_(self._host[self._flip][:n_used], non_blocking=True)
        return sample_rows, sample_seqs

    def replay(self, t: int, n: int) -> list[int]:
        """Run bucket `t` on the staged inputs; returns the greedy ids of the first n sampled rows."""
        return replay_greedy(self.graphs[t], n)

    def logits(self, t: int) -> torch.Tensor:
        """The logits [sampled rows, vocab] of the last replay of bucket `t` (valid until the next)."""
        return self.graphs[t][1]
