"""Least-outstanding-work routing: send each request to the replica with the fewest tokens
left to compute (ties to the lowest index, so runs are deterministic). Token work, unlike a
request count, sees that one long prompt weighs more than several short chats."""

from __future__ import annotations

from collections.abc import Sequence as Seq

from policies.routing.base import ROUTERS, ReplicaLoad
from traces.schema import Request


@ROUTERS.register("least-work")
class LeastWorkRouter:
    name = "least-work"

    def route(self, request: Request, replicas: Seq[ReplicaLoad], now: float) -> int:
        best, best_w = 0, None
        for i, r in enumerate(replicas):
            w = r.outstanding_work(now)
            if best_w is None or w < best_w:
                best, best_w = i, w
        return best


@ROUTERS.register("least-requests")
class LeastRequestsRouter:
    """Fewest outstanding requests (Vidur's 'LOR' policy)."""

    name = "least-requests"

    def route(self, request: Request, replicas: Seq[ReplicaLoad], now: float) -> int:
        counts = [r.num_outstanding for r in replicas]
        return counts.index(min(counts))
