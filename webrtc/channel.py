"""Length-prefixed messages between the gateway and its media worker processes.

The two ends are this code base in processes the gateway spawned itself, over an AF_UNIX
socketpair no one else holds, so messages are pickled: SDP strings, counters and error tuples
cross without a schema. asyncio streams rather than multiprocessing's Connection.send: the
gateway's writes are buffered by the event loop and never block SIP, even when a worker stalls.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct
from typing import Any

_LENGTH = struct.Struct("!I")
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # a corrupt length must not make the reader allocate GBs


class ChannelClosed(Exception):
    """The other end went away (its process exited or closed the socket)."""


class Channel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        return cls(reader, writer)

    def send(self, message: tuple[Any, ...]) -> None:
        if self._writer.is_closing():
            raise ChannelClosed("media channel closed")
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self._writer.write(_LENGTH.pack(len(data)) + data)

    async def receive(self) -> tuple[Any, ...]:
        try:
            header = await self._reader.readexactly(_LENGTH.size)
            (length,) = _LENGTH.unpack(header)
            if length > MAX_MESSAGE_BYTES:
                raise ChannelClosed(f"media channel message of {length} bytes: stream corrupt")
            message = pickle.loads(await self._reader.readexactly(length))
        except (asyncio.IncompleteReadError, ConnectionError) as error:
            raise ChannelClosed(f"media channel closed: {error!r}") from error
        if not isinstance(message, tuple):
            raise ChannelClosed(f"media channel sent {type(message).__name__}, not a tuple")
        return message

    async def drain(self) -> None:
        await self._writer.drain()

    def close(self) -> None:
        self._writer.close()
