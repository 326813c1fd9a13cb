"""Location service in Redis, shared by every gateway node of a cluster.

Key schema (`ws2sip` is the configurable key prefix; `{...}` is a Redis Cluster hash tag, so
every multi-key operation below touches a single slot):

``ws2sip:loc:{<aor>}``  HASH
    binding key (`Binding.key`) → binding as compact JSON (see codec.py), plus the field
    ``~version`` (binding keys start with "contact " or "instance ", so it cannot collide): a
    token unique to each write. PEXPIREAT is the latest binding expiry, so the key, version
    included, vanishes with its last binding; earlier-expiring entries are dropped on every
    read and write (Redis 7.0 has no per-field HEXPIRE).
    Written only by the compare-and-set script `_CAS_SCRIPT`: `apply_register` runs here on the
    bindings of a known version, and the script replaces the whole hash only if that version is
    still the stored one; otherwise it answers the current version and bindings and the change
    is recomputed on them. Tokens are never reused, so a key that expired and was re-created
    meanwhile cannot pass for the version this node saw (no ABA).
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
(its writes are pipelined right behind the AoR's compare-and-set, outside it, as it lives in another
slot; a Redis Cluster client would send them to that slot's node),
so whoever uses it re-checks node and connection on the binding itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
import secrets
import time
from collections.abc import Callable
from typing import Any, cast

import hiredis
import redis.asyncio as aioredis

from .aor_cache import AorCache
from .base import LocationService
from .codec import decode_binding, decode_node, encode_binding, encode_node
from .keyed_lock import KeyedLock
from .model import (
    Binding,
    NodeInfo,
    OutOfOrderRegister,
    RegisterChange,
    apply_register,
    by_preference,
    close_flow,
    drop_push,
)
from .resp_pipe import Command, RespPipe

# Optimistic transactions on one AoR only collide when its own devices register at the same
# instant; this bound turns a pathological livelock into an error instead of a hang.
_MAX_ATTEMPTS = 64
_SCAN_BATCH = 500
# Connections to Redis for everything but register/lookup: requests beyond this wait for a free
# one (BlockingConnectionPool) rather than fail; the timeout bounds the wait.
POOL_SIZE = 8
POOL_WAIT_SECONDS = 10.0
# Bound on one pipelined request of the hot path (register, lookup, remove_connection).
REQUEST_TIMEOUT_SECONDS = 10.0
# AoRs whose last written state this node remembers (a refresh then needs no read): a few
# hundred bytes each, so the default bounds the cache to some tens of MB.
AOR_CACHE_ENTRIES = 100_000
_VERSION_FIELD = "~version"
# Called with no ARGV: a read. Else ARGV = expected version ('' for none), new version,
# PEXPIREAT in unix ms, then binding key/JSON pairs (none: the AoR is emptied).
# Answers 1 when written, else {current version, current binding JSONs}.
_CAS_SCRIPT = """
local stored = redis.call('HGET', KEYS[1], ARGV_VERSION_FIELD)
if not stored then
  stored = redis.call('EXISTS', KEYS[1]) == 1 and '~unversioned' or ''
