"""One Redis connection shared by all callers, requests pipelined: the REGISTER hot path.

Why not redis-py here: measured in bench/location_bench.py, one round trip through redis-py's
asyncio connection pool (BlockingConnectionPool, per-reply timeouts, Python RESP packing) cost
the gateway 110-120 µs of CPU, most of a REGISTER's budget, and under a burst its pool queues
callers behind a Condition. This keeps one socket, packs with hiredis.pack_command, parses with
hiredis.Reader and matches replies to callers first-in first-out (Redis answers in order).
Everything else in the location service still uses redis-py.

Behind Sentinel (`redis+sentinel://`) the pipe asks redis-py's Sentinel client for the master's
address whenever it (re)connects, and drops its connection on a READONLY reply (it reached a
demoted master), so the next request finds the new master. While no master is known (a failover
in progress), connecting retries for up to `reconnect_wait` seconds before it fails.

A Redis Cluster (`redis+cluster://`) is served by ClusterPipe instead: the same `execute`
contract, one RespPipe per master, each command sent to the master redis-py's RedisCluster maps
its key's slot to.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, cast
from urllib.parse import quote

import hiredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import parse_url
from redis.exceptions import NoScriptError, RedisError, ResponseError

from ..redis_connect import RedisKind, RedisTarget, parse_redis_url, sentinel_for

# Between attempts to reach a master while Sentinel has none to name (a failover in progress).
RECONNECT_PAUSE_SECONDS = 0.1
_READONLY = "READONLY"
_REDIRECTIONS = ("MOVED", "ASK")

Command = tuple[str | int | float | bytes, ...]


class RespPipeError(ConnectionError):
    """The connection to Redis failed or closed with requests unanswered."""


class _RespProtocol(asyncio.Protocol):
    def __init__(self, address: str) -> None:
        self._address = address
        self._reader = hiredis.Reader(encoding="utf-8")
        # per request in flight: its future, how many replies it waits for, those read so far
        self._waiting: deque[tuple[asyncio.Future[list[Any]], int, list[Any]]] = deque()
        self._transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self._transport = cast(asyncio.Transport, transport)

    def send(self, commands: list[Command], future: asyncio.Future[list[Any]]) -> None:
        if self._transport is None or self.closed:
            raise RespPipeError(f"Redis connection to {self._address} is closed")
        self._waiting.append((future, len(commands), []))
        # hiredis's stub types the command as a 1-tuple (Tuple[X], not Tuple[X, ...]).
        packed = map(hiredis.pack_command, commands)  # type: ignore[arg-type]
        self._transport.write(b"".join(packed))

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            if isinstance(reply, hiredis.ReplyError) and str(reply).startswith(_READONLY):
                # A demoted master (Sentinel failed over): later requests must go to the new
                # one, so this connection is done; its callers see the error reply.
                self.close()
            future, expected, replies = self._waiting[0]
            replies.append(reply)
            if len(replies) == expected:
                self._waiting.popleft()
                if not future.done():  # a caller that timed out or was cancelled
                    future.set_result(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self._waiting:
            future, _, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(
                    RespPipeError(f"Redis connection to {self._address} lost: {exc or 'closed'}")
                )

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()


class RespPipe:
    """`execute` sends commands in one write and returns their replies, error replies included
    as hiredis.ReplyError values. Connects on first use and again after the connection broke.
    """

    def __init__(self, url: str, *, timeout: float, reconnect_wait: float = 0.0) -> None:
        self._target = parse_redis_url(url)
        if self._target.kind is RedisKind.CLUSTER:
            raise ValueError("a Redis Cluster is served by ClusterPipe, not RespPipe")
        self._setup: list[Command] = []
        if self._target.kind is RedisKind.SENTINEL:
            self._sentinel = sentinel_for(self._target)
            username, password = self._target.username, self._target.password
            db = self._target.db
        else:
            settings = parse_url(url)
            self._host = settings.get("host", "127.0.0.1")
            self._port = int(settings.get("port", 6379))
            username, password = settings.get("username"), settings.get("password")
            db = int(settings.get("db") or 0)
        if password:
            self._setup.append(("AUTH", username, password) if username else ("AUTH", password))
        if db:
            self._setup.append(("SELECT", db))
        self._timeout = timeout
        self._reconnect_wait = reconnect_wait
        self._protocol: _RespProtocol | None = None
        self._connecting = asyncio.Lock()

    async def execute(self, commands: list[Command]) -> list[Any]:
        # send + replies inline: this is the REGISTER path's every round trip.
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connect()
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        protocol.send(commands, future)
        async with asyncio.timeout(self._timeout):
            return await future

    async def send(self, commands: list[Command]) -> asyncio.Future[list[Any]]:
        """Write the commands (connecting first if need be: only then does this suspend) and
        return the future of their replies, for `replies`. ClusterPipe writes to several
        nodes before it waits for any."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connect()
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        protocol.send(commands, future)
        return future

    async def replies(self, future: asyncio.Future[list[Any]]) -> list[Any]:
        async with asyncio.timeout(self._timeout):
            return await future

    async def load_script(self, script: str) -> None:
        (reply,) = await self.execute([("SCRIPT", "LOAD", script)])
        if isinstance(reply, hiredis.ReplyError):
            raise RespPipeError(f"Redis refused to load a script: {reply}")

    async def close(self) -> None:
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None

    async def _connect(self) -> _RespProtocol:
        # Set before queueing for the lock: callers that waited out a failed attempt of
        # another then try once more, not for a whole window each.
        deadline = time.monotonic() + self._reconnect_wait
        async with self._connecting:
            if self._protocol is not None and not self._protocol.closed:
                return self._protocol  # another caller connected while this one waited
            while True:
                try:
                    self._protocol = await self._open()
                    return self._protocol
                except (OSError, RedisError, TimeoutError) as error:
                    if time.monotonic() + RECONNECT_PAUSE_SECONDS > deadline:
                        raise RespPipeError(f"no Redis to send to: {error}") from error
                await asyncio.sleep(RECONNECT_PAUSE_SECONDS)

    async def _address(self) -> tuple[str, int]:
        if self._target.kind is RedisKind.SENTINEL:
            # Raises MasterNotFoundError (a ConnectionError) while no Sentinel names a healthy
            # master, e.g. between the master's death and the promotion of its replica.
            host, port = await self._sentinel.discover_master(self._target.service)
            return str(host), int(port)
        return self._host, self._port

    async def _open(self) -> _RespProtocol:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._timeout):
            host, port = await self._address()
            address = f"{host}:{port}"
            _, protocol = await loop.create_connection(lambda: _RespProtocol(address), host, port)
            if self._setup:
                future: asyncio.Future[list[Any]] = loop.create_future()
                protocol.send(self._setup, future)
                for reply in await future:
                    if isinstance(reply, hiredis.ReplyError):
                        protocol.close()
                        raise RespPipeError(f"Redis at {address} refused setup: {reply}")
        return protocol


