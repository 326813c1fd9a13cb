"""Location service in Redis, shared by every gateway node of a cluster.

Key schema (`ws2sip` is the configurable key prefix; `{...}` is a Redis Cluster hash tag, so
every multi-key operation below touches a single slot):

``ws2sip:loc:{<aor>}``  HASH
    binding key (`Binding.key`) → binding as compact JSON (see codec.py). PEXPIREAT is the
    latest binding expiry, so the key vanishes with its last binding; earlier-expiring entries
    are dropped on every read and write (Redis 7.0 has no per-field HEXPIRE).
    Written only inside WATCH/MULTI/EXEC around `apply_register`, retried on WatchError.
``ws2sip:node:{<node_id>}``  STRING
    the node's heartbeat: NodeInfo as JSON, PX = heartbeat ttl.
``ws2sip:node:{<node_id>}:flows``  ZSET
    connection id → latest expiry (unix ms) of a binding registered over it; entries past
    their score are trimmed by the node's own heartbeat.
``ws2sip:node:{<node_id>}:flow:<connection_id>``  SET
    AoRs with a binding on that flow; PEXPIREAT = latest such binding expiry.
``ws2sip:nodes``  SET
    ids of the nodes that announced themselves and were not purged yet; a member without a
    heartbeat key is dead and `purge_dead_nodes` drops its bindings.

The flow index is a hint: it may name AoRs whose binding has since moved or been removed
(its writes follow the AoR transaction's EXEC outside the transaction, as it lives in another
slot; a Redis Cluster client would send them to that slot's node),
so whoever uses it re-checks node and connection on the binding itself.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

from .base import LocationService
from .codec import decode_binding, decode_node, encode_binding, encode_node
from .model import Binding, NodeInfo, RegisterChange, apply_register, by_preference

# Optimistic transactions on one AoR only collide when its own devices register at the same
# instant; this bound turns a pathological livelock into an error instead of a hang.
_MAX_ATTEMPTS = 64
_SCAN_BATCH = 500
# Connections to Redis: requests beyond this wait for a free one (BlockingConnectionPool) rather
# than fail, so a burst of REGISTERs queues instead of getting 503s; the timeout bounds the wait.
POOL_SIZE = 32
POOL_WAIT_SECONDS = 10.0


class LocationContention(RuntimeError):
    """An AoR changed under every one of the bounded optimistic-transaction attempts."""


class RedisLocationService(LocationService):
    def __init__(self, url: str, *, key_prefix: str = "ws2sip") -> None:
        self._redis = aioredis.Redis.from_pool(
            aioredis.BlockingConnectionPool.from_url(
                url, max_connections=POOL_SIZE, timeout=POOL_WAIT_SECONDS, decode_responses=True
            )
        )
        self._prefix = key_prefix
        self._nodes_key = f"{key_prefix}:nodes"

    async def register(self, change: RegisterChange) -> list[Binding]:
        updated = await self._transact(
            change.aor,
            lambda current: apply_register(current, change),
            change.now,
            lambda written: self._flow_index_commands(change, written),
        )
        return by_preference(updated)

    async def lookup(self, aor: str) -> list[Binding]:
        now = time.time()
        stored = await self._redis.hvals(self._aor_key(aor))
        return by_preference([b for b in map(decode_binding, stored) if b.expires_at > now])

    async def remove_connection(self, node_id: str, connection_id: str) -> list[Binding]:
        flow_key = self._flow_key(node_id, connection_id)
        removed: list[Binding] = []
        for aor in await self._redis.smembers(flow_key):
            removed.extend(await self._remove_flow_bindings(aor, node_id, connection_id))
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(flow_key)
            pipe.zrem(self._flows_key(node_id), connection_id)
            await pipe.execute()
        return removed

    async def announce_node(self, info: NodeInfo, ttl: float) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self._node_key(info.node_id), encode_node(info), px=max(1, round(ttl * 1000)))
            pipe.sadd(self._nodes_key, info.node_id)
            pipe.zremrangebyscore(self._flows_key(info.node_id), "-inf", _unix_ms(time.time()))
            await pipe.execute()

    async def live_nodes(self) -> dict[str, NodeInfo]:
        node_ids = sorted(await self._redis.smembers(self._nodes_key))
        async with self._redis.pipeline(transaction=False) as pipe:
            for node_id in node_ids:
                pipe.get(self._node_key(node_id))
            records = await pipe.execute()
        return {
            node_id: decode_node(record)
            for node_id, record in zip(node_ids, records, strict=True)
            if record is not None
        }

    async def purge_dead_nodes(self) -> int:
        node_ids = sorted(await self._redis.smembers(self._nodes_key))
        async with self._redis.pipeline(transaction=False) as pipe:
            for node_id in node_ids:
                pipe.exists(self._node_key(node_id))
            alive = await pipe.execute()
        purged = 0
        for node_id, is_alive in zip(node_ids, alive, strict=True):
            if is_alive:
                continue
            flows_key = self._flows_key(node_id)
            for connection_id in await self._redis.zrange(flows_key, 0, -1):
                purged += len(await self.remove_connection(node_id, connection_id))
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.delete(flows_key)
                pipe.srem(self._nodes_key, node_id)
                await pipe.execute()
        return purged

    async def count(self) -> int:
        """Live bindings across all AoRs: a SCAN of the whole key space, meant for metrics."""
        now = time.time()
        live = 0
        batch: list[str] = []
        async for key in self._redis.scan_iter(match=f"{self._prefix}:loc:*", count=_SCAN_BATCH):
            batch.append(key)
            if len(batch) >= _SCAN_BATCH:
                live += await self._count_live(batch, now)
                batch = []
        if batch:
            live += await self._count_live(batch, now)
        return live

    async def close(self) -> None:
        await self._redis.aclose()

    async def _transact(
        self,
        aor: str,
        mutate: Callable[[list[Binding]], list[Binding]],
        now: float,
        after_commit: Callable[[list[Binding]], list[tuple[object, ...]]] = lambda _: [],
    ) -> list[Binding]:
        """Read-modify-write of one AoR under WATCH; the result of `mutate` is written as a whole.

        `mutate` gets the unexpired bindings and returns the new list; returning the very same
        binding objects means "no change" and skips the write. `after_commit` gives commands
        sent right behind EXEC, outside the transaction (the flow index: another slot).

        Hand-driven rather than redis-py's Pipeline, which spends a round trip on WATCH and one on
        each read under it: here WATCH+HVALS is one round trip and MULTI..EXEC plus the index
        update another, which halves the CPU a REGISTER costs the gateway.
        """
        key = self._aor_key(aor)
        pool = self._redis.connection_pool
        connection = await pool.get_connection()
        try:
            for attempt in range(_MAX_ATTEMPTS):
                watched = await _round_trip(connection, [("WATCH", key), ("HVALS", key)])
                stored = [decode_binding(text) for text in watched[1]]
                updated = mutate([b for b in stored if b.expires_at > now])
                if len(updated) == len(stored) and all(
                    new is old for new, old in zip(updated, stored, strict=True)
                ):
                    await _round_trip(connection, [("UNWATCH",)])
                    return updated
                commands: list[tuple[object, ...]] = [("MULTI",), ("DEL", key)]
                if updated:
                    fields = [item for b in updated for item in (b.key, encode_binding(b))]
                    latest = _unix_ms(max(b.expires_at for b in updated))
                    commands += [("HSET", key, *fields), ("PEXPIREAT", key, latest)]
                commands.append(("EXEC",))
                followers = after_commit(updated)
                replies = await _round_trip(connection, commands + followers)
                if replies[len(commands) - 1] is not None:
                    return updated
                # EXEC answered nil: the AoR changed since WATCH. Jitter spreads the writers of a
                # hot AoR apart so the next round has a winner instead of the same collision.
                await asyncio.sleep(random.uniform(0, 0.0005 * attempt))
        except BaseException:
            # The connection may hold a WATCH, an open MULTI or unread replies: never reuse it.
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)
        raise LocationContention(
            f"AoR {aor} kept changing during {_MAX_ATTEMPTS} optimistic transaction attempts"
        )

    async def _remove_flow_bindings(
        self, aor: str, node_id: str, connection_id: str
    ) -> list[Binding]:
        removed: list[Binding] = []

        def drop_flow(current: list[Binding]) -> list[Binding]:
            # Rebuilt on every attempt: only the attempt that commits may report removals.
            removed.clear()
            kept = []
            for b in current:
                if b.node_id == node_id and b.connection_id == connection_id:
                    removed.append(b)
                else:
                    kept.append(b)
            return kept

        await self._transact(aor, drop_flow, time.time())
        return removed

    def _flow_index_commands(
        self, change: RegisterChange, written: list[Binding]
    ) -> list[tuple[object, ...]]:
        on_this_flow = [
            b.expires_at
            for b in written
            if b.connection_id == change.connection_id and b.node_id == change.node_id
        ]
        if not on_this_flow:
            return []
        flow_key = self._flow_key(change.node_id, change.connection_id)
        expires_ms = _unix_ms(max(on_this_flow))
        return [
            ("ZADD", self._flows_key(change.node_id), "GT", expires_ms, change.connection_id),
            ("SADD", flow_key, change.aor),
            # NX sets the first expiry of a new set, GT only ever extends it: another AoR on the
            # same flow may hold a longer registration.
            ("PEXPIREAT", flow_key, expires_ms, "NX"),
            ("PEXPIREAT", flow_key, expires_ms, "GT"),
        ]

    async def _count_live(self, keys: list[str], now: float) -> int:
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hvals(key)
            per_key = await pipe.execute()
        return sum(
            1 for stored in per_key for text in stored if decode_binding(text).expires_at > now
        )

    def _aor_key(self, aor: str) -> str:
        return f"{self._prefix}:loc:{{{aor}}}"

    def _node_key(self, node_id: str) -> str:
        return f"{self._prefix}:node:{{{node_id}}}"

    def _flows_key(self, node_id: str) -> str:
        return f"{self._prefix}:node:{{{node_id}}}:flows"

    def _flow_key(self, node_id: str, connection_id: str) -> str:
        return f"{self._prefix}:node:{{{node_id}}}:flow:{connection_id}"


async def _round_trip(connection: Connection, commands: list[tuple[object, ...]]) -> list[Any]:
    """Send `commands` in one write and read one reply each; a Redis error reply raises."""
    await connection.send_packed_command(connection.pack_commands(commands))
    return [await connection.read_response() for _ in commands]


def _unix_ms(unix_time: float) -> int:
    return int(unix_time * 1000)
