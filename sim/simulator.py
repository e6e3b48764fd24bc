"""SimPy trace replay: an arrival process, a router, and one process per replica.

Each replica process is a loop over iterations (`ReplicaCore` does the bookkeeping, a cost
model says how long an iteration takes), in the style of SimPy's own examples. Two things
keep it fast without changing the timeline:
- one event per iteration, never per token;
- a steady stretch of pure-decode iterations (nobody waiting, nothing finishing) is a single
  timeout whose length comes from the cost model's exact decode line; an arrival during the
  stretch cuts it at the end of the iteration in progress, as stepping would.
A replica with pipeline stages keeps up to `pp` micro-batches in flight; stage contention is
a flow-shop recurrence over per-stage free times (the model Vidur and Sarathi-Serve use).
There the stretch is planned per micro-batch group, and an arrival, or a finish that stepping
would schedule after, joins it as a new group where stepping would schedule the newcomer, so
most requests cost one re-planned group instead of a new stretch.
"""

from __future__ import annotations

import time
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable
from operator import attrgetter, itemgetter

import numpy as np
import simpy

from backends.cost_model import COST_MODELS, BatchShape, CostModel, ParallelLayout, abcg
from policies.kv.block_manager import BlockManager
from policies.routing.base import ROUTERS, Router
from policies.scheduling.base import SCHEDULERS, SchedulerConfig
from policies.scheduling.batch import ScheduledBatch
from policies.sequence import Sequence
from sim.config import SimConfig
from sim.replica_core import GroupPlan, ReplicaCore, StepInFlight
from sim.results import RunRecorder, RunResult
from traces.schema import Trace


def build_cost_model(cfg: SimConfig) -> CostModel:
    from backends import analytic  # noqa: F401  (registers "analytic")

    if cfg.cost_model != "analytic":  # the calibrated model pulls in scipy (0.2 s): only when asked for
        from backends import calibrated  # noqa: F401  (registers "calibrated")
    from backends.accelerators import get_accelerator
    from backends.models import get_model

    kw = {}
    if cfg.cost_model == "calibrated":
        if not cfg.profile:
            raise ValueError("cost_model 'calibrated' needs a profile file (config field 'profile')")
        kw["profile"] = cfg.profile
    return COST_MODELS.create(
        cfg.cost_model,
        get_model(cfg.model),
        get_accelerator(cfg.accelerator),
        ParallelLayout(cfg.tp, cfg.pp),
        dtype=cfg.dtype,
        **kw,
    )


def kv_blocks_for(cfg: SimConfig) -> int:
    if cfg.num_kv_blocks is not None:
        return cfg.num_kv_blocks
    from backends.accelerators import get_accelerator
    from backends.analytic import max_kv_blocks
    from backends.models import get_model

    return max_kv_blocks(
        get_model(cfg.model),
        get_accelerator(cfg.accelerator),
        ParallelLayout(cfg.tp, cfg.pp),
        block_size=cfg.block_size,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
    )


