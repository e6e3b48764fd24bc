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

import numpy as np
import simpy

from backends.cost_model import COST_MODELS, CostModel, ParallelLayout
from policies.kv.block_manager import BlockManager
from policies.routing.base import ROUTERS, Router
from policies.scheduling.base import SCHEDULERS, SchedulerConfig
from policies.sequence import Sequence
from sim.config import SimConfig
from sim.replica_core import ReplicaCore
from sim.results import RunRecorder, RunResult
from traces.schema import Trace


def build_cost_model(cfg: SimConfig) -> CostModel:
    from backends import analytic  # noqa: F401  (registers "analytic")
    from backends.accelerators import get_accelerator
    from backends.models import get_model

    return COST_MODELS.create(
        cfg.cost_model,
        get_model(cfg.model),
        get_accelerator(cfg.accelerator),
        ParallelLayout(cfg.tp, cfg.pp),
        dtype=cfg.dtype,
    )


def kv_blocks_for(cfg: SimConfig) -> int:
    if cfg.num_kv_blocks is not None:
        return cfg.num_kv_blocks
    from backends.analytic import max_kv_blocks
    from backends.accelerators import get_accelerator
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
        a, b = self.cost.decode_line(B)
        ctx0 = sum(s.num_computed_tokens + 1 for s in batch.seqs)
        durations = a + b * (ctx0 + B * np.arange(k, dtype=np.float64))
        ends = start + np.cumsum(durations)
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
        core.complete_decode_run(batch, k, start, durations[:k])

    def _pipelined_replica(self, core: ReplicaCore):
        env = self.env
        cost = self.cost
        pp = self.cfg.pp
        stage_free = [0.0] * pp
        in_flight = 0
        done = None

        def finish(ev, batch=None, start=0.0):
            nonlocal in_flight
            for s in batch.seqs:
                s.in_flight = False
            core.complete(batch, start, env.now)
            in_flight -= 1
            if done is not None and not done.triggered:
                done.succeed()

        while True:
            now = env.now
            batch = core.schedule(now) if (core.has_work and in_flight < pp) else None
            if batch is None or batch.is_empty:
                # Wait for an arrival or a micro-batch to complete, whichever comes first.
                done = env.event()
                arrived = self._wait_for_arrival(core)
                yield done | arrived
                core.on_arrival = None
                done = None
                continue
            for s in batch.seqs:
                s.in_flight = True
            st = cost.stage_time(core.shape(batch))
            t = now
            for i in range(pp):
                t = max(t, stage_free[i]) + st
                stage_free[i] = t
            in_flight += 1
            ev = env.timeout(t - now)
            ev.callbacks.append(lambda e, b=batch, s0=now: finish(e, b, s0))
            # Stage 0 takes the next micro-batch once it is free.
            yield env.timeout(stage_free[0] - now)

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


def simulate(trace: Trace, cfg: SimConfig, cost: CostModel | None = None) -> RunResult:
    return Simulation(trace, cfg, cost).run()

