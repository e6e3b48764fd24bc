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
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np
import simpy

from backends.cost_model import COST_MODELS, BatchShape, CostModel, ParallelLayout
from policies.kv.block_manager import BlockManager
from policies.routing.base import ROUTERS, Router
from policies.scheduling.base import SCHEDULERS, SchedulerConfig
from policies.scheduling.batch import ScheduledBatch
from policies.sequence import Sequence
from sim.config import SimConfig
from sim.replica_core import ReplicaCore
from sim.results import RunRecorder, RunResult
from traces.schema import Trace


def build_cost_model(cfg: SimConfig) -> CostModel:
    from backends import analytic, calibrated  # noqa: F401  (register "analytic", "calibrated")
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

    # -- processes ---------------------------------------------------------------------
    def _arrivals(self):
        env = self.env
        trace = self.trace
        arrival = trace.arrival.tolist()
        replicas = self.replicas
        route = self.router.route
        for i, t in enumerate(arrival):
            if t > env.now:
                yield env.timeout(t - env.now)
            req = trace.request(i)
            r = route(req, replicas, env.now)
            replicas[r].add(Sequence(req), env.now)
            self.routed = i + 1

    def _wait_for_arrival(self, core: ReplicaCore):
        ev = self.env.event()

        def wake() -> None:
            if not ev.triggered:
                ev.succeed()

        core.on_arrival = wake
        return ev

    def _replica(self, core: ReplicaCore):
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

    def _decode_run(self, core: ReplicaCore, batch, k: int, start: float):
        """Up to k identical decode iterations as one timeout, cut short by an arrival."""
        env = self.env
        B = len(batch.seqs)
        a, b, c = _line(self.cost.decode_line(B))
        ctx0 = sum(s.num_computed_tokens + 1 for s in batch.seqs)
        steps = np.arange(k, dtype=np.float64)
        durations = a + b * (ctx0 + B * steps)
        if c:  # the longest context grows by one token per iteration
            durations = durations + c * (max(s.num_computed_tokens for s in batch.seqs) + 1 + steps)
        ends = start + np.cumsum(durations)
        starts = np.concatenate(([start], ends[:-1]))
        core.begin_decode_run(batch, ends)
        arrived = self._wait_for_arrival(core)
        yield env.timeout(float(ends[-1]) - start) | arrived
        core.on_arrival = None
        if arrived.triggered and env.now < ends[-1]:
            # Iterations ending at or before now are done; the one in progress completes.
            j = int(np.searchsorted(ends, env.now, side="left"))
            k = j + 1
            if ends[j] > env.now:
                yield env.timeout(float(ends[j]) - env.now)
        core.end_decode_runs()
        core.complete_decode_run(batch, starts[:k], ends[:k])

    def _pipelined_replica(self, core: ReplicaCore):
        env = self.env
        cost = self.cost
        pp = self.cfg.pp
        stage_free = [0.0] * pp
        inflight: list[_MicroBatch] = []  # in order of entry into stage 0 (= completion order)
        done: list[simpy.Event | None] = [None]

        def finish(mb: _MicroBatch) -> None:
            if mb.cancelled:
                return
            inflight.remove(mb)
            for s in mb.batch.seqs:
                s.in_flight = False
            core.complete(mb.batch, mb.start, mb.end)
            ev = done[0]
            if ev is not None and not ev.triggered:
                ev.succeed()

        def track(batch: ScheduledBatch, start: float, end: float) -> _MicroBatch:
            mb = _MicroBatch(batch, start, end)
            for s in batch.seqs:
                s.in_flight = True
            inflight.append(mb)
            env.timeout(end - env.now).callbacks.append(lambda _e, mb=mb: finish(mb))
            return mb

        while True:
            now = env.now
            batch = core.schedule(now) if (core.has_work and len(inflight) < pp) else None
            if batch is None or batch.is_empty:
                # Wait for an arrival or a micro-batch to complete, whichever comes first.
                done[0] = env.event()
                arrived = self._wait_for_arrival(core)
                yield done[0] | arrived
                core.on_arrival = None
                done[0] = None
                continue
            shape = core.shape(batch)
            if self.cfg.jump and _steady_pipeline(core, batch, shape, inflight):
                yield from self._pipelined_decode_run(core, batch, inflight, stage_free, track)
                if stage_free[0] > env.now:
                    yield env.timeout(stage_free[0] - env.now)
                continue
            st = cost.stage_time(shape)
            t = now
            for i in range(pp):
                t = max(t, stage_free[i]) + st
                stage_free[i] = t
            track(batch, now, t).pure_decode = not shape.prefill
            # Stage 0 takes the next micro-batch once it is free.
            yield env.timeout(stage_free[0] - now)

    def _pipelined_decode_run(self, core, batch, inflight, stage_free, track):
        """The pipelined form of `_decode_run`: every running sequence decodes, in micro-batches
        that keep their membership, so the flow-shop recurrence is computed ahead in plain
        arithmetic (no events) until the first finish, the KV limit, a point where stepping
        would merge two micro-batches, or an arrival, whichever comes first. The state at that
        moment (completed iterations, micro-batches in flight, stage free times) is then
        rebuilt exactly as stepping would have left it."""
        env = self.env
        pp = self.cfg.pp
        now = env.now
        groups = [(mb.batch, mb.start, mb.end) for mb in inflight]
        for mb in inflight:
            mb.cancelled = True  # their completions are part of this run now
        inflight.clear()
        # X enters stage 0 now.
        B = len(batch.seqs)
        a, b, c = _line(self.cost.decode_line(B))
        ctx = sum(s.num_computed_tokens + 1 for s in batch.seqs)
        t = now
        st = a + b * ctx
        if c:
            st = st + c * (max(s.num_computed_tokens for s in batch.seqs) + 1)
        for i in range(pp):
            t = max(t, stage_free[i]) + st
            stage_free[i] = t
        groups.append((batch, now, t))
        all_seqs = [s for g in groups for s in g[0].seqs]
        remaining = [min(s.request.output_len - s.num_output_tokens for s in g[0].seqs) for g in groups]
        k_kv = core.kv_run_limit(all_seqs, max(remaining))
        # Per group: line coefficients, iteration entry and completion times.
        lines = []
        for g in groups:
            seqs = g[0].seqs
            n = len(seqs)
            ga, gb, gc = _line(self.cost.decode_line(n))
            gmax = max(s.num_computed_tokens for s in seqs) + 1
            lines.append((ga, gb, sum(s.num_computed_tokens + 1 for s in seqs), n, gc, gmax))
        E = [[g[1]] for g in groups]
        C = [[g[2]] for g in groups]
        free0 = list(stage_free)  # stage free times after X entered
        entry_t: list[float] = []  # entry time and stage time of each later entry
        entry_st: list[float] = []
        pending = deque(range(len(groups)))
        # Hot loop: plain locals, no builtins per stage (this runs once per micro-batch iteration).
        nxt = [1] * len(groups)  # index of each group's next iteration
        last_c = [g[2] for g in groups]
        sf = stage_free
        stages = range(pp)
        inclusive = False
        cap = 200_000  # entries per run at most, to bound memory
        while True:
            g = pending[0]
            i1 = nxt[g]
            c0 = last_c[g]
            if i1 >= remaining[g]:
                stop, inclusive = c0, True  # that completion finishes a sequence
                break
            e = sf[0] if sf[0] > c0 else c0
            if len(pending) > 1 and last_c[pending[1]] <= e:
                stop = e  # stepping would schedule two completed micro-batches as one
                break
            if i1 >= k_kv or len(entry_t) >= cap:
                stop = e
                break
            ga, gb, gctx, n, gc, gmax = lines[g]
            st = ga + gb * (gctx + n * i1)
            if gc:
                st = st + gc * (gmax + i1)
            t = e
            for j in stages:
                f = sf[j]
                if f > t:
                    t = f
                t += st
                sf[j] = t
            E[g].append(e)
            C[g].append(t)
            last_c[g] = t
            nxt[g] = i1 + 1
            entry_t.append(e)
            entry_st.append(st)
            pending.popleft()
            pending.append(g)
        ends = [np.asarray(c) for c in C]
        for (gb_, _, _), c in zip(groups, ends):
            core.begin_decode_run(gb_, c)
        arrived = self._wait_for_arrival(core)
        if stop > now:
            yield env.timeout(stop - now) | arrived
        core.on_arrival = None
        t = env.now
        if t < stop:
            inclusive = False  # cut short by an arrival
        core.end_decode_runs()
        # Rebuild: iterations completed by t are committed; an iteration entered before t (the
        # first one of every group always was) and not completed is in flight.
        for g, (gbatch, _, _) in enumerate(groups):
            for s in gbatch.seqs:
                s.in_flight = False
            c = ends[g]
            k = int(np.searchsorted(c, t, side="right" if inclusive else "left"))
            if k:
                core.complete_decode_run(gbatch, np.asarray(E[g][:k]), c[:k])
            if k < len(c) and (k == 0 or E[g][k] < t):
                if k > 0:
                    for s in gbatch.seqs:
                        if not core.kv.allocate(s, 1):
                            raise AssertionError("pipelined decode run exceeded its KV plan")
                track(gbatch, E[g][k], float(c[k]))
        # Stage free times as they were after the last entry before t: replay the recurrence.
        stage_free[:] = free0
        for e, st in zip(entry_t, entry_st):
            if e >= t:
                break
            x = e
            for j in range(pp):
                x = max(x, stage_free[j]) + st
                stage_free[j] = x
        inflight.sort(key=lambda mb: mb.start)

    # -- running -----------------------------------------------------------------------
    def run(self) -> RunResult:
        env = self.env
        env.process(self._arrivals())
        for core in self.replicas:
            env.process(self._replica(core))
        t0 = time.perf_counter()
        env.run(until=self.cfg.horizon)
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