class ClusterPipe:
    """RespPipe's contract on a Redis Cluster: each command goes, on a RespPipe of its own, to
    the master that redis-py's RedisCluster maps its key's slot to (commands for several nodes
    are sent to each at once). A MOVED or ASK reply (the slot map changed: resharding, a
    replica promoted) means the command was not run: the whole request is then sent again
    through RedisCluster itself, which follows redirections and failovers, and the map is
    refreshed for the next one."""

    def __init__(self, cluster: RedisCluster, target: RedisTarget, *, timeout: float) -> None:
        self._cluster = cluster
        self._target = target
        self._timeout = timeout
        self._pipes: dict[tuple[str, int], RespPipe] = {}
        self._initialized = False

    async def execute(self, commands: list[Command]) -> list[Any]:
        if not self._initialized:
            await self._cluster.initialize()
            self._initialized = True
        by_node: dict[tuple[str, int], list[int]] = {}
        for index, command in enumerate(commands):
            node = self._cluster.get_node_from_key(str(_key_of(command)))
            if node is None:
                return await self._through_redis_py(commands)
            by_node.setdefault((node.host, int(node.port)), []).append(index)
        replies: list[Any] = [None] * len(commands)
        sent = [(self._pipe(address), indexes,
                 await self._pipe(address).send([commands[i] for i in indexes]))
                for address, indexes in by_node.items()]
        for pipe, indexes, future in sent:
            for index, reply in zip(indexes, await pipe.replies(future), strict=True):
                replies[index] = reply
        redirected = [index for index, reply in enumerate(replies)
                      if isinstance(reply, hiredis.ReplyError)
                      and str(reply).startswith(_REDIRECTIONS)]
        if redirected:
            # Those did not run (the others did, and keep their replies): redis-py follows
            # the redirection, and the slot map is read again before the next request.
            self._initialized = False
            again = await self._through_redis_py([commands[i] for i in redirected])
            for index, reply in zip(redirected, again, strict=True):
                replies[index] = reply
        return replies

    async def load_script(self, script: str) -> None:
        # Keyless: redis-py sends SCRIPT LOAD to every primary.
        await self._cluster.script_load(script)

    async def close(self) -> None:
        """The RedisCluster client belongs to the caller; the per-node pipes to this."""
        for pipe in self._pipes.values():
            await pipe.close()
        self._pipes.clear()

    def _pipe(self, address: tuple[str, int]) -> RespPipe:
        pipe = self._pipes.get(address)
        if pipe is None:
            host, port = address
            credentials = ""
            if self._target.password:
                credentials = f"{quote(self._target.username or '')}:" \
                    f"{quote(self._target.password)}@"
            pipe = RespPipe(f"redis://{credentials}{host}:{port}/0", timeout=self._timeout)
            self._pipes[address] = pipe
        return pipe

    async def _through_redis_py(self, commands: list[Command]) -> list[Any]:
        async with self._cluster.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            replies = await pipe.execute(raise_on_error=False)
        return [_as_reply(reply) for reply in replies]


def _key_of(command: Command) -> str | int | float | bytes:
    """The key of a gateway command: EVALSHA's first key, else the first argument."""
    return command[3] if command[0] in ("EVALSHA", "EVAL") else command[1]


def _as_reply(reply: Any) -> Any:
    # redis-py strips the error code that RespPipe's callers look for.
    if isinstance(reply, NoScriptError):
        return hiredis.ReplyError(f"NOSCRIPT {reply}")
    if isinstance(reply, ResponseError):
        return hiredis.ReplyError(str(reply))
    if isinstance(reply, Exception):
        raise RespPipeError(f"Redis Cluster request failed: {reply}") from reply
    return reply
