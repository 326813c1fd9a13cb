"""The location-service interface the registrar, proxy and cluster code program against."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from .model import Binding, NodeInfo, RegisterChange


class LocationService(ABC):
    # Whether every method completes without suspending (no I/O): REGISTERs are then answered
    # without a task of their own (TaskSet.run_eagerly).
    in_process: ClassVar[bool] = False

    @abstractmethod
    async def register(self, change: RegisterChange) -> list[Binding]:
        """Apply one REGISTER atomically (via `apply_register`); return the AoR's bindings.

        Raises OutOfOrderRegister (nothing is changed then).
        """

    @abstractmethod
    async def lookup(self, aor: str) -> list[Binding]:
        """Unexpired bindings of `aor`, q descending then most recently registered first."""

    @abstractmethod
    async def remove_connection(self, node_id: str, connection_id: str) -> list[Binding]:
        """A flow closed: drop the bindings that live on it and return them. Push bindings
        (RFC 8599) on it stay, asleep (`model.close_flow`), and are not returned."""

    @abstractmethod
    async def forget_push(self, aor: str, prid: str) -> bool:
        """The push service called the token `prid` invalid: drop it from `aor`'s bindings
        (`model.drop_push`). True when a binding changed."""

    @abstractmethod
    async def announce_node(self, info: NodeInfo, ttl: float) -> None:
        """Heartbeat: `info` counts as alive for `ttl` seconds."""

    @abstractmethod
    async def live_nodes(self) -> dict[str, NodeInfo]:
        """Nodes whose heartbeat has not expired, by node id."""

    @abstractmethod
    async def purge_dead_nodes(self) -> int:
        """Drop the bindings of nodes whose heartbeat expired; return how many were dropped."""

    @abstractmethod
    async def count(self) -> int:
        """Number of live bindings (for metrics)."""

    @abstractmethod
    async def close(self) -> None: ...
