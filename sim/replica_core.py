"""The replica step, shared by the simulator and the real engine.

One replica = one scheduler + one KV block manager + the queues they act on. Each iteration
is `schedule()` (the policy decides), then something executes the batch (a cost model in the
simulator, the model runner in the engine), then `complete()` advances the bookkeeping:
computed tokens, sampled tokens, first-token and finish times, ITLs, freed KV.

`decode_run_limit()` / `complete_decodes()` are the bulk form of `complete()` for k
identical pure-decode iterations in a row; the simulator uses them to jump over stretches in
which nothing arrives or finishes, and `tests/test_simulator.py` checks that the timeline is
the same as stepping one iteration at a time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from operator import itemgetter, sub

import numpy as np

from backends.cost_model import BatchShape
from policies.kv.block_manager import BlockManager
from policies.scheduling.base import Scheduler
from policies.scheduling.batch import ScheduledBatch
from policies.sequence import PENDING, Sequence, Status
from sim.results import RunRecorder

_NEVER = 1 << 62
_first = itemgetter(0)


@dataclass(slots=True)
class GroupPlan:
    """The next iterations of one pipeline micro-batch group (its members keep being scheduled
    together) if nothing arrives: iteration 0 is the one already scheduled; iterations
    0 .. m-1 (m = len(counts)) are spelled out because some member computes more than its last
    sampled token; from m on every member decodes, and iteration i >= m has decode context
    `ctx0 + n * i` and longest context `max0 + i` (n members), which keeps the cost model's
    decode line exact (integers, then its own arithmetic)."""

    seqs: list[Sequence]
    counts: list[list[int]]  # token counts of iterations 0 .. m-1
    shapes: list[BatchShape]  # their shapes
    work: list[int]  # tokens computed by iterations 0 .. j, for j < m
    finish: int  # a member reaches its last token with this iteration (_NEVER: not planned)
    stop: int  # the first iteration the plan cannot vouch for (_NEVER: none)
    ctx0: int
    max0: int
    kv: list[tuple[int, int]]  # per member (c, capacity): it holds at most c + j + 1 tokens at iteration j
    # Only when every member reaches the decode phase (finish >= m): per member, its decode
    # context at iteration i >= m is dctx[i] + i, and it reaches its last token with iteration
    # finishes[i]. They let a run drop finished members and go on with the others (their sums
    # and maximum are the line of the smaller group), as stepping would schedule them.
    dctx: list[int] = field(default_factory=list)
    finishes: list[int] = field(default_factory=list)
    # Per member, the first iteration in which it computes only its last sampled token (0: it
    # decodes throughout; -1: not within the spelled-out iterations). Empty when m == 0.
    since: list[int] = field(default_factory=list)
    prefilling: list[int] = field(default_factory=list)  # members i with since[i] != 0

    @property
    def m(self) -> int:
        return len(self.counts)


@dataclass(slots=True)
class StepInFlight:
    """An iteration between `ReplicaCore.advance` and `ReplicaCore.settle`."""

    batch: ScheduledBatch
    start: float
    sampled: list[Sequence]  # sequences that sample a token in it, in batch order
    index: list[int]  # engine: where each one's PENDING id sits in its token ids (else empty)
    finishing: list[Sequence]  # those reaching their output length (released already)
    row: tuple[int, int, int] | None  # (prefill sequences, prefill tokens, decode tokens) when recording


class ReplicaCore:
    def __init__(
        self,
        replica_id: int,
        scheduler: Scheduler,
        kv: BlockManager,
        recorder: RunRecorder,
        max_model_len: int | None = None,
    ) -> None:
        self.id = replica_id
        self.scheduler = scheduler
        self.kv = kv
        self.recorder = recorder
        self.max_model_len = max_model_len
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_outstanding = 0
        self._work_target = 0  # sum over unfinished of (prompt + output - 1)
        self._work_done = 0  # sum over unfinished of num_computed_tokens
        self.on_arrival: Callable[[], None] | None = None  # the simulator's wake-up hook
        # Decode runs in progress (simulator): (iteration end times, ascending; sequences
        # decoding), so that load seen mid-run counts the iterations already done.
        self._runs: list[tuple[Seq[float], int, Seq[int]]] = []
        self.num_iterations = 0
        self._finished_ahead = 0  # finishes inside a run, counted out of num_outstanding early

    # -- load, as routers see it ------------------------------------------------------
    def outstanding_work(self, now: float) -> int:
        work = self._work_target - self._work_done
        for ends, n, explicit in self._runs:
            j = bisect_left(ends, now)  # iterations of the run completed before now
            m = len(explicit)
            if j <= m:
                work -= explicit[j - 1] if j else 0
            else:
                work -= (explicit[-1] if m else 0) + n * (j - m)
        return work

    def begin_decode_run(self, batch: ScheduledBatch, ends: Seq[float], explicit_work: Seq[int] = ()) -> None:
        """A run of iterations of `batch`'s sequences ending at `ends`: the first
        len(explicit_work) compute explicit_work[j] tokens in all up to iteration j, the rest
        one token per sequence."""
        self._runs.append((ends, len(batch.seqs), explicit_work))

    def begin_run_segment(self, ends: Seq[float], n: int) -> None:
        """A later stretch of a run: `n` sequences decoding one token each per iteration ending
        at `ends` (the members of a micro-batch group left after some of them finished)."""
        self._runs.append((ends, n, ()))

    def finish_ahead(self, n: int) -> None:
        """`n` sequences of a run in progress finish before the next arrival: routers that
        count requests see them gone then, though their bookkeeping (`complete_decodes`)
        is applied when the run ends (`end_decode_runs` takes the count back first)."""
        self.num_outstanding -= n
        self._finished_ahead += n

    def end_decode_runs(self) -> None:
        self._runs.clear()
        self.num_outstanding += self._finished_ahead
        self._finished_ahead = 0

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # -- arrivals ---------------------------------------------------------------------
    def add(self, seq: Sequence, now: float) -> bool:
        """Queue a new request, or reject it now when it could never be served here."""
        seq.replica = self.id
        req = seq.request
        total = req.prompt_len + req.output_len
        reason = ""
        if self.max_model_len is not None and total > self.max_model_len:
            reason = f"prompt+output {total} > max_model_len {self.max_model_len}"
        elif -(-total // self.kv.block_size) > self.kv.num_blocks:
            reason = f"needs {-(-total // self.kv.block_size)} KV blocks > {self.kv.num_blocks} in the pool"
        if reason:
            seq.status = Status.REJECTED
            seq.reject_reason = reason
            self.recorder.reject(seq, reason)
            return False
        self.scheduler.enqueue(self.waiting, seq)
        self.num_outstanding += 1
        self._work_target += total - 1
        if self.on_arrival is not None:
            self.on_arrival()
        return True

    # -- one iteration -----------------------------------------------------------------
    def schedule(self, now: float) -> ScheduledBatch:
        batch = self.scheduler.schedule(self.waiting, self.running, self.kv, now)
        self._work_done += batch.cached_tokens - batch.lost_tokens
        return batch

    @staticmethod
    def shape(batch: ScheduledBatch) -> BatchShape:
        prefill: list[tuple[int, int]] = []
        nd = 0
        ctx = 0
        mx = 0
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            c = seq.num_computed_tokens
            o = seq.num_output_tokens
            if n == 1 and o > 0 and c + 1 == seq.request.prompt_len + o:
                nd += 1
                ctx += c + 1
                if c >= mx:
                    mx = c + 1
            else:
                prefill.append((n, c))
        return BatchShape(prefill, nd, ctx, mx)

    def complete(
        self, batch: ScheduledBatch, start: float, end: float, tokens: list[int] | None = None
    ) -> list[Sequence]:
        """Apply an executed iteration. `tokens` (engine) holds one sampled id per sequence
        that reached its last token, in batch order; the simulator passes None."""
        return self.settle(self.advance(batch, start), end, tokens)

    def advance(self, batch: ScheduledBatch, start: float) -> StepInFlight:
        """The part of an iteration's bookkeeping that does not need its sampled ids: computed
        and output counts, a PENDING id per sampling sequence (engine), blocks filled with known
        content published, and the sequences that reach their output length taken out of the
        running set with their KV freed, so that the next iteration can be scheduled while this
        one runs (the engine's overlapped loop; `complete` is `settle(advance(...))`).
        The freed blocks may go to the next iteration at once: it runs after this one on the
        device, so its KV writes land after this one's."""
        kv = self.kv
        seqs = batch.seqs
        counts = batch.num_new_tokens
        row = None
        if self.recorder.record_iterations:  # the iteration record's split, as `shape` classifies
            n_prefill = prefill_tokens = decode_tokens = 0
            for seq, n in zip(seqs, counts):
                if n == 1 and seq.num_output_tokens > 0 and seq.num_computed_tokens + 1 == seq.num_tokens:
                    decode_tokens += 1
                else:
                    n_prefill += 1
                    prefill_tokens += n
            row = (n_prefill, prefill_tokens, decode_tokens)
        sampled: list[Sequence] = []
        index: list[int] = []
        finishing: list[Sequence] = []
        caching = kv.enable_prefix_caching
        bs = kv.block_size
        for seq, n in zip(seqs, counts):
            computed = seq.num_computed_tokens + n
            seq.num_computed_tokens = computed
            if caching and computed // bs > seq.num_published_blocks and not seq.num_pending:
                kv.cache_blocks(seq)  # a block was filled (with PENDING ids: when they arrive)
            out = seq.num_output_tokens
            if computed < seq.request.prompt_len + out:
                continue  # a prefill chunk that has not reached the end of the prompt yet
            out += 1
            seq.num_output_tokens = out
            toks = seq.token_ids
            if toks is not None:
                index.append(len(toks))
                toks.append(PENDING)
                seq.num_pending += 1
            sampled.append(seq)
            if out >= seq.request.output_len:
                finishing.append(seq)
        self._work_done += sum(counts)
        for seq in finishing:
            self._release(seq)
        return StepInFlight(batch, start, sampled, index, finishing, row)

    def settle(self, step: StepInFlight, end: float, tokens: list[int] | None = None) -> list[Sequence]:
        """The rest of an iteration's bookkeeping, once its sampled ids are back (`tokens`, one per
        sampling sequence in batch order; None in the simulator): token ids, first-token, ITL and
        finish times at `end`, stop ids. A sequence that samples a stop id while its next
        iteration is already in flight (the overlapped loop) finishes here; that iteration's
        token for it is dropped, and its counts go back to this step's."""
        gaps: list[float] = []  # inter-token latencies, added to the histogram in one call
        finished: list[Sequence] = []
        sampled = step.sampled
        fin = step.finishing
        if tokens is not None and len(tokens) != len(sampled):
            raise ValueError(
                f"replica {self.id}: executor returned {len(tokens)} tokens, expected {len(sampled)}"
            )
        for i, seq in enumerate(sampled):
            if seq.finish >= 0:
                continue  # it stopped at an earlier iteration, settled already
            stop = False
            if tokens is not None:
                tok = tokens[i]
                toks = seq.token_ids
                if toks is not None:
                    toks[step.index[i]] = tok
                    seq.num_pending -= 1
                    if seq.num_pending == 0 and self.kv.enable_prefix_caching:
                        self.kv.cache_blocks(seq)  # blocks whose last id was pending
                stop = tok in seq.stop_token_ids
            if seq.first_token < 0:
                seq.first_token = end
            else:
                gaps.append(end - seq.last_token)
            seq.last_token = end
            if fin and seq.status is Status.FINISHED and seq in fin:  # its length (`advance` released it)
                finished.append(seq)
            elif stop:
                if step.index:
                    self._take_back(seq, step.index[i])
                if seq.status is not Status.FINISHED:  # else a later `advance` released it already
                    self._release(seq)
                finished.append(seq)
        if gaps:
            self.recorder.itl.add_ones(gaps)
        for seq in finished:
            self._finish(seq, end)
        self.num_iterations += 1
        if step.row is not None:
            kv = self.kv
            start = step.start
            self.recorder.iteration(
                (
                    self.id, start, end, 1, end - start, end - start, len(step.batch.seqs), *step.row,
                    kv.num_used_blocks, kv.num_blocks, len(step.batch.preempted),
                )
            )
        return finished

    def _take_back(self, seq: Sequence, index: int) -> None:
        """Undo the iterations that `advance` applied to `seq` after the one whose sampled id sits
        at token_ids[index]: it stopped there."""
        toks = seq.token_ids
        extra = len(toks) - index - 1  # ids sampled (pending) by later iterations
        if extra <= 0:
            return
        del toks[index + 1 :]
        seq.num_pending -= extra
        seq.num_output_tokens -= extra
        if seq.num_computed_tokens > index:  # still running (not preempted since): back to this step's
            self._work_done -= seq.num_computed_tokens - index
            seq.num_computed_tokens = index

    def can_complete_planned(self, plan: GroupPlan, k: int) -> bool:
        """Whether `complete_planned` may apply plan iterations 0 .. k-1: nobody finishes in
        the spelled-out ones among them (a finish frees blocks at its own iteration), no blocks
        get published (prefix caching publishes per iteration, in member order) and no
        iteration rows are kept."""
        return (
            plan.finish >= min(k, len(plan.counts))
            and not self.kv.enable_prefix_caching
            and not self.recorder.record_iterations
        )

    def complete_planned(self, plan: GroupPlan, k: int, ends: Seq[float]) -> None:
        """Apply the first k iterations of a planned group with spelled-out ones (plan.m > 0),
        iteration j ending at ends[j], as `complete` for each spelled-out one and then
        `complete_decodes` for the decodes after them would (`can_complete_planned` must hold;
        the caller has taken the blocks). The pipelined runs commit a prefill chunk riding
        along with decodes this way: members decoding throughout move by k tokens and share
        the iterations' spacing as their ITLs, so only the members still prefilling are
        followed iteration by iteration."""
        seqs = plan.seqs
        since = plan.since
        counts = plan.counts
        kx = min(k, len(counts))  # spelled-out iterations among them (plan.m)
        end = ends[k - 1]
        gaps: list[float] = []  # inter-token latencies that are not a shared spacing
        nd = 0  # members decoding throughout
        finished = []
        for i, s in enumerate(seqs):
            if since[i] == 0:
                s.num_computed_tokens += k
                out = s.num_output_tokens + k
                gaps.append(ends[0] - s.last_token)
                s.last_token = end
                nd += 1
            else:
                c = s.num_computed_tokens
                out = s.num_output_tokens
                prompt_len = s.request.prompt_len
                for j in range(kx):
                    c += counts[j][i]
                    if c >= prompt_len + out:  # this iteration samples a token
                        out += 1
                        e = ends[j]
                        if s.first_token < 0:
                            s.first_token = e
                        else:
                            gaps.append(e - s.last_token)
                        s.last_token = e
                if k > kx:  # decodes from kx on: every member decodes there
                    c += k - kx
                    out += k - kx
                    gaps.append(ends[kx] - s.last_token)
                    s.last_token = end
                s.num_computed_tokens = c
            s.num_output_tokens = out
            if out >= s.request.output_len:
                finished.append(s)
        itl = self.recorder.itl
        if gaps:
            itl.add_ones(gaps)
        if k > 1 and nd:
            itl.add_many(list(map(sub, ends[1:k], ends)), nd)  # ends[j + 1] - ends[j]
        if k > kx + 1 and nd < len(seqs):  # the others' spacing in the decodes after kx
            itl.add_many(list(map(sub, ends[kx + 1 : k], ends[kx:])), len(seqs) - nd)
        self._work_done += plan.work[kx - 1] + (k - kx) * len(seqs)
        for s in finished:
            self._release(s)
            self._finish(s, end)
        self.num_iterations += k

    def _release(self, seq: Sequence) -> None:
        """Take a finishing sequence out of the queues and free its KV (its times come later)."""
        try:
            self.running.remove(seq)
        except ValueError:  # preempted while its last iteration was in flight
            self.waiting.remove(seq)
        seq.status = Status.FINISHED
        self.kv.free(seq)

    def _finish(self, seq: Sequence, now: float) -> None:
        """Record a finish at `now`; `_release` must have run (directly, or through `advance`)."""
        seq.finish = now
        self.num_outstanding -= 1
        total = seq.request.prompt_len + seq.request.output_len - 1
        self._work_target -= total
        self._work_done -= seq.num_computed_tokens
        self.recorder.finish(seq)

    # -- bulk decode (simulator fast path) ------------------------------------------
    def is_steady_decode(self, batch: ScheduledBatch) -> bool:
        """True when the next iterations will repeat this batch until something finishes,
        arrives or runs out of KV: every running sequence decodes and nobody waits."""
        return (
            self.scheduler.repeats_steady_decode
            and not self.waiting
            and not batch.preempted
            and len(batch.seqs) == len(self.running)
            and all(n == 1 for n in batch.num_new_tokens)
            and all(s.num_output_tokens > 0 and s.num_computed_tokens + 1 == s.num_tokens for s in batch.seqs)
        )

    def decode_run_limit(self, batch: ScheduledBatch) -> int:
        """How many identical decode iterations may run back to back, this one included:
        up to the first finish, and no further than the free KV blocks last."""
        k = min(s.request.output_len - s.num_output_tokens for s in batch.seqs)
        return self.kv_run_limit(batch.seqs, k) if k > 1 else 1

    def kv_run_limit(self, seqs: list[Sequence], k_max: int) -> int:
        """Largest k <= k_max such that every sequence in `seqs` can hold c + k tokens, where
        c is its computed count before its current (already allocated) iteration."""
        bs = self.kv.block_size
        return self.kv_limit([(s.num_computed_tokens, len(s.block_table) * bs) for s in seqs], k_max)

    def kv_limit(self, cs: list[tuple[int, int]], k_max: int) -> int:
        """Largest k <= k_max (at least 1) such that, for every (c, capacity) in `cs`, c + k
        tokens fit in the free blocks beyond the capacity each one holds already."""
        n = len(cs)
        if self.kv_room_bound(sum(map(_first, cs)) + n * k_max, n):
            return k_max
        return self.kv_search(cs, k_max)

    def kv_room_bound(self, tokens: int, n: int) -> bool:
        """A sufficient test, at C speed, that n sequences holding `tokens` tokens in all fit:
        each needs at most ceil(t / bs) <= t / bs + 1 blocks more (it holds >= 0), so all of them
        at most tokens // bs + n. A large pool passes it and skips the exact count."""
        return tokens // self.kv.block_size + n <= self.kv.num_free_blocks

    def kv_search(self, cs: list[tuple[int, int]], k_max: int) -> int:
        """`kv_limit` without its quick bound: the exact count at k_max, then a bisection."""
        bs = self.kv.block_size
        free = self.kv.num_free_blocks

        def blocks_needed(k: int) -> int:
            need = 0
            for c, cap in cs:
                over = c + k - cap
                if over > 0:
                    need += -(-over // bs)
            return need

        if blocks_needed(k_max) <= free:
            return k_max
        lo, hi = 1, k_max  # blocks_needed(lo) <= free < blocks_needed(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if blocks_needed(mid) <= free:
                lo = mid
            else:
                hi = mid
        return lo

    def plan_group(self, batch: ScheduledBatch, max_explicit: int = 4096) -> GroupPlan:
        """Follow `batch`'s members through the iterations the scheduler promises (see
        `Scheduler.plans_steady_batches`) until all of them decode, without changing any state.

        A member that decodes already stays a decoder until the plan ends (nothing else
        happens to it with nobody waiting), so its line of the plan (decode context, finish,
        KV envelope) is its state now, read in one pass; only members computing more than
        their last sampled token are followed iteration by iteration (`_plan_prefills`). The
        common case, every member decoding, ends with the pass."""
        seqs = batch.seqs
        counts = batch.num_new_tokens
        bs = self.kv.block_size
        kv: list[tuple[int, int]] = []  # per member (c, capacity), see GroupPlan.kv
        dctx: list[int] = []  # per member: decode context at iteration 0 (its token count)
        fins: list[int] = []  # per member: the iteration with which it reaches its last token
        for s, k in zip(seqs, counts):  # the leading decoders
            c = s.num_computed_tokens
            o = s.num_output_tokens
            r = s.request
            d = c + 1  # the context it attends to when it decodes
            if k != 1 or o == 0 or d != r.prompt_len + o:  # no decode, as `shape` classifies
                break
            kv.append((c, len(s.block_table) * bs))
            dctx.append(d)
            fins.append(r.output_len - o - 1)
        else:  # all decode: the line's sums are the builtins' (one C pass each, no branch per member)
            ctx0, max0, finish = sum(dctx), max(dctx, default=0), min(fins, default=_NEVER)
            return GroupPlan(seqs, [], [], [], finish, _NEVER, ctx0, max0, kv, dctx, fins)
        pf: list[int] = []  # members that compute more than their last sampled token now
        for i in range(len(kv), len(seqs)):
            s = seqs[i]
            c = s.num_computed_tokens
            o = s.num_output_tokens
            r = s.request
            kv.append((c, len(s.block_table) * bs))
            if counts[i] == 1 and o > 0 and c + 1 == r.prompt_len + o:
                dctx.append(c + 1)
                fins.append(r.output_len - o - 1)
            else:
                pf.append(i)
                dctx.append(0)
                fins.append(_NEVER)
        return self._plan_prefills(batch, max_explicit, kv, dctx, fins, pf)

    def _plan_prefills(
        self,
        batch: ScheduledBatch,
        max_explicit: int,
        kv: list[tuple[int, int]],
        dctx: list[int],
        fins: list[int],
        pf: list[int],
    ) -> GroupPlan:
        """`plan_group` for a group with members `pf` computing more than their last sampled
        token: iterations are spelled out until all of them decode. Decoders are kept as
        aggregates: per iteration each adds one token to its context, which moves their sum by
        their count and their maximum by one. A member of pf's cs/outs/nts are its state before
        iteration since[i] (the current one while it is in pf); `kv`, `dctx` and `fins` hold
        the decoders' lines already and get the others' here."""
        seqs = batch.seqs
        n = len(seqs)
        counts = batch.num_new_tokens
        pf0 = list(pf)  # pf shrinks as members join the decoders
        cs = [0] * n
        outs = [0] * n
        nts = [0] * n  # per member: its token count
        olens = [0] * n
        k_eff = [0] * n  # per member of pf: its c of GroupPlan.kv (a decoder's is its state's)
        since = [0] * n  # -1 while a member is in pf
        for i in pf:
            s = seqs[i]
            cs[i] = k_eff[i] = s.num_computed_tokens
            o = outs[i] = s.num_output_tokens
            nts[i] = s.request.prompt_len + o
            olens[i] = s.request.output_len
            since[i] = -1
        nd_d = n - len(pf)  # decoders: count, sum and maximum of their token counts now
        ctx_d = sum(dctx)
        mx_d = max(dctx)
        fin_d = min(fins)  # the first iteration in which a decoder reaches its last token
        left = [1] * n
        plan_counts: list[list[int]] = []
        shapes: list[BatchShape] = []
        work: list[int] = []
        finish = stop = _NEVER
        j = 0
        done = 0
        steady_counts = self.scheduler.steady_counts
        while True:
            tokens = sum(counts)
            ptok = 0
            for i in pf:
                ptok += counts[i]
            if tokens - ptok != nd_d:  # counts are >= 1 here, so this says each decoder gets 1
                raise ValueError(f"replica {self.id}: scheduler {self.scheduler.name!r} gave a decoding "
                                 f"sequence more than one token in a steady batch: {counts}")
            if tokens == n:  # counts are >= 1 here, so only all-ones can be pure
                for i in pf:
                    if outs[i] == 0 or cs[i] + 1 != nts[i]:
                        break
                else:
                    break
            if j >= max_explicit:
                stop = j
                break
            prefill: list[tuple[int, int]] = []
            nd = nd_d
            ctx = ctx_d
            mx = mx_d
            joined: list[int] = []
            for i in pf:
                k = counts[i]
                c = cs[i]
                num_tokens = nts[i]
                if k == 1 and c + 1 == num_tokens and outs[i] > 0:  # as `shape` classifies
                    nd += 1
                    ctx += num_tokens
                    if c >= mx:
                        mx = num_tokens
                else:
                    prefill.append((k, c))
                c += k
                cs[i] = c
                if c - j - 1 > k_eff[i]:
                    k_eff[i] = c - j - 1
                if c == num_tokens:
                    o = outs[i] + 1
                    outs[i] = o
                    num_tokens += 1
                    nts[i] = num_tokens
                    if o >= olens[i]:
                        if finish == _NEVER:
                            finish = j
                    else:
                        joined.append(i)
                left[i] = num_tokens - c
            if fin_d == j and finish == _NEVER:
                finish = j
            done += tokens
            plan_counts.append(list(counts))
            shapes.append(BatchShape(prefill, nd, ctx, mx))
            work.append(done)
            j += 1
            if finish != _NEVER:
                break
            if nd_d:
                ctx_d += nd_d
                mx_d += 1
            if joined:  # members that sampled their first token decode from iteration j on
                for i in joined:
                    pf.remove(i)
                    since[i] = j
                    nt = nts[i]
                    nd_d += 1
                    ctx_d += nt
                    if nt > mx_d:
                        mx_d = nt
                    f = j + olens[i] - outs[i] - 1
                    if f < fin_d:
                        fin_d = f
            counts = steady_counts(list(left))
            if 0 in counts:
                stop = j
                break
        ctx0 = max0 = 0
        if finish == _NEVER and stop == _NEVER:  # every member decodes from iteration m = j on
            m = j
            for i in pf0:  # the decoders' lines are their state at iteration 0 already
                d = m - since[i] if since[i] >= 0 else 0  # iterations decoded since its state
                c = cs[i] + d
                f = m + olens[i] - outs[i] - d - 1
                if c - m > k_eff[i]:
                    k_eff[i] = c - m
                dctx[i] = c + 1 - m
                fins[i] = f
            ctx0 = sum(dctx)
            max0 = max(dctx)
            finish = min(fins)
        else:
            dctx = []
            fins = []
        for i in pf0:
            kv[i] = (k_eff[i], kv[i][1])
        return GroupPlan(seqs, plan_counts, shapes, work, finish, stop, ctx0, max0, kv, dctx, fins, since,
                         pf0)

    def complete_decodes(
        self, seqs: list[Sequence], starts: Seq[float], ends: Seq[float], allocated: bool = False
    ) -> None:
        """Apply k = len(ends) decode iterations of the same sequences `seqs`, iteration i running
        from starts[i] to ends[i] (back to back with one stage; spaced out with pipeline stages).
        `allocated`: the caller has already given every sequence its blocks for all k (a
        pipelined run allocates in its own order, to keep the peak that stepping records)."""
        kv = self.kv
        k = len(ends)
        end = float(ends[-1])
        itl = self.recorder.itl
        B = len(seqs)
        first = float(ends[0])
        itl.add_ones([first - s.last_token for s in seqs])
        if k > 1:
            if isinstance(ends, np.ndarray):
                itl.add_many(np.diff(ends), B)
            else:
                itl.add_many(list(map(sub, ends[1:], ends)), B)  # ends[i + 1] - ends[i]
        finished = []
        allocate = kv.allocate if k > 1 and not allocated else None
        for s in seqs:
            if allocate is not None and not allocate(s, k):  # room for c + k tokens (iteration 1 had c + 1)
                raise AssertionError("decode run exceeded the KV limit it was planned with")
            s.num_computed_tokens += k
            out = s.num_output_tokens + k
            s.num_output_tokens = out
            s.last_token = end
            if out >= s.request.output_len:
                finished.append(s)
        self._work_done += k * B
        if kv.enable_prefix_caching:
            for s in seqs:
                kv.cache_blocks(s)
        for s in finished:
            self._release(s)
            self._finish(s, end)
        self.num_iterations += k
        if self.recorder.record_iterations:
            self.recorder.iteration(
                (
                    self.id, float(starts[0]), end, k, first - float(starts[0]), end - float(starts[-1]),
                    B, 0, 0, B, kv.num_used_blocks, kv.num_blocks, 0,
                )
            )

    def drain_unfinished(self) -> None:
        for s in list(self.running) + list(self.waiting):
            self.recorder.unfinished(s)
