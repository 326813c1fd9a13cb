"""One Redis connection shared by all callers, requests pipelined: the REGISTER hot path.

Why not redis-py here: measured in bench/location_bench.py, one round trip through redis-py's
asyncio connection pool (BlockingConnectionPool, per-reply timeouts, Python RESP packing) cost
the gateway 110-120 µs of CPU, most of a REGISTER's budget, and under a burst its pool queues
callers behind a Condition. This keeps one socket, packs with hiredis.pack_command, parses with
hiredis.Reader and matches replies to callers first-in first-out (Redis answers in order).
Everything else in the location service still uses redis-py.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, cast

import hiredis
from redis.asyncio.connection import parse_url

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

    def __init__(self, url: str, *, timeout: float) -> None:
        settings = parse_url(url)
        self._host = settings.get("host", "127.0.0.1")
        self._port = int(settings.get("port", 6379))
        self._setup: list[Command] = []
        if settings.get("password"):
            username = settings.get("username")
            self._setup.append(
                ("AUTH", username, settings["password"]) if username
                else ("AUTH", settings["password"])
            )
        if settings.get("db"):
            self._setup.append(("SELECT", int(settings["db"])))
        self._timeout = timeout
        self._protocol: _RespProtocol | None = None
        self._connecting = asyncio.Lock()

    async def execute(self, commands: list[Command]) -> list[Any]:
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connect()
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        protocol.send(commands, future)
        async with asyncio.timeout(self._timeout):
            return await future

    async def close(self) -> None:
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None

    async def _connect(self) -> _RespProtocol:
        async with self._connecting:
            if self._protocol is not None and not self._protocol.closed:
                return self._protocol  # another caller connected while this one waited
            address = f"{self._host}:{self._port}"
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(self._timeout):
                _, protocol = await loop.create_connection(
                    lambda: _RespProtocol(address), self._host, self._port
                )
                if self._setup:
                    future: asyncio.Future[list[Any]] = loop.create_future()
                    protocol.send(self._setup, future)
                    for reply in await future:
                        if isinstance(reply, hiredis.ReplyError):
                            protocol.close()
                            raise RespPipeError(f"Redis at {address} refused setup: {reply}")
            self._protocol = protocol
            return protocol