class _MicroBatch:
    """A batch inside the pipeline: entered stage 0 at `start`, leaves the last at `end`."""

    __slots__ = ("batch", "start", "end", "cancelled", "pure_decode")

    def __init__(self, batch: ScheduledBatch, start: float, end: float, pure_decode: bool = True) -> None:
        self.batch = batch
        self.start = start
        self.end = end
        self.cancelled = False
        self.pure_decode = pure_decode  # every sequence computes only its last sampled token


def _line(line: tuple[float, ...]) -> tuple[float, float, float]:
    """A cost model's decode line as (a, b, c): c, the per-token cost of the longest context, is 0
    for models that return only (a, b)."""
    return (line[0], line[1], line[2]) if len(line) > 2 else (line[0], line[1], 0.0)


def _steady_pipeline(
    core: ReplicaCore, batch: ScheduledBatch, shape: BatchShape, inflight: list[_MicroBatch]
) -> bool:
    """Every running sequence decodes, in `batch` or in a micro-batch in flight, nobody waits,
    and the scheduler promises to repeat such batches."""
    if core.waiting or batch.preempted or shape.prefill or not core.scheduler.repeats_steady_decode:
        return False
    n = len(batch.seqs)
    for mb in inflight:
        if not mb.pure_decode:
            return False
        n += len(mb.batch.seqs)
    return n == len(core.running)


def simulate(trace: Trace, cfg: SimConfig, cost: CostModel | None = None) -> RunResult:
    return Simulation(trace, cfg, cost).run()

