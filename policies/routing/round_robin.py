"""Round-robin routing: the baseline every load balancer is compared against."""

from __future__ import annotations

from collections.abc import Sequence as Seq

from policies.routing.base import ROUTERS, ReplicaLoad
from traces.schema import Request


@ROUTERS.register("round-robin")
class RoundRobinRouter:
    name = "round-robin"

    def __init__(self) -> None:
        self._next = 0

    def route(self, request: Request, replicas: Seq[ReplicaLoad], now: float) -> int:
        i = self._next % len(replicas)
        self._next = i + 1
        return i
