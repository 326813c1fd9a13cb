"""In-process location service: the embedded default for a single gateway node."""

from __future__ import annotations

import heapq
import time
from typing import ClassVar

from .base import LocationService
from .model import (
    ASLEEP,
    Binding,
    NodeInfo,
    RegisterChange,
    apply_register,
    by_preference,
    close_flow,
    drop_push,
)


class MemoryLocationService(LocationService):
    """Dicts in the event loop's thread; every method runs without awaiting, hence atomic."""

    in_process: ClassVar[bool] = True

    def __init__(self) -> None:
        self._bindings: dict[str, list[Binding]] = {}
        # node id → connection id → AoRs with a binding on that flow, for remove_connection/purge
        self._flows: dict[str, dict[str, set[str]]] = {}
        # (latest expiry, AoR) per write: lets AoRs that are never touched again be freed
        # without scanning every AoR
        self._expiry_heap: list[tuple[float, str]] = []
        self._nodes: dict[str, tuple[NodeInfo, float]] = {}

    async def register(self, change: RegisterChange) -> list[Binding]:
        current = self._bindings.get(change.aor, [])
        updated = apply_register(current, change)
        self._store(change.aor, current, updated)
        if updated:
            heapq.heappush(self._expiry_heap, (max(b.expires_at for b in updated), change.aor))
        self._free_expired(change.now)
        return by_preference(updated)

    async def lookup(self, aor: str) -> list[Binding]:
        now = time.time()
        return by_preference([b for b in self._bindings.get(aor, ()) if b.expires_at > now])

    async def remove_connection(self, node_id: str, connection_id: str) -> list[Binding]:
        now = time.time()
        aors = self._flows.get(node_id, {}).get(connection_id, set())
        removed: list[Binding] = []
        for aor in list(aors):
            current = self._bindings.get(aor, [])
            kept, dropped = close_flow(current, node_id, connection_id)
            removed.extend(b for b in dropped if b.expires_at > now)
            self._store(aor, current, kept)
        return removed

    async def forget_push(self, aor: str, prid: str) -> bool:
        current = self._bindings.get(aor, [])
        kept = drop_push(current, prid)
        if kept == current:
            return False
        self._store(aor, current, kept)
        return True

    async def announce_node(self, info: NodeInfo, ttl: float) -> None:
        self._nodes[info.node_id] = (info, time.time() + ttl)

    async def live_nodes(self) -> dict[str, NodeInfo]:
        now = time.time()
        return {node_id: info for node_id, (info, until) in self._nodes.items() if until > now}

    async def purge_dead_nodes(self) -> int:
        now = time.time()
        dead = [node_id for node_id, (_, until) in self._nodes.items() if until <= now]
        purged = 0
        for node_id in dead:
            for connection_id in list(self._flows.get(node_id, {})):
                purged += len(await self.remove_connection(node_id, connection_id))
            del self._nodes[node_id]
        self._free_expired(now)
        return purged

    async def count(self) -> int:
        now = time.time()
        return sum(
            1 for bindings in self._bindings.values() for b in bindings if b.expires_at > now
        )

    async def close(self) -> None:
        self._bindings.clear()
        self._flows.clear()
        self._expiry_heap.clear()
        self._nodes.clear()

    def _store(self, aor: str, old: list[Binding], new: list[Binding]) -> None:
        if new:
            self._bindings[aor] = new
        else:
            self._bindings.pop(aor, None)
        # A sleeping push binding has no flow to index.
        new_flows = {(b.node_id, b.connection_id) for b in new if b.connection_id != ASLEEP}
        old_flows = {(b.node_id, b.connection_id) for b in old if b.connection_id != ASLEEP}
        if new_flows == old_flows:
            return  # a refresh over the same flows (the usual REGISTER): the index holds them
        for node_id, connection_id in old_flows - new_flows:
            node_flows = self._flows.get(node_id, {})
            aors = node_flows.get(connection_id)
            if aors is not None:
                aors.discard(aor)
                if not aors:
                    del node_flows[connection_id]
        for node_id, connection_id in new_flows:
            self._flows.setdefault(node_id, {}).setdefault(connection_id, set()).add(aor)

    def _free_expired(self, now: float) -> None:
        heap = self._expiry_heap
        while heap and heap[0][0] <= now:
            _, aor = heapq.heappop(heap)
            current = self._bindings.get(aor)
            if current:
                self._store(aor, current, [b for b in current if b.expires_at > now])