end
if #ARGV == 0 or stored ~= ARGV[1] then
  local fields = redis.call('HGETALL', KEYS[1])
  local bindings = {}
  for i = 1, #fields, 2 do
    if fields[i] ~= ARGV_VERSION_FIELD then bindings[#bindings + 1] = fields[i + 1] end
  end
  return {stored, bindings}
end
redis.call('DEL', KEYS[1])
if #ARGV > 3 then
  redis.call('HSET', KEYS[1], ARGV_VERSION_FIELD, ARGV[2], unpack(ARGV, 4))
  redis.call('PEXPIREAT', KEYS[1], ARGV[3])
end
return 1
""".replace("ARGV_VERSION_FIELD", repr(_VERSION_FIELD))
_CAS_SHA = hashlib.sha1(_CAS_SCRIPT.encode()).hexdigest()


class LocationContention(RuntimeError):
    """An AoR changed under every one of the bounded optimistic-transaction attempts."""


class RedisLocationService(LocationService):
    def __init__(
        self, url: str, *, key_prefix: str = "ws2sip", aor_cache_entries: int = AOR_CACHE_ENTRIES
    ) -> None:
        self._redis = aioredis.Redis.from_pool(
            aioredis.BlockingConnectionPool.from_url(
                url, max_connections=POOL_SIZE, timeout=POOL_WAIT_SECONDS, decode_responses=True
            )
        )
        self._pipe = RespPipe(url, timeout=REQUEST_TIMEOUT_SECONDS)
        self._prefix = key_prefix
        self._nodes_key = f"{key_prefix}:nodes"
        self._aor_cache = AorCache(aor_cache_entries)
        # Writers of one AoR on this node take turns: each then starts from the state its
        # predecessor wrote, so they never collide with one another, only with other nodes.
        self._aor_turns = KeyedLock()
        # Version tokens: a random prefix per instance and a counter, unique across the cluster
        # without a round trip.
        self._version_prefix = secrets.token_hex(8)
        self._version_counter = itertools.count()

    async def register(self, change: RegisterChange) -> list[Binding]:
        updated = await self._transact(
            change.aor,
            lambda current: apply_register(current, change),
            change.now,
            lambda written: self._flow_index_commands(change, written),
        )
        return by_preference(updated)

    async def lookup(self, aor: str) -> list[Binding]:
        _, stored = await self._read(self._aor_key(aor))
        now = time.time()
        return by_preference([b for b in stored if b.expires_at > now])

    async def remove_connection(self, node_id: str, connection_id: str) -> list[Binding]:
        flow_key = self._flow_key(node_id, connection_id)
        removed: list[Binding] = []
        for aor in await self._text_members(flow_key):
            removed.extend(await self._remove_flow_bindings(aor, node_id, connection_id))
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(flow_key)
            pipe.zrem(self._flows_key(node_id), connection_id)
            await pipe.execute()
        return removed

    async def forget_push(self, aor: str, prid: str) -> bool:
        changed = False

        def forget(current: list[Binding]) -> list[Binding]:
            nonlocal changed
            kept = drop_push(current, prid)  # the same objects when nothing changed
            changed = kept != current
            return kept

        await self._transact(aor, forget, time.time())
        return changed

    async def announce_node(self, info: NodeInfo, ttl: float) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self._node_key(info.node_id), encode_node(info), px=max(1, round(ttl * 1000)))
            pipe.sadd(self._nodes_key, info.node_id)
            pipe.zremrangebyscore(self._flows_key(info.node_id), "-inf", _unix_ms(time.time()))
            await pipe.execute()

    async def _text_members(self, key: str) -> set[str]:
        # The pool decodes replies (decode_responses=True), so members are text; redis-py's
        # types allow bytes or str, whichever mode the client runs in.
        return cast("set[str]", await self._redis.smembers(key))

    async def live_nodes(self) -> dict[str, NodeInfo]:
        node_ids = sorted(await self._text_members(self._nodes_key))
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
        node_ids = sorted(await self._text_members(self._nodes_key))
        async with self._redis.pipeline(transaction=False) as pipe:
            for node_id in node_ids:
                pipe.exists(self._node_key(node_id))
            alive = await pipe.execute()
        purged = 0
        for node_id, is_alive in zip(node_ids, alive, strict=True):
            if is_alive:
                continue
            flows_key = self._flows_key(node_id)
            # Text, as _text_members says; without scores, zrange gives the members alone.
            connection_ids = cast("list[str]", await self._redis.zrange(flows_key, 0, -1))
            for connection_id in connection_ids:
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
        self._aor_cache.clear()
        await self._pipe.close()
        await self._redis.aclose()

    async def _transact(
        self,
        aor: str,
        mutate: Callable[[list[Binding]], list[Binding]],
        now: float,
        after_commit: Callable[[list[Binding]], list[Command]] = lambda _: [],
    ) -> list[Binding]:
        """Read-modify-write of one AoR by compare-and-set; the result of `mutate` is written whole.

        `mutate` gets the unexpired bindings and returns the new list; returning the very same
        binding objects means "no change" and skips the write. `after_commit` gives commands
        sent right behind the write, outside its atomicity (the flow index: another slot).

        `mutate` first runs on this node's cached state of the AoR (or, unknown, on none, which
        is right for a new AoR), so the common REGISTER costs one round trip: the write. A stale
        guess makes the write fail and return the current state, and `mutate` runs again on it.
        Only an answer computed from state just read from Redis is returned without a write
        (a fetch) or raised (an out-of-order CSeq), since the cache may be stale.
        Sent through RespPipe rather than redis-py, which costs several times the CPU per round
        trip (see resp_pipe.py).
        """
        async with self._aor_turns.hold(aor):
            return await self._compare_and_set(aor, mutate, now, after_commit)

    async def _compare_and_set(
        self,
        aor: str,
        mutate: Callable[[list[Binding]], list[Binding]],
        now: float,
        after_commit: Callable[[list[Binding]], list[Command]],
    ) -> list[Binding]:
        key = self._aor_key(aor)
        cached = self._aor_cache.get(aor)
        version, stored = cached if cached is not None else ("", [])
        fresh = False
        collisions = 0
        for _ in range(_MAX_ATTEMPTS):
            try:
                updated = mutate([b for b in stored if b.expires_at > now])
            except OutOfOrderRegister:
                if fresh:
                    raise
                version, stored, fresh = *await self._read(key), True
                continue
            if len(updated) == len(stored) and all(
                new is old for new, old in zip(updated, stored, strict=True)
            ):
                if fresh:
                    return updated
                version, stored, fresh = *await self._read(key), True
                continue
            written = self._next_version()
            arguments: list[str | int] = [version, written]
            if updated:
                arguments.append(_unix_ms(max(b.expires_at for b in updated)))
                arguments.extend(item for b in updated for item in (b.key, encode_binding(b)))
            else:
                arguments.append(0)
            outcome = await self._call_cas(key, arguments, after_commit(updated))
            if outcome == 1:
                self._aor_cache.put(aor, written, updated)
                return updated
            if fresh:
                # Another node's writer won against state just read. Growing jitter spreads
                # the nodes writing a hot AoR apart so the next round has a winner.
                collisions += 1
                await asyncio.sleep(random.uniform(0, 0.0005 * collisions))
            version, stored = _decode_state(outcome)
            fresh = True
        raise LocationContention(
            f"AoR {aor} kept changing during {_MAX_ATTEMPTS} compare-and-set attempts"
        )

    async def _read(self, key: str) -> tuple[str, list[Binding]]:
        return _decode_state(await self._call_cas(key, [], []))

    async def _call_cas(
        self, key: str, arguments: list[str | int], followers: list[Command]
    ) -> Any:
        """`_CAS_SCRIPT` on `key`, `followers` pipelined behind it; the script's answer.

        Loads the script and calls again when Redis does not know it (first use, or after a
        restart or SCRIPT FLUSH).
        """
        call: Command = ("EVALSHA", _CAS_SHA, 1, key, *arguments)
        replies = await self._pipe.execute([call, *followers])
        if isinstance(replies[0], hiredis.ReplyError) and str(replies[0]).startswith("NOSCRIPT"):
            replies = (await self._pipe.execute([("SCRIPT", "LOAD", _CAS_SCRIPT), call]))[1:]
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise RuntimeError(f"Redis refused a location write on {key}: {reply}")
        return replies[0]

    def _next_version(self) -> str:
        return f"{self._version_prefix}.{next(self._version_counter)}"

    async def _remove_flow_bindings(
        self, aor: str, node_id: str, connection_id: str
    ) -> list[Binding]:
        removed: list[Binding] = []

        def drop_flow(current: list[Binding]) -> list[Binding]:
            # Rebuilt on every attempt: only the attempt that commits may report removals.
            kept, dropped = close_flow(current, node_id, connection_id)
            removed[:] = dropped
            return kept  # the same objects when nothing was on that flow: no write

        await self._transact(aor, drop_flow, time.time())
        return removed

    def _flow_index_commands(self, change: RegisterChange, written: list[Binding]) -> list[Command]:
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
                pipe.hgetall(key)
            per_key = await pipe.execute()
        return sum(
            1
            for stored in per_key
            for field, text in stored.items()
            if field != _VERSION_FIELD and decode_binding(text).expires_at > now
        )

    def _aor_key(self, aor: str) -> str:
        return f"{self._prefix}:loc:{{{aor}}}"

    def _node_key(self, node_id: str) -> str:
        return f"{self._prefix}:node:{{{node_id}}}"

    def _flows_key(self, node_id: str) -> str:
        return f"{self._prefix}:node:{{{node_id}}}:flows"

    def _flow_key(self, node_id: str, connection_id: str) -> str:
        return f"{self._prefix}:node:{{{node_id}}}:flow:{connection_id}"


def _decode_state(answer: list[Any]) -> tuple[str, list[Binding]]:
    version, stored = answer
    return version, [decode_binding(text) for text in stored]


def _unix_ms(unix_time: float) -> int:
    return int(unix_time * 1000)
