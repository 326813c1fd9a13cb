"""This node's last known state of the AoRs it wrote: lets a refresh skip the read round trip."""

from __future__ import annotations

from .model import Binding


class AorCache:
    """AoR → (version, bindings) as of this node's last successful write or read, bounded.

    Only a guess: the Redis write is a compare-and-set on the version, so a stale entry costs
    one extra round trip (the failed write returns the current state), never a lost update.
    Evicts the least recently written AoR when full.
    """

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"AoR cache needs room for at least one entry, got {max_entries}")
        self._max_entries = max_entries
        self._entries: dict[str, tuple[str, list[Binding]]] = {}

    def get(self, aor: str) -> tuple[str, list[Binding]] | None:
        return self._entries.get(aor)

    def put(self, aor: str, version: str, bindings: list[Binding]) -> None:
        # Re-inserted so that dict order is write order and the first entry the one to evict.
        self._entries.pop(aor, None)
        if not bindings:
            return  # the AoR's key is gone from Redis; a miss guesses exactly that
        if len(self._entries) >= self._max_entries:
            del self._entries[next(iter(self._entries))]
        self._entries[aor] = (version, bindings)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
