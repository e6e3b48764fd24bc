"""The router seam: which replica takes an arriving request."""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import Protocol, runtime_checkable

from policies.registry import Registry
from traces.schema import Request


@runtime_checkable
class ReplicaLoad(Protocol):
    """What a router may observe of a replica."""

    @property
    def num_outstanding(self) -> int:
        """Requests assigned and not finished."""
        ...

    def outstanding_work(self, now: float) -> int:
        """Tokens still to compute for the requests assigned and not finished."""
        ...


@runtime_checkable
class Router(Protocol):
    name: str

    def route(self, request: Request, replicas: Seq[ReplicaLoad], now: float) -> int: ...


ROUTERS: Registry[Router] = Registry("router")
