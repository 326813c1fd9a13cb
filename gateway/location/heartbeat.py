"""Keeps this node announced in the location service and reaps the bindings of dead nodes."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .base import LocationService
from .model import NodeInfo

log = logging.getLogger(f"ws2sip.{__name__}")


class NodeHeartbeat:
    """Announces `info` every `interval` seconds with a `ttl` and purges dead nodes each round.

    `ttl` should be a few intervals, so one slow round does not make this node look dead.
    """

    def __init__(
        self, location: LocationService, info: NodeInfo, interval: float = 5.0, ttl: float = 15.0
    ) -> None:
        if ttl <= interval:
            raise ValueError(f"heartbeat ttl {ttl}s must exceed its interval {interval}s")
        self._location = location
        self._info = info
        self._interval = interval
        self._ttl = ttl
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Announce once before returning, so the node is live before it accepts registrations."""
        if self._task is not None:
            raise RuntimeError(f"heartbeat of node {self._info.node_id} already started")
        await self._location.announce_node(self._info, self._ttl)
        self._task = asyncio.create_task(self._run(), name=f"heartbeat:{self._info.node_id}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._location.announce_node(self._info, self._ttl)
                purged = await self._location.purge_dead_nodes()
            except Exception:
                # A Redis hiccup must not end the heartbeat: the next round retries.
                log.exception("heartbeat of node %s failed", self._info.node_id)
                continue
            if purged:
                log.info("purged %d bindings of dead nodes", purged)