class Simulation:
    def __init__(self, trace: Trace, cfg: SimConfig, cost: CostModel | None = None) -> None:
        from policies.routing import least_work, round_robin  # noqa: F401  (register routers)
        from policies.scheduling import fcfs  # noqa: F401  (registers schedulers)

        self.trace = trace
        self.cfg = cfg
        self.cost = cost or build_cost_model(cfg)
        self.num_kv_blocks = kv_blocks_for(cfg)
        self.env = simpy.Environment()
        self.recorder = RunRecorder(len(trace), record_iterations=cfg.record_iterations)
        sched_cfg = SchedulerConfig(cfg.max_num_batched_tokens, cfg.max_num_seqs, cfg.enable_chunked_prefill)
        self.router: Router = ROUTERS.create(cfg.router)
        self.replicas = [
            ReplicaCore(
                i,
                SCHEDULERS.create(cfg.scheduler, sched_cfg),
                BlockManager(self.num_kv_blocks, cfg.block_size, cfg.enable_prefix_caching),
                self.recorder,
                cfg.max_model_len,
            )
            for i in range(cfg.num_replicas)
        ]
        self.routed = 0
        self._arrival_times: list[float] = trace.arrival.tolist()
        # Pipelined runs paused at the next arrival, per replica: (advance, result, wake event).
        self._paused: dict[int, tuple] = {}
        self._lines: dict[int, tuple[float, float, float]] = {}
        # Per replica with a jumped run in progress, when the config has a horizon: what commits
        # the run's iterations completed by a time, for `run` to call if the clock stops inside it.
        self._at_horizon: dict[int, Callable[[float], None]] = {}
        # Pipelined runs take in the batch scheduled where they would be cut (`absorb` in
        # `_pipelined_decode_run`) when the scheduler plans steady batches; not with the prefix
        # cache (a block published by a group in flight could serve the batch) nor with the
        # iteration log (whose rows are appended as iterations are committed).
        sched = self.replicas[0].scheduler
        self._absorbing = (
            sched.repeats_steady_decode and getattr(sched, "plans_steady_batches", False)
            and not cfg.enable_prefix_caching and not cfg.record_iterations
        )

    def _decode_line(self, n: int) -> tuple[float, float, float, float]:
        """The cost model's decode line for n sequences as (a, b, c, g), memoized (a pure function of
        n by the protocol; the pipelined run asks for it once per micro-batch)."""
        line = self._lines.get(n)
        if line is None:
            line = self._lines[n] = abcg(self.cost.decode_line(n))
        return line

    # -- processes ---------------------------------------------------------------------
    def _arrivals(self):
        env = self.env
        replicas = self.replicas
        route = self.router.route
        paused = self._paused
        for i, (t, req) in enumerate(zip(self._arrival_times, self.trace)):
            if t > env.now:
                yield env.timeout(t - env.now)
            r = route(req, replicas, env.now)
            if replicas[r].add(Sequence(req), env.now) and paused:
                # The arrival woke a run paused there (`add` calls its hook): it is cut, so it
                # is not extended any more (its process drops it from `_paused` too, later).
                paused.pop(r, None)
            self.routed = i + 1
            if paused:
                self._extend_runs()

    def _next_arrival(self) -> float:
        """Arrival time of the next request not routed yet (inf after the last)."""
        i = self.routed
        return self._arrival_times[i] if i < len(self._arrival_times) else float("inf")

    def _extend_runs(self) -> None:
        """After an arrival: paused pipelined runs that it did not cut compute on to the next
        arrival; one that reaches its natural end gets its timer."""
        horizon = self._next_arrival()
        for cid, (advance, result, _ev) in list(self._paused.items()):  # not cut (`_arrivals`)
            if advance(horizon):
                del self._paused[cid]
                core = self.replicas[cid]
                self.env.timeout(result[0] - self.env.now).callbacks.append(core.on_arrival)

    def _wait_for_arrival(self, core: ReplicaCore, delay: float | None = None) -> simpy.Event:
        """An event that fires at the next arrival to `core` or, when `delay` is given, after
        `delay`, whichever comes first (one event to wait on, cheaper than a SimPy condition).
        Its value is True when an arrival woke it."""
        ev = self.env.event()

        def wake(timer: simpy.Event | None = None) -> None:
            if not ev.triggered:
                ev.succeed(timer is None)

        core.on_arrival = wake
        if delay is not None:
            self.env.timeout(delay).callbacks.append(wake)
        return ev

    def _replica(self, core: ReplicaCore):
        if self.cfg.async_scheduling != "off":
            yield from self._overlapped_replica(core)
            return
        if self.cfg.pp > 1:
            yield from self._pipelined_replica(core)
            return
        env = self.env
        cost = self.cost
        jump = self.cfg.jump
        while True:
            if not core.has_work:
                yield self._wait_for_arrival(core)
                core.on_arrival = None
                continue
            start = env.now
            batch = core.schedule(start)
            if batch.is_empty:
                # Nothing fits (a queue blocked on KV with nothing running cannot happen: add()
                # rejects requests larger than the pool), so only new arrivals can help.
                yield self._wait_for_arrival(core)
                core.on_arrival = None
                continue
            if jump and core.is_steady_decode(batch):
                k = core.decode_run_limit(batch)
                if k > 1:
                    yield from self._decode_run(core, batch, k, start)
                    continue
            dur = cost.stage_time(core.shape(batch))
            yield env.timeout(dur)
            core.complete(batch, start, start + dur)

    def _overlapped_replica(self, core: ReplicaCore):
        """The engine's overlapped loop (async scheduling, engine/llm_engine.py): at each loop top the
        replica schedules on the state the step in flight will leave (`ReplicaCore.advance`),
        launches, waits for the step in flight and settles it: its tokens go out then, after this
        launch. So a request that arrives while step k runs joins step k+2, and the host's work
        hides under the device's (`CostModel.overlap_parts`). Stepped one iteration at a time (no
        decode-run jumps)."""
        env = self.env
        parts = self.cost.overlap_parts
        graphs_only = self.cfg.async_scheduling == "graphs"
        unsettled: list[StepInFlight] = []  # advanced, not settled yet (at most two), oldest first
        prev_end: float | None = None  # when the step in flight (if any) ends its device work
        recorder = self.recorder

        def undelivered(_t: float) -> None:
            """The clock stopped before these steps delivered their tokens: the sequences they
            released on reaching their length are out of the queues, so they are reported here."""
            for fl in unsettled:
                for s in fl.finishing:
                    recorder.unfinished(s)

        def settle_at(t: float):
            """Wait until `t`, when the host collects the oldest step in flight, and settle it."""
            if t > env.now:
                yield env.timeout(t - env.now)
            core.settle(unsettled.pop(0), t)

        self._at_horizon[core.id] = undelivered
        while True:
            batch = core.schedule(env.now) if core.has_work else None
            if batch is None or batch.is_empty:
                if prev_end is None:
                    yield self._wait_for_arrival(core)
                    core.on_arrival = None
                    continue
                yield from settle_at(prev_end)
                prev_end = None
                continue
            top = env.now
            lead, launch, device, after, graphed = parts(core.shape(batch))
            unsettled.append(core.advance(batch, top))
            start = top + lead
            if prev_end is not None and not graphed:
                if graphs_only:  # an eager step collects the step in flight first, then launches
                    ids = max(start, prev_end)
                    yield from settle_at(ids)
                    prev_end = None
                    start = ids + after
                else:  # "all": its launch blocks on its first input copy until the step in flight ends
                    start = max(start, prev_end)
            launched = start + launch
            ids = launched  # when the host collects the step in flight (and its tokens go out)
            if prev_end is not None:
                start = max(start, prev_end)
                ids = max(ids, prev_end)
                yield from settle_at(ids)
                ids += after
            prev_end = max(start + device, launched)
            if ids > env.now:
                yield env.timeout(ids - env.now)

    def _decode_run(self, core: ReplicaCore, batch, k: int, start: float):
        """Up to k identical decode iterations as one timeout, cut short by an arrival."""
        env = self.env
        B = len(batch.seqs)
        a, b, c, g = self._decode_line(B)
        ctx0 = sum(s.num_computed_tokens + 1 for s in batch.seqs)
        mx1 = max(s.num_computed_tokens for s in batch.seqs) + 1 if c else 0
        if k <= _SHORT_RUN:
            # Plain floats for short runs (most of them: an arrival comes soon), where numpy's
            # per-call cost dominates; the same operations in the same order as below (numpy's
            # cumsum adds one element at a time), so the same values to the last bit.
            ends: list[float] | np.ndarray = []
            acc = 0.0
            for i in range(k):
                u = b * float(ctx0 + B * i)
                d = a + u
                if c:  # the longest context grows by one token per iteration
                    v = c * float(mx1 + i)
                    d = d + v
                    if g:
                        d = d - g * min(u, v)
                acc += d
                ends.append(start + acc)
            starts = [start, *ends[:-1]]
        else:
            steps = np.arange(k, dtype=np.float64)
            u = b * (ctx0 + B * steps)
            durations = a + u
            if c:  # the longest context grows by one token per iteration
                v = c * (mx1 + steps)
                durations = durations + v
                if g:
                    durations = durations - g * np.minimum(u, v)
            ends = start + np.cumsum(durations)
            starts = np.concatenate(([start], ends[:-1]))
        core.begin_decode_run(batch, ends)
        if self.cfg.horizon is not None:
            self._at_horizon[core.id] = lambda t: self._decode_run_at_horizon(core, batch, starts, ends, t)
        arrived = yield self._wait_for_arrival(core, float(ends[-1]) - start)
        core.on_arrival = None
        self._at_horizon.pop(core.id, None)
        if arrived and env.now < ends[-1]:
            # Iterations ending at or before now are done; the one in progress completes.
            j = bisect_left(ends, env.now)
            k = j + 1
            if ends[j] > env.now:
                yield env.timeout(float(ends[j]) - env.now)
        core.end_decode_runs()
        core.complete_decodes(batch.seqs, starts[:k], ends[:k])

    def _decode_run_at_horizon(self, core: ReplicaCore, batch, starts, ends, t: float) -> None:
        """The clock stopped at `t` (the horizon) inside a `_decode_run`: commit the iterations
        that end before `t`, which stepping completes (SimPy processes the `until` stop before
        any other event at `t`, so one ending exactly at `t` is not), and give the iteration in
        progress its blocks, which stepping took when it scheduled it (after the last row's
        count, as there)."""
        core.end_decode_runs()
        j = bisect_left(ends, t)
        if j:
            core.complete_decodes(batch.seqs, starts[:j], ends[:j])
        if 0 < j < len(ends):
            for s in batch.seqs:
                if not core.kv.allocate(s, 1):
                    raise AssertionError("decode run exceeded the KV limit it was planned with")

    def _pipelined_replica(self, core: ReplicaCore):
        env = self.env
        cost = self.cost
        pp = self.cfg.pp
        jump = self.cfg.jump
        stage_free = [0.0] * pp
        inflight: list[_MicroBatch] = []  # in order of entry into stage 0 (= completion order)
        waiting_ev: list[simpy.Event | None] = [None]  # what the process waits on, if anything

        def finish(mb: _MicroBatch) -> None:
            if mb.cancelled:
                return
            inflight.remove(mb)
            for s in mb.batch.seqs:
                s.in_flight = False
            core.complete(mb.batch, mb.start, mb.end)
            ev = waiting_ev[0]
            if ev is not None and not ev.triggered:
                ev.succeed(False)

        def hold(batch: ScheduledBatch, start: float, end: float, pure_decode: bool) -> _MicroBatch:
            mb = _MicroBatch(batch, start, end, pure_decode)
            for s in batch.seqs:
                s.in_flight = True
            inflight.append(mb)
            return mb

        def due(mb: _MicroBatch) -> None:
            env.timeout(mb.end - env.now).callbacks.append(lambda _e, mb=mb: finish(mb))

        def track(batch: ScheduledBatch, start: float, end: float, pure_decode: bool = True) -> None:
            due(hold(batch, start, end, pure_decode))

        # Micro-batches a run's rebuild left in flight, whose completion is not scheduled yet.
        # Nearly always the loop starts the next run at once (same instant, no yield), which
        # takes them over, so their completion events would only fire as no-ops; they are
        # scheduled (`arm`) only before the process waits or steps, in the order they were
        # tracked and before any other event of this process, at the same instant: the same
        # times, and SimPy orders events of one time as it would have.
        unarmed: list[_MicroBatch] = []

        def track_later(batch: ScheduledBatch, start: float, end: float, pure_decode: bool = True) -> None:
            unarmed.append(hold(batch, start, end, pure_decode))

        def arm() -> None:
            for mb in unarmed:
                due(mb)
            unarmed.clear()

        track_run = track_later if _ARM_LATE else track

        scheduled: ScheduledBatch | None = None  # what a run scheduled at its end and did not take
        while True:
            now = env.now
            if scheduled is not None:
                batch, scheduled = scheduled, None
            else:
                batch = core.schedule(now) if (core.has_work and len(inflight) < pp) else None
            if batch is None or batch.is_empty:
                # Wait for an arrival or a micro-batch to complete, whichever comes first.
                if unarmed:
                    arm()
                waiting_ev[0] = self._wait_for_arrival(core)
                yield waiting_ev[0]
                core.on_arrival = None
                waiting_ev[0] = None
                continue
            shape = core.shape(batch)
            if jump and _steady_pipeline(core, batch, shape, inflight):
                unarmed.clear()  # the run takes every micro-batch in flight over
                run = self._pipelined_decode_run(core, batch, shape, inflight, stage_free, track_run)
                scheduled = yield from run
                if scheduled is None and stage_free[0] > env.now:
                    if unarmed:
                        arm()
                    yield env.timeout(stage_free[0] - env.now)
                continue
            if unarmed:
                arm()
            t = _enter_pipeline(stage_free, now, cost.stage_time(shape))
            track(batch, now, t, not shape.prefill)
            # Stage 0 takes the next micro-batch once it is free.
            yield env.timeout(stage_free[0] - now)

    def _pipelined_decode_run(self, core, batch, shape, inflight, stage_free, track):
        """The pipelined form of `_decode_run`: every running sequence is in `batch` or in a
        micro-batch in flight, nobody waits, and micro-batches keep their membership, so each
        one's next iterations are known (`ReplicaCore.plan_group`: prefill chunks that ride
        along, then decodes on the cost model's decode line) and the flow-shop recurrence is
        computed ahead in plain arithmetic (no events) until the first finish, the KV limit, a
        point where stepping would merge two micro-batches, or an arrival, whichever comes
        first. The look-ahead stops at the trace's next arrival and is extended only when that
        arrival goes to another replica (`_extend_runs`), so nothing is computed that a cut
        throws away. An arrival whose cut can wait for the pipeline's next scheduling point
        (`_deferred_cut`, most of them) joins the run there when the batch then scheduled keeps
        it steady (`absorb`), and so does the batch scheduled at a natural end where members of
        the head finish: the groups still in flight keep their plans and go on uncommitted, so
        an arrival costs one group's commit and plan instead of a whole new run. The state at
        the final cut (completed iterations, micro-batches in flight, stage free times) is then
        rebuilt exactly as stepping would have left it. Returns a batch that `absorb` scheduled
        at the cut and could not take, for the replica loop to take instead of scheduling
        (None: none)."""
        env = self.env
        cost = self.cost
        pp = self.cfg.pp
        now = env.now
        groups = [(mb.batch, mb.start, mb.end) for mb in inflight]
        for mb in inflight:
            mb.cancelled = True  # their completions are part of this run now
        inflight.clear()
        # X enters stage 0 now, as stepping would enter it.
        t = _enter_pipeline(stage_free, now, cost.stage_time(shape))
        groups.append((batch, now, t))
        stage_time = cost.stage_time
        decode_line = self._decode_line
        bs = core.kv.block_size
        # Per segment: a group's stretch with fixed members (a scheduled group first, then what
        # is left of it once members finish, `split`): members, its plan and the batch the
        # scheduler handed over (None for a later segment), KV envelope, explicit stage times,
        # decode line, iteration limits. Iterations are numbered from the group's start. The
        # lists holding containers hold None for a segment once it is committed (`close`).
        seg_seqs: list[list[Sequence] | None] = []
        seg_plan: list[GroupPlan | None] = []
        seg_first: list[ScheduledBatch | None] = []
        seg_kv: list[list[tuple[int, int]] | None] = []  # per member (c, capacity), see GroupPlan.kv
        kv_c: list[int] = []  # per segment: the sum of its members' c
        lines: list[tuple[float, float, int, int, float, int, float] | None] = []
        explicit: list[list[float] | None] = []
        ms: list[int] = []
        remaining: list[int] = []
        span: list[int] = []  # iterations until the last member's finish (or until `remaining`)
        limit: list[int] = []
        dctx: list[list[int] | None] = []
        fins: list[list[int] | None] = []
        end_at: list[float | None] = []  # the completion that finished members: segment over
        E: list[list[float] | None] = []  # per segment: its iterations' entries and completions
        C: list[list[float] | None] = []
        nxt: list[int] = []  # index of each segment's next iteration
        last_c: list[float] = []
        open_: list[bool] = []  # not committed yet
        reserved: list[int] = []  # iterations whose blocks are taken, per segment
        ended: list[int] = []  # segments that ended (`split`) and are not committed yet

        def add_group(gbatch: ScheduledBatch, plan: GroupPlan, e: float, c: float) -> int:
            """A scheduled group whose iteration 0 entered at e and completes at c; returns its
            segment (its KV limit is the caller's to set)."""
            n = len(plan.seqs)
            ga, gb, gc, gg = decode_line(n)
            seg_seqs.append(plan.seqs)
            seg_plan.append(plan)
            seg_first.append(gbatch)
            seg_kv.append(plan.kv)
            kv_c.append(sum(map(_first, plan.kv)))
            lines.append((ga, gb, plan.ctx0, n, gc, plan.max0, gg))
            shapes = plan.shapes
            explicit.append([0.0, *map(stage_time, shapes[1:])] if len(shapes) > 1 else [0.0])
            ms.append(len(plan.counts))  # plan.m without the property call
            remaining.append(plan.finish + 1)
            span.append(max(plan.finishes) + 1 if plan.finishes else plan.finish + 1)
            limit.append(plan.stop)
            dctx.append(plan.dctx)
            fins.append(plan.finishes)
            end_at.append(None)
            c_ = [c]
            E.append([e])
            C.append(c_)
            nxt.append(1)
            last_c.append(c)
            open_.append(True)
            reserved.append(0)
            core.begin_decode_run(gbatch, c_, plan.work)
            return len(E) - 1

        def cap_kv(segs: list[int]) -> None:
            """Cap `segs` (every segment in flight) at the iterations the free blocks hold for all
            of them, counted from each one's iteration in flight (o), whose blocks are taken:
            a member with envelope c holds at most c + o + k tokens k iterations on. Finished
            members only free blocks, so a limit for all members growing holds for any later
            segment of theirs too."""
            k_max = 1
            for g in segs:
                last = span[g]
                k = (last if last < limit[g] else limit[g]) - nxt[g] + 1
                if k > k_max:
                    k_max = k
            # The quick bound first (`ReplicaCore.kv_room_bound`): a member holds at most
            # c + o + k tokens k iterations on.
            n_all = tokens = 0
            for g in segs:
                n = len(seg_seqs[g])
                n_all += n
                tokens += kv_c[g] + n * (nxt[g] - 1 + k_max)
            if _KV_QUICK and core.kv_room_bound(tokens, n_all):
                k_kv = k_max
            else:
                k_kv = _shared_kv_limit(core, [(seg_seqs[g], seg_kv[g], nxt[g] - 1) for g in segs], k_max)
            for g in segs:
                k = nxt[g] - 1 + k_kv
                if k < limit[g]:
                    limit[g] = k

        for g_batch, e0, c0 in groups:
            add_group(g_batch, core.plan_group(g_batch), e0, c0)
        cap_kv(list(range(len(groups))))
        free0 = list(stage_free)  # stage free times after the last scheduled group entered
        entry_t: list[float] = []  # entry time and stage time of each later entry
        entry_st: list[float] = []
        entry_c: list[float] = []  # and its completion
        pending = deque(range(len(groups)))
        result: list = []  # [stop, inclusive] once the run's natural end is known

        def split(g: int, i1: int, c0: float) -> int:
            """Segment g's iteration i1 - 1, completing at c0, finishes some members (all are
            decoding): stepping frees them then and schedules the others together again (nobody
            waits: an arrival would have cut the run), one token each on their own decode line.
            Returns the segment that goes on (-1: none left)."""
            fg = fins[g]
            seqs = seg_seqs[g]
            d = dctx[g]
            kv = seg_kv[g]
            end_at[g] = c0
            ended.append(g)
            if _SPLIT_ONE and len(fg) > 1 and fg.count(i1 - 1) == 1 and min(fg) == i1 - 1:
                # One member finishes (the common case): the others' lists are copies without
                # it, in C, the same lists as the general path's.
                x = fg.index(i1 - 1)
                core.finish_ahead(1)
                seqs2 = seqs.copy()
                del seqs2[x]
                d2 = d.copy()
                del d2[x]
                f2 = fg.copy()
                del f2[x]
                kv2 = kv.copy()
                del kv2[x]
                kv_c2 = kv_c[g] - kv[x][0]
            else:
                keep = [i for i, f in enumerate(fg) if f >= i1]
                core.finish_ahead(len(fg) - len(keep))
                if not keep:
                    return -1
                seqs2 = [seqs[i] for i in keep]
                d2 = [d[i] for i in keep]
                f2 = [fg[i] for i in keep]
                kv2 = [kv[i] for i in keep]
                kv_c2 = sum(map(_first, kv2))
            n2 = len(f2)
            ga, gb, gc, gg = decode_line(n2)
            g2 = len(lines)
            seg_seqs.append(seqs2)
            seg_plan.append(None)
            seg_first.append(None)
            seg_kv.append(kv2)
            kv_c.append(kv_c2)
            lines.append((ga, gb, sum(d2), n2, gc, max(d2), gg))
            explicit.append([])
            ms.append(0)
            remaining.append(min(f2) + 1)
            span.append(max(f2) + 1)
            limit.append(limit[g])
            dctx.append(d2)
            fins.append(f2)
            end_at.append(None)
            E.append([])
            C.append([])
            nxt.append(i1)
            last_c.append(c0)
            open_.append(True)
            reserved.append(0)
            core.begin_run_segment(C[g2], n2)
            return g2

        def advance(horizon: float) -> bool:
            """Compute the recurrence ahead until the run's natural end (True, `result` set) or
            until the next group to enter completes its current iteration at or after `horizon`
            (False): every entry and completion before `horizon` is known then, which is all a
            cut by an arrival at `horizon` needs, and no stop can come before that point, since
            the head's completion is the earliest candidate. It also stops (False) before an
            entry that stage 0 takes after `horizon`: an arrival there joins that batch, so the
            run can be cut where it is taken (`_deferred_cut`). Called again with a later
            horizon when the arrival went elsewhere, so nothing is computed that an arrival
            discards. A completion that finishes members of a decoding group does not end the
            run: the group goes on without them (`split`)."""
            # Hot loop: plain locals, no builtins per stage (this runs once per micro-batch iteration).
            pending_, nxt_, last_c_, sf, E_, C_ = pending, nxt, last_c, stage_free, E, C
            entry_t_, entry_st_, entry_c_ = entry_t, entry_st, entry_c
            later = range(1, pp)  # stage 0 is free at entry by construction (e >= sf[0])
            two = pp == 2  # the common layout, without the loop
            # Entries held at most (since the start or the last take-in, which also drops the
            # committed segments), to bound memory.
            left = 200_000 - len(entry_t_)
            multi = len(pending_) > 1
            inclusive = paused = False
            # Stage free times in locals while the loop runs (stored back when it stops): stage 0
            # always, stage 1 too with two stages.
            s0 = sf[0]
            s1 = sf[1] if two else 0.0
            while True:
                g = pending_[0]
                c0 = last_c_[g]
                if c0 >= horizon:
                    paused = True
                    break
                i1 = nxt_[g]
                if i1 >= remaining[g]:
                    if not fins[g]:
                        stop, inclusive = c0, True  # that completion finishes a sequence
                        break
                    g = split(g, i1, c0)
                    if g < 0:  # the whole group finished
                        pending_.popleft()
                        if not pending_:
                            stop, inclusive = c0, True
                            break
                        multi = len(pending_) > 1
                        continue
                    pending_[0] = g
                e = s0 if s0 > c0 else c0
                if e > horizon:  # stage 0 takes it after the arrival: an arrival here joins it
                    paused = True
                    break
                if multi and last_c_[pending_[1]] <= e:
                    # Stepping would schedule two completed micro-batches as one. The cut keeps
                    # a completion at e itself (the second group's, when it leaves the last stage
                    # just as stage 0 frees, common with equal stage times): stepping's loop
                    # wakes at e after it (its event was set up at that group's entry, before
                    # the wake-up's), so it schedules that group too.
                    stop, inclusive = e, True
                    break
                if i1 >= limit[g] or left <= 0:  # KV or the plan's own limit
                    stop = e
                    break
                if i1 < ms[g]:
                    st = explicit[g][i1]
                else:
                    ga, gb, gctx, n, gc, gmax, gg = lines[g]
                    su = gb * (gctx + n * i1)
                    st = ga + su
                    if gc:
                        sv = gc * (gmax + i1)
                        st = st + sv
                        if gg:
                            st = st - gg * min(su, sv)
                t = e + st
                s0 = t
                if two:
                    if s1 > t:
                        t = s1
                    t += st
                    s1 = t
                else:
                    for j in later:
                        f = sf[j]
                        if f > t:
                            t = f
                        t += st
                        sf[j] = t
                E_[g].append(e)
                C_[g].append(t)
                last_c_[g] = t
                nxt_[g] = i1 + 1
                entry_t_.append(e)
                entry_st_.append(st)
                entry_c_.append(t)
                left -= 1
                pending_.rotate(-1)
            sf[0] = s0
            if two:
                sf[1] = s1
            if paused:
                return False
            result[:] = [stop, inclusive]
            return True

        allocate_each = core.kv.allocate_each

        def reserve(g: int, x: float) -> None:
            """Blocks for segment g's iterations entered before x (allocation is idempotent:
            room for computed + n tokens, from the state the segment started from)."""
            last = bisect_left(E[g], x) - 1  # last iteration entered before x
            if last < reserved[g]:
                return
            reserved[g] = last + 1
            plan = seg_plan[g]
            if plan is not None:
                if last < 1:
                    return  # iteration 0 got its blocks when it was scheduled
                m = ms[g]
                needs = [last + 1] * len(plan.seqs)  # decoders: one token per iteration each
                if m:  # members prefilling in the spelled-out iterations: their counts
                    rows = plan.counts[: min(last + 1, m)]
                    extra = last + 1 - m if last >= m else 0
                    for i in plan.prefilling:
                        needs[i] = sum([row[i] for row in rows]) + extra
                seqs = plan.seqs
            else:  # a later segment: its members' state is the one its predecessor left
                if last < 0:
                    return
                seqs = seg_seqs[g]
                needs = [last + 1] * len(seqs)
            short = allocate_each(seqs, needs)
            if short is not None:
                raise AssertionError(f"replica {core.id}: pipelined run exceeded its KV plan "
                                     f"(sequence {short.id})")

        def commit(g: int, k: int) -> int:
            """Apply segment g's first k iterations; returns its count of explicit iterations."""
            seqs = seg_seqs[g]
            for s in seqs:
                s.in_flight = False
            c = C[g]
            e_g = E[g]
            m = 0
            plan = seg_plan[g]
            if plan is not None:
                m = ms[g]
                if m and k and core.can_complete_planned(plan, k):
                    core.complete_planned(plan, k, c[:k])
                    return m
                first = seg_first[g]
                for j in range(min(k, m)):  # explicit iterations, one by one
                    core.complete(_iteration_batch(first, plan, j), e_g[j], c[j])
            if k > m:
                core.complete_decodes(seqs, e_g[m:k], c[m:k], allocated=True)
            return m

        def decode_batch(g: int) -> ScheduledBatch:
            """Segment g's decode iterations as the scheduler hands one over (to track it)."""
            plan = seg_plan[g]
            if plan is not None:
                first = seg_first[g]
                return first if plan.m == 0 else _iteration_batch(first, plan, plan.m)
            seqs = seg_seqs[g]
            return ScheduledBatch(list(seqs), [1] * len(seqs))

        def close(g: int) -> None:
            """Segment g is committed: drop what it holds (None), since a run that takes in
            arrivals can last as long as the replay: containers left alive would also make the
            cyclic garbage collector run (and walk them) again and again."""
            open_[g] = False
            seg_plan[g] = seg_first[g] = seg_seqs[g] = seg_kv[g] = lines[g] = explicit[g] = None
            dctx[g] = fins[g] = E[g] = C[g] = None

        def commit_ended(t: float, lazy: bool = False) -> list[int]:
            """Commit the segments that ended (members finished) in the order of their ends, each
            after the blocks of every iteration entered before that end are taken: stepping
            allocates at entry and frees at a finish, so the peak it records is reached at one
            of these points (or at t); in a run blocks are only taken between finishes. Then
            take the blocks of the iterations entered before t (`lazy`: the head's, and the
            others' only when `room_for_all` fails with the head's taken; see `absorb`). The
            others' blocks at an end wait for a later point when they cannot raise the peak there
            (`peak_in_reach`, `defer_ok`): taken later, they are the same count. Returns the
            segments in flight (still open), in index order."""
            live = sorted(pending)
            if ended:
                live_all = sorted({*pending, *ended})
                for x, g in sorted([(end_at[g], g) for g in ended]):
                    reserve(g, x)  # its own, before its commit (taken in any order, the same count)
                    if not defer_ok or peak_in_reach(g, live_all):
                        for h in live_all:
                            if open_[h]:
                                reserve(h, x)
                    commit(g, len(C[g]))
                    close(g)
                ended.clear()
            if lazy:
                reserve(pending[0], t)
                if room_for_all(t):  # asked with the head's blocks taken: they are not free
                    return live
            for g in live:
                reserve(g, t)
            return live

        kv_stats = core.kv.stats
        # Blocks may be taken later only where nothing else observes when: iteration rows record
        # the used count at each commit, and the prefix cache's eviction order follows the ids.
        defer_ok = (
            _DEFER_RESERVES and not core.recorder.record_iterations and not core.kv.enable_prefix_caching
        )

        def peak_in_reach(g: int, live_all: list[int]) -> bool:
            """Whether the blocks of the open segments other than g for their iterations not
            reserved yet could take the used count above the recorded peak: at most one block
            per member for each block size of iterations, plus one, once their spelled-out
            iterations are reserved (those are not bounded here: True). When they cannot, the
            peak stepping records at g's end is the one recorded already, and those blocks
            may be taken at the next commit point (nothing reads the free count in between)."""
            room = kv_stats.peak_used_blocks - core.kv.num_used_blocks
            for h in live_all:
                if h != g and open_[h]:
                    r = reserved[h]
                    if ms[h] > r:
                        return True
                    room -= len(seg_seqs[h]) * (-(-(len(E[h]) - r) // bs) + 1)
                    if room < 0:
                        return True
            return False

        def room_for_all(t: float) -> bool:
            """Whether the free blocks outlast, with a margin, both what the groups in flight
            behind the head would take for their iterations entered before t (at most one block
            per member for each block size of iterations, plus one) and what any batch
            scheduled at t can take (its token budget in blocks, plus one per sequence); their
            spelled-out iterations are not bounded here. Then the scheduler finds the same
            room with those blocks taken or not, so `absorb` may leave them to the next commit
            point (all before the next free, where the peak is reached). Asked once the head's
            blocks are taken (`commit_ended`): counting them as free let a batch take them and
            the groups behind the head run out of blocks they had been planned with."""
            need = -(-self.cfg.max_num_batched_tokens // bs) + len(core.running) + len(core.waiting) + 1
            for i in range(1, len(pending)):
                g = pending[i]
                if ms[g] > reserved[g]:
                    return False
                need += len(seg_seqs[g]) * (-(-(nxt[g] - reserved[g]) // bs) + 1)
            return need <= core.kv.num_free_blocks

        def absorb(t: float) -> ScheduledBatch | None:
            """At `t`, where a deferred cut would end the run (the head of the full pipeline has
            completed and stage 0 is free, `_deferred_cut`), do what stepping does there: commit
            the head (and what ended) and schedule. When the batch keeps the run steady (the
            conditions of `_steady_pipeline`), it enters as a new group and the run goes on
            (None): the groups in flight keep their plans, which are what a new run would plan
            for them (a plan's continuation is the plan of the state it reaches), and only
            their KV limit is taken again. Otherwise the batch is returned for the replica loop
            to take after the run is cut at `t`."""
            core.end_decode_runs()
            head = pending[0]
            # The blocks of the groups behind the head wait for the next commit point when the
            # head's commit frees none (no finish: the peak is not reached here) and room is ample
            # once the head's blocks are taken (`commit_ended`).
            commit_ended(t, nxt[head] < remaining[head])
            pending.popleft()
            commit(head, len(C[head]))
            close(head)
            n_flight = 0
            for g in pending:
                seqs = seg_seqs[g]
                for s in seqs:
                    s.in_flight = True  # the scheduler passes them over, as stepping's would
                n_flight += len(seqs)
            now = env.now
            new = core.schedule(now)
            if not _absorbable(core, new, n_flight):
                return new
            # The new group enters stage 0 now, as stepping would enter it.
            plan = core.plan_group(new)
            c = _enter_pipeline(stage_free, now, stage_time(_first_shape(plan)))
            for g in pending:  # the router's view of the groups in flight, uncommitted as before
                p = seg_plan[g]
                if p is not None:
                    core.begin_decode_run(seg_first[g], C[g], p.work)
                else:
                    core.begin_run_segment(C[g], len(seg_seqs[g]))
            pending.append(add_group(new, plan, now, c))
            cap_kv(list(pending))
            # Its entry is the run's new starting point, as X's is (a cut at its entry keeps it).
            free0[:] = stage_free
            entry_t.clear()
            entry_st.clear()
            entry_c.clear()
            return None

        def at_horizon(t: float) -> None:
            """The clock stopped at `t` (the horizon) inside the run: commit what stepping has
            done by then. SimPy processes the `until` stop before any other event at `t`, so
            that is the completions and entries before `t`: the segments that ended before `t`
            are committed in the order of their ends, each after the blocks of every
            iteration entered before its end are taken (as `commit_ended` does, where stepping
            can reach its peak), then every other open segment's iterations completed before
            `t`, with the blocks of those entered before `t` (in progress included) taken."""
            core.end_decode_runs()
            early = sorted([(end_at[g], g) for g in ended if end_at[g] < t])
            ended.clear()  # the others (ended at or after t) are cut as the open segments are
            for x, g in early:
                for h in range(len(open_)):
                    if open_[h]:
                        reserve(h, x)
                commit(g, len(C[g]))
                close(g)
            live = [g for g in range(len(open_)) if open_[g]]
            for g in live:
                reserve(g, t)
            for g in live:  # a segment before the one its members go on in (`split`)
                commit(g, bisect_left(C[g], t))
                close(g)

        if self.cfg.horizon is not None:
            self._at_horizon[core.id] = at_horizon
        can_absorb = self._absorbing
        scheduled: ScheduledBatch | None = None  # what `absorb` scheduled and could not take
        while True:
            deferred: float | None = None  # a cut moved from an arrival to the next completion
            if advance(self._next_arrival()):
                stop = result[0]
                if stop > env.now:
                    yield self._wait_for_arrival(core, stop - env.now)
                    core.on_arrival = None
            else:
                # Paused at the next arrival: wait for one to this replica; the arrival process
                # extends the computation (`_extend_runs`) each time one goes elsewhere.
                wake_ev = self._wait_for_arrival(core)
                self._paused[core.id] = (advance, result, wake_ev)
                yield wake_ev
                self._paused.pop(core.id, None)
                core.on_arrival = None
                # Woken by an arrival while the computation still stops at it (not by the timer
                # of a natural end that an extension found, `result`): the state in `advance` is
                # at now.
                if not result:
                    now = env.now
                    deferred = self._deferred_cut(pending, last_c, nxt, remaining, entry_t, stage_free, now)
                    if deferred is None:
                        break
                    yield env.timeout(deferred - env.now)
                    if not can_absorb or stage_free[0] > env.now:
                        break
                    scheduled = absorb(deferred)
                    if scheduled is not None:
                        break
                    continue
            # The natural end, reached. At a completion that finishes members of the head (the
            # others complete later) stepping schedules, when stage 0 is free by then, so the
            # run can take that batch as it takes an arrival's.
            stop = result[0]
            if not (
                can_absorb and result[1] and env.now == stop and pending and stage_free[0] <= stop
                and (len(pending) == 1 or last_c[pending[1]] > stop)
            ):
                break
            deferred = stop
            result.clear()
            scheduled = absorb(stop)
            if scheduled is not None:
                break
        core.on_arrival = None
        self._at_horizon.pop(core.id, None)
        t = env.now
        inclusive = bool(result) and result[1] and t >= result[0]  # else cut short by an arrival
        if deferred is not None:  # the cut's own time (SimPy's sum of delays can be an ulp off)
            t, inclusive = deferred, True
        core.end_decode_runs()
        cut = bisect_right if inclusive else bisect_left
        # Rebuild: iterations completed by t are committed; an iteration entered before t (the
        # first one of every scheduled group always was) and not completed is in flight.
        for g in commit_ended(t):
            c = C[g]
            e_g = E[g]
            k = cut(c, t)
            m = commit(g, k)
            if k < len(c) and ((k == 0 and seg_plan[g] is not None) or e_g[k] < t):
                if k >= m:
                    track(decode_batch(g), e_g[k], c[k], True)
                else:
                    plan = seg_plan[g]
                    track(_iteration_batch(seg_first[g], plan, k), e_g[k], c[k], not plan.shapes[k].prefill)
        # Stage free times as they were after the last entry before t. Each entry leaves every
        # stage free at the moment it leaves that stage, so with two stages they are its entry
        # plus its stage time and its completion; with more, the recurrence is replayed.
        x = bisect_left(entry_t, t)  # entries before t
        if pp == 2 and x:
            stage_free[0] = entry_t[x - 1] + entry_st[x - 1]
            stage_free[1] = entry_c[x - 1]
            inflight.sort(key=_by_start)
            return scheduled
        stage_free[:] = free0
        for e, st in zip(entry_t, entry_st):
            if e >= t:
                break
            _enter_pipeline(stage_free, e, st)
        inflight.sort(key=_by_start)
        return scheduled

    def _deferred_cut(self, pending, last_c, nxt, remaining, entry_t, stage_free, t: float) -> float | None:
        """Where a pipelined run paused at an arrival (at `t`) may be cut instead of at `t`: the
        next point at which stepping schedules, when no entry was computed at or after `t` and
        either every one of the `pp` stages' groups is in flight or the head has completed and
        waits for stage 0. Stepping schedules nothing before that point: with `pp`
        micro-batches in flight the replica loop only waits (the arrival wakes it, it finds the
        pipeline full and waits again), and while stage 0 is busy it sleeps until stage 0 is
        free. So the point is the completion of the group at the head of the pipeline or, if
        later, the moment stage 0 is free; the head's completion is the only one up to it
        (micro-batches leave the pipeline in the order they entered, and the next one must
        leave after it), so the run's computation up to there is what stepping would do, and
        the cut commits the head's completion in bulk (as a run's natural end at a finish does)
        instead of leaving it to a stepped micro-batch; the run then takes in what is scheduled
        there (`absorb`). The second case is taken only when runs absorb (`_absorbing`): cut
        without absorbing, it would only commit the same iterations later. None: cut at `t` as
        before. Nothing here depends on the scheduler, which is consulted by neither path
        between `t` and that point."""
        if entry_t and entry_t[-1] >= t:
            return None
        head = pending[0]
        c0 = last_c[head]
        if c0 < t:
            # The head has completed and waits for stage 0 (`advance` stops before an entry
            # after t): stepping sleeps until stage 0 is free and schedules then, whether or
            # not the pipeline is full.
            if len(pending) < 2 or stage_free[0] <= t or not self._absorbing:
                return None
            cut = stage_free[0]
        elif len(pending) != self.cfg.pp or c0 == t:
            return None
        elif stage_free[0] > c0:
            if nxt[head] >= remaining[head]:
                # That completion finishes members: a router counting requests must see them go
                # at c0, before the cut, so it is left to stepping.
                return None
            cut = stage_free[0]
        else:
            cut = c0
        if last_c[pending[1]] <= cut:  # another completion up to then: leave it to stepping
            return None
        horizon = self.cfg.horizon
        if horizon is not None and cut >= horizon:  # the replay ends first: leave state as at t
            return None
        return cut

    # -- running -----------------------------------------------------------------------
    def run(self) -> RunResult:
        env = self.env
        env.process(self._arrivals())
        for core in self.replicas:
            env.process(self._replica(core))
        t0 = time.perf_counter()
        env.run(until=self.cfg.horizon)
        for stop in list(self._at_horizon.values()):  # runs the clock stopped inside
            stop(env.now)
        self._at_horizon.clear()
        wall = time.perf_counter() - t0
        for core in self.replicas:
            core.drain_unfinished()
        meta = self._meta(wall)
        return self.recorder.result(meta, arrivals=self.trace.arrival)

    def _meta(self, wall: float) -> dict:
        cfg = self.cfg
        return {
            "kind": "simulation",
            "name": f"sim-{cfg.model}-{cfg.accelerator}-{cfg.scheduler}",
            "trace": self.trace.name,
            "trace_source": self.trace.source,
            "num_requests": len(self.trace),
            "config": cfg.to_dict(),
            "cost_model": getattr(self.cost, "name", type(self.cost).__name__),
            "scheduler": f"{cfg.scheduler} (budget {cfg.max_num_batched_tokens} tok, "
            f"max {cfg.max_num_seqs} seqs{', chunked' if cfg.enable_chunked_prefill else ''}"
            f"{', prefix cache' if cfg.enable_prefix_caching else ''})",
            "router": cfg.router,
            "device": cfg.accelerator,
            "model": cfg.model,
            "layout": {"tp": cfg.tp, "pp": cfg.pp, "replicas": cfg.num_replicas},
            "num_kv_blocks": self.num_kv_blocks,
            "sim_end": self.env.now,
            "iterations": sum(c.num_iterations for c in self.replicas),
            "wall_seconds": wall,
            "kv": {
                "evictions": sum(c.kv.stats.evictions for c in self.replicas),
                "hit_tokens": sum(c.kv.stats.hit_tokens for c in self.replicas),
                "queried_tokens": sum(c.kv.stats.queried_tokens for c in self.replicas),
                "peak_used_blocks": max(c.kv.stats.peak_used_blocks for c in self.replicas),
            },
        }


_SHORT_RUN = 64  # decode runs up to this many iterations are computed in plain floats
_ARM_LATE = True  # schedule the completions a run's rebuild leaves in flight only when needed (tests pin it)
_DEFER_RESERVES = True  # take blocks that cannot raise the peak at a later commit point (tests pin it)
_KV_QUICK = True  # a run's KV cap tries a sufficient one-pass bound before the exact count (tests pin it)
_SPLIT_ONE = True  # a segment losing one member copies its lists without it (tests pin it)
_by_start = attrgetter("start")  # micro-batches in order of entry into stage 0
_first = itemgetter(0)


class _MicroBatch:
    """A batch inside the pipeline: entered stage 0 at `start`, leaves the last at `end`."""

    __slots__ = ("batch", "start", "end", "cancelled", "pure_decode")

    def __init__(self, batch: ScheduledBatch, start: float, end: float, pure_decode: bool = True) -> None:
        self.batch = batch
        self.start = start
        self.end = end
        self.cancelled = False
        self.pure_decode = pure_decode  # every sequence computes only its last sampled token


def _enter_pipeline(stage_free: list[float], entry: float, st: float) -> float:
    """A micro-batch entering stage 0 at `entry`, `st` seconds per stage: the flow-shop recurrence
    (each stage starts it when both it and the previous stage are done) updates the stages' free
    times in place; returns its completion. The planned runs' hot loop inlines the same arithmetic."""
    t = entry
    for i in range(len(stage_free)):
        f = stage_free[i]
        if f > t:
            t = f
        t += st
        stage_free[i] = t
    return t


def _steady_pipeline(
    core: ReplicaCore, batch: ScheduledBatch, shape: BatchShape, inflight: list[_MicroBatch]
) -> bool:
    """Every running sequence is in `batch` or in a micro-batch in flight, nobody waits, and
    the scheduler promises to repeat such batches: pure decodes (`repeats_steady_decode`) or,
    when prefill chunks ride along, the same groups (`plans_steady_batches`)."""
    sched = core.scheduler
    if core.waiting or batch.preempted or not sched.repeats_steady_decode:
        return False
    n = len(batch.seqs)
    mixed = bool(shape.prefill)
    for mb in inflight:
        if not mb.pure_decode:
            mixed = True
        n += len(mb.batch.seqs)
    if mixed and not getattr(sched, "plans_steady_batches", False):
        return False
    return n == len(core.running)


def _shared_kv_limit(
    core: ReplicaCore, groups: list[tuple[list[Sequence], list[tuple[int, int]], int]], k_max: int
) -> int:
    """`ReplicaCore.kv_limit` for groups given as (members, their envelopes (c, capacity), o):
    from its iteration in flight o, whose blocks are taken, a member with envelope c holds at
    most c + o + k tokens k iterations on, in its block table now (o > 0) or in the envelope's
    capacity, as scheduled (o == 0). The common case, room for all of them for k_max
    iterations, is one pass that builds no pairs; otherwise `kv_search` bisects."""
    bs = core.kv.block_size
    need = 0
    for seqs, kv, o in groups:
        if o:
            for s, (c, _) in zip(seqs, kv):
                over = c + o + k_max - len(s.block_table) * bs
                if over > 0:
                    need -= -over // bs
        else:
            for c, cap in kv:
                over = c + k_max - cap
                if over > 0:
                    need -= -over // bs
    if need <= core.kv.num_free_blocks:
        return k_max
    cs: list[tuple[int, int]] = []
    for seqs, kv, o in groups:
        if o:
            cs += [(c + o, len(s.block_table) * bs) for s, (c, _) in zip(seqs, kv)]
        else:
            cs += kv
    return core.kv_search(cs, k_max)


def _absorbable(core: ReplicaCore, batch: ScheduledBatch, n_flight: int) -> bool:
    """Whether a batch scheduled where a pipelined run would end keeps the run steady, as
    `_steady_pipeline` would find it (the run's scheduler plans steady batches,
    `Simulation._absorbing`): something was scheduled, nobody waits, nothing was preempted and
    every running sequence is in it or in a group in flight (`n_flight` sequences)."""
    if batch.is_empty or core.waiting or batch.preempted:
        return False
    return len(batch.seqs) + n_flight == len(core.running)


def _first_shape(plan: GroupPlan) -> BatchShape:
    """The shape of a planned group's iteration 0, the batch as scheduled: what
    `ReplicaCore.shape` makes of it (the plan classifies members the same way, lists prefill
    chunks in member order and sums the same integers), without another pass over it."""
    if plan.shapes:  # plan.m > 0
        return plan.shapes[0]
    return BatchShape([], len(plan.seqs), plan.ctx0, plan.max0)


def _iteration_batch(first: ScheduledBatch, plan: GroupPlan, j: int) -> ScheduledBatch:
    """Iteration j of a planned group as the scheduler would have handed it over (iteration 0
    is the batch it did hand over; iterations from plan.m on are pure decodes)."""
    if j == 0:
        return first
    seqs = list(plan.seqs)
    return ScheduledBatch(seqs, list(plan.counts[j]) if j < plan.m else [1] * len(seqs))


def simulate(trace: Trace, cfg: SimConfig, cost: CostModel | None = None) -> RunResult:
    return Simulation(trace, cfg, cost).run()

