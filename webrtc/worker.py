"""A media worker process: one MediaRelay on its own slice of the port range and its own event
loop, serving the gateway's commands (webrtc.workers) over a Channel.

Commands are (request_id, command, session_id, arguments); replies are ("reply", request_id,
ok, result), with (status, reason) as the result of a failure so that a MediaError keeps its
SIP status across the process boundary. ("failure", session_id, reason) reports a session's
transport failure (ICE, DTLS) when it happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from .channel import Channel, ChannelClosed
from .errors import MediaError
from .ice_tcp import WORKER_PREFIX_LENGTH
from .plain import LatchPolicy
from .relay import MediaRelay
from .session import MediaSession

log = logging.getLogger(f"ws2sip.{__name__}")


@dataclass(frozen=True)
class WorkerConfig:
    index: int
    bind_host: str
    public_host: str | None
    port_min: int
    port_max: int
    stun_servers: list[str] | None
    gc_threshold: tuple[int, int, int] | None  # the gateway's collector settings, if it has any
    log_level: int
    # LatchPolicy's fields (compiled, a frozen dataclass does not unpickle); None: the default
    latch: dict[str, Any] | None = None
    # The port of the gateway process's ICE-TCP listener put into candidates; 0: no ICE-TCP.
    ice_tcp_advertised_port: int = 0

    @property
    def ice_tcp_ufrag_prefix(self) -> str:
        """What this worker's ICE ufrags start with: the listener routes by it."""
        return f"{self.index:0{WORKER_PREFIX_LENGTH}d}"


def run_worker(connection: Connection, config: WorkerConfig,
               ice_tcp_channel: socket.socket | None = None) -> None:
    """Process entry (multiprocessing spawn): serve until told to stop or the gateway is gone.
    ice_tcp_channel: where the gateway process hands this worker its ICE-TCP connections."""
    sock = socket.socket(fileno=os.dup(connection.fileno()))
    connection.close()
    logging.basicConfig(
        level=config.log_level,
        format=f"%(asctime)s %(levelname)s %(name)s[worker {config.index}]: %(message)s",
    )
    try:
        import uvloop
    except ImportError:  # optional, as in the gateway
        asyncio.run(_serve(sock, config, ice_tcp_channel))
    else:
        uvloop.run(_serve(sock, config, ice_tcp_channel))


async def _serve(sock: socket.socket, config: WorkerConfig,
                 ice_tcp_channel: socket.socket | None) -> None:
    relay = MediaRelay(bind_host=config.bind_host, public_host=config.public_host,
                       port_min=config.port_min, port_max=config.port_max,
                       stun_servers=config.stun_servers,
                       latch=LatchPolicy(**config.latch) if config.latch is not None else None,
                       ice_tcp_advertised_port=config.ice_tcp_advertised_port,
                       ice_tcp_handoffs=ice_tcp_channel,
                       ice_tcp_ufrag_prefix=config.ice_tcp_ufrag_prefix)
    await relay.start()
    channel = await Channel.open(sock)
    if config.gc_threshold is not None:
        gc.freeze()
        gc.set_threshold(*config.gc_threshold)
    handlers: set[asyncio.Task[None]] = set()
    channel.send(("ready", os.getpid()))
    try:
        while True:
            try:
                request_id, command, session_id, arguments = await channel.receive()
            except ChannelClosed:
                log.warning("gateway gone: media worker %d stops", config.index)
                break
            if command == "stop":
                break
            handler = asyncio.create_task(
                _answer(relay, channel, request_id, command, session_id, arguments))
            handlers.add(handler)
            handler.add_done_callback(handlers.discard)
    finally:
        for handler in handlers:
            handler.cancel()
        await relay.close()
        channel.close()


async def _answer(relay: MediaRelay, channel: Channel, request_id: int, command: str,
                  session_id: str, arguments: tuple[Any, ...]) -> None:
    try:
        reply: tuple[Any, ...] = (
            "reply", request_id, True, await _execute(relay, channel, command, session_id,
                                                      arguments))
    except MediaError as error:
        reply = ("reply", request_id, False, (error.status, error.reason))
    except Exception as error:  # the gateway answers the SIP request with a 500 for it
        log.exception("media command %s for %s failed", command, session_id)
        reply = ("reply", request_id, False, (500, f"media worker: {error!r}"))
    with contextlib.suppress(ChannelClosed):  # the gateway is gone; the serve loop stops
        channel.send(reply)


async def _execute(relay: MediaRelay, channel: Channel, command: str, session_id: str,
                   arguments: tuple[Any, ...]) -> Any:
    if command == "stats":
        return relay.stats()
    if command == "ports":
        return sorted(relay.open_ports)
    if command == "close":
        closing = relay.get_session(session_id)
        if closing is not None:
            await closing.close()
        return None
    session = relay.get_session(session_id) or _created(relay, channel, session_id)
    if command == "offer":
        return await session.process_offer(*arguments)
    if command == "answer":
        return await session.process_answer(*arguments)
    if command == "create_offer":
        return await session.create_offer(*arguments)
    if command == "session_stats":
        return session.stats()
    raise ValueError(f"unknown media command {command!r}")


def _created(relay: MediaRelay, channel: Channel, session_id: str) -> MediaSession:
    """Sessions start with their first command: the gateway creates them without waiting."""
    session = relay.create_session(session_id)

    def report(reason: str) -> None:
        with contextlib.suppress(ChannelClosed):
            channel.send(("failure", session_id, reason))

    session.on_failure = report
    return session
