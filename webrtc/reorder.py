"""Puts one-packet-per-frame audio back in RTP sequence order before it is decoded.

aiortc's JitterBuffer is built for video, whose frames span several packets: it releases at
most one frame per packet added, and after a lost packet it waits until it is full before
moving on. Fed an audio stream, one lost packet therefore leaves every later frame held back
for the rest of the call (8 packets, 160 ms, measured with bench/media_load.py --transcode).
Here a gap is waited for a few packets only, then skipped, and everything in order behind it
is released at once.
"""

from __future__ import annotations

from typing import Generic, TypeVar

Item = TypeVar("Item")

_SEQUENCE_SPACE = 1 << 16
_HALF_SPACE = _SEQUENCE_SPACE // 2


class ReorderBuffer(Generic[Item]):
    def __init__(self, *, max_wait: int = 3, resync_after: int = 100) -> None:
        """max_wait: packets held behind a gap before it is given up as lost.
        resync_after: a jump further ahead than this is a restarted sender, not loss."""
        self._max_wait = max_wait
        self._resync_after = resync_after
        self._pending: dict[int, Item] = {}
        self._next: int | None = None

    def push(self, sequence: int, item: Item) -> list[Item]:
        """Items now in order, oldest first (none while a gap is still awaited)."""
        if self._next is None:
            self._next = sequence
        ahead = (sequence - self._next) % _SEQUENCE_SPACE
        if ahead >= _HALF_SPACE:
            return []  # older than what was already released: a late duplicate or straggler
        if ahead > self._resync_after:
            self._pending.clear()
            self._next = sequence
        self._pending[sequence] = item
        released = self._release_in_order()
        if not released and len(self._pending) > self._max_wait:
            self._next = min(self._pending, key=self._distance)
            released = self._release_in_order()
        return released

    def _distance(self, sequence: int) -> int:
        assert self._next is not None
        return (sequence - self._next) % _SEQUENCE_SPACE

    def _release_in_order(self) -> list[Item]:
        released: list[Item] = []
        pending = self._pending
        sequence = self._next
        assert sequence is not None
        while sequence in pending:
            released.append(pending.pop(sequence))
            sequence = (sequence + 1) % _SEQUENCE_SPACE
        self._next = sequence
        return released
