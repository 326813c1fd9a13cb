"""The media relay spread over worker processes, each owning a disjoint slice of the port range
(like rtpengine beside Kamailio): SIP stays on the gateway's event loop and core while media
uses the others.

MediaWorkers and RemoteSession have the interface the gateway uses of MediaRelay and
MediaSession (create_session, active_sessions, close; process_offer, process_answer,
create_offer, close, failure), so the proxy drives either. Counters and open ports live in the
workers: stats() and open_ports() are coroutines here.

A worker that exits is logged once; its sessions fail (their next command raises MediaError
503, `failure` says why) and a replacement starts on the same ports. A worker that does not
answer within the command timeout is killed and replaced the same way, so a stuck media plane
never holds up SIP. close() stops every worker and waits for the processes to exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import logging
import multiprocessing
import os
import socket
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

from .channel import Channel, ChannelClosed
from .errors import MediaError
from .ice_tcp import WORKER_PREFIX_LENGTH, Handoff, IceTcpListener, hand_over
from .plain import LatchPolicy
from .session import Side
from .worker import WorkerConfig, run_worker

log = logging.getLogger(f"ws2sip.{__name__}")

COMMAND_TIMEOUT = 10.0  # ICE gathering with an unanswered STUN server takes up to 5 s
START_TIMEOUT = 30.0  # a spawned interpreter imports aiortc, aioice, libsrtp...
STOP_TIMEOUT = 5.0
RESTART_DELAY = 1.0  # between a worker's death and its replacement: no tight crash loop
_MIN_SLICE_PORTS = 4  # one call: an ICE port and an RTP/RTCP pair


def port_slices(port_min: int, port_max: int, count: int) -> list[tuple[int, int]]:
    """`count` disjoint ranges covering [port_min, port_max], each starting on an even port
    (RTP/RTCP pairs are even/odd, PortPool's convention)."""
    size = (port_max - port_min + 1) // count
    size -= size % 2
    if size < _MIN_SLICE_PORTS:
        raise ValueError(f"media port range {port_min}-{port_max} too small for {count} workers")
    slices = []
    for index in range(count):
        low = port_min + index * size
        high = port_max if index == count - 1 else low + size - 1
        slices.append((low, high))
    return slices


class _Worker:
    """The gateway's handle on one worker process."""

    def __init__(self, config: WorkerConfig, on_exit: Callable[[_Worker], None]) -> None:
        self.config = config
        self._on_exit = on_exit
        self.sessions: dict[str, RemoteSession] = {}
        self.process: BaseProcess | None = None
        self.ready = asyncio.get_running_loop().create_future()
        self.alive = True
        self._channel: Channel | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._request_ids = itertools.count(1)
        self._reader: asyncio.Task[None] | None = None
        # Where the gateway's ICE-TCP listener hands this worker its connections (SCM_RIGHTS).
        self.ice_tcp_channel: socket.socket | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        handoff_theirs = None
        if self.config.ice_tcp_advertised_port:
            self.ice_tcp_channel, handoff_theirs = socket.socketpair(
                socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self.ice_tcp_channel.setblocking(False)
        self.process = context.Process(target=run_worker,
                                       args=(theirs, self.config, handoff_theirs),
                                       name=f"ws2sip-media-{self.config.index}", daemon=True)
        try:
            self.process.start()
        finally:
            # Only the child may hold its end: its exit must read as EOF on ours.
            theirs.close()
            if handoff_theirs is not None:
                handoff_theirs.close()
        sock = socket.socket(fileno=os.dup(ours.fileno()))
        ours.close()
        self._channel = await Channel.open(sock)
        self._reader = asyncio.create_task(self._read())
        await asyncio.wait_for(asyncio.shield(self.ready), START_TIMEOUT)

    async def request(self, command: str, session_id: str = "", *arguments: Any) -> Any:
        if not self.alive:
            raise MediaError(status=503, reason=f"media worker {self.config.index} is gone")
        try:
            if not self.ready.done():  # a started worker costs no wait per command
                await asyncio.wait_for(asyncio.shield(self.ready), COMMAND_TIMEOUT)
            self.ready.result()
        except TimeoutError:
            raise MediaError(status=503, reason=f"media worker {self.config.index} not started "
                             f"within {COMMAND_TIMEOUT:.0f} s") from None
        assert self._channel is not None
        request_id = next(self._request_ids)
        reply = asyncio.get_running_loop().create_future()
        self._pending[request_id] = reply
        try:
            self._channel.send((request_id, command, session_id, arguments))
            ok, result = await asyncio.wait_for(reply, COMMAND_TIMEOUT)
        except ChannelClosed as error:
            raise MediaError(status=503, reason=f"media worker {self.config.index} is gone"
                             ) from error
        except TimeoutError:
            log.error("media worker %d (pid %s) did not answer %s within %.0f s: killing it",
                         self.config.index, self.pid, command, COMMAND_TIMEOUT)
            self.kill()
            raise MediaError(status=503, reason=f"media worker {self.config.index} stalled"
                             ) from None
        finally:
            self._pending.pop(request_id, None)
        if not ok:
            status, reason = result
            raise MediaError(status=status, reason=reason)
        return result

    def kill(self) -> None:
        if self.process is not None and self.process.exitcode is None:
            self.process.kill()

    async def stop(self) -> None:
        """Ask the worker to close its sessions and exit; kill it if it does not in time."""
        if self._channel is not None and self.alive:
            with contextlib.suppress(ChannelClosed):
                self._channel.send((0, "stop", "", ()))
        self.alive = False
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), STOP_TIMEOUT)
            self._reader.cancel()
        await self._reap()

    async def _reap(self) -> None:
        """Wait for the process to exit, killing it after STOP_TIMEOUT."""
        process = self.process
        if (process is not None and process.pid is not None  # started
                and not await _exited(process, STOP_TIMEOUT)):
            process.kill()
            await _exited(process, STOP_TIMEOUT)
        if self._channel is not None:
            self._channel.close()
        if self.ice_tcp_channel is not None:
            self.ice_tcp_channel.close()
            self.ice_tcp_channel = None

    async def _read(self) -> None:
        assert self._channel is not None
        try:
            while True:
                message = await self._channel.receive()
                if message[0] == "reply":
                    _, request_id, ok, result = message
                    reply = self._pending.get(request_id)
                    if reply is not None and not reply.done():
                        reply.set_result((ok, result))
                elif message[0] == "failure":
                    _, session_id, reason = message
                    session = self.sessions.get(session_id)
                    if session is not None:
                        session.failure = reason
                elif message[0] == "ready" and not self.ready.done():
                    self.ready.set_result(None)
        except ChannelClosed:
            pass
        finally:
            was_alive, self.alive = self.alive, False
            for reply in self._pending.values():
                if not reply.done():
                    reply.set_exception(ChannelClosed(f"media worker {self.config.index} exited"))
            if not self.ready.done():
                self.ready.set_exception(
                    MediaError(status=503, reason=f"media worker {self.config.index} exited"))
                self.ready.exception()  # retrieved: start() reports it, or no one waits
            if was_alive:
                self._on_exit(self)


async def _exited(process: BaseProcess, seconds: float) -> bool:
    """Polled: join() would block the event loop. Reading exitcode reaps the process."""
    for _ in range(int(seconds / 0.05)):
        if process.exitcode is not None:
            return True
        await asyncio.sleep(0.05)
    return process.exitcode is not None


class RemoteSession:
    """One call's media in a worker process; the methods of MediaSession the gateway uses."""

    def __init__(self, worker: _Worker, session_id: str,
                 on_closed: Callable[[RemoteSession], None]) -> None:
        self.session_id = session_id
        self.failure: str | None = None
        self._worker = worker
        self._on_closed = on_closed
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def worker_pid(self) -> int | None:
        return self._worker.pid

    async def process_offer(self, sdp: str, from_side: Side) -> str:
        result: str = await self._request("offer", sdp, from_side)
        return result

    async def process_answer(self, sdp: str, from_side: Side) -> str:
        result: str = await self._request("answer", sdp, from_side)
        return result

    async def create_offer(self, to_side: Side) -> str:
        result: str = await self._request("create_offer", to_side)
        return result

    async def stats(self) -> dict[str, int]:
        result: dict[str, int] = await self._request("session_stats")
        return result

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._worker.sessions.pop(self.session_id, None)
        self._on_closed(self)
        if self._worker.alive:
            try:
                await self._worker.request("close", self.session_id)
            except MediaError as error:  # its worker died meanwhile and took the ports along
                log.info("media %s closed without its worker: %s", self.session_id,
                            error.reason)

    async def _request(self, command: str, *arguments: Any) -> Any:
        if self._closed:
            raise MediaError(status=500, reason=f"media session {self.session_id} is closed")
        return await self._worker.request(command, self.session_id, *arguments)


class MediaWorkers:
    """`count` worker processes sharing [port_min, port_max]; new sessions go to the worker
    with the fewest."""

    def __init__(
        self, count: int, *, bind_host: str = "127.0.0.1", public_host: str | None = None,
        port_min: int = 20000, port_max: int = 40000, stun_servers: list[str] | None = None,
        gc_threshold: tuple[int, int, int] | None = None, latch: LatchPolicy | None = None,
        ice_tcp_listen: tuple[str, int] | None = None, ice_tcp_advertised_port: int = 0,
    ) -> None:
        """ice_tcp_listen: the gateway's one ICE-TCP listener, here in the gateway process;
        it hands each connection to the worker its ufrag names (webrtc.ice_tcp)."""
        if count < 1:
            raise ValueError(f"media workers: need at least 1, got {count}")
        self._configs = [
            WorkerConfig(index=index, bind_host=bind_host, public_host=public_host,
                         port_min=low, port_max=high, stun_servers=stun_servers,
                         gc_threshold=gc_threshold, log_level=logging.getLogger().level,
                         latch=dataclasses.asdict(latch) if latch is not None else None)
            for index, (low, high) in enumerate(port_slices(port_min, port_max, count))
        ]
        self._workers: list[_Worker] = []
        self._sessions: dict[str, RemoteSession] = {}
        self._restarts: set[asyncio.Task[None]] = set()
        self._running = False  # replace workers that exit only between start() and close()
        self._tcp_listener = (
            IceTcpListener(*ice_tcp_listen, advertised_port=ice_tcp_advertised_port,
                           handoffs=self._ice_tcp_handoff)
            if ice_tcp_listen is not None else None
        )

    async def start(self) -> None:
        if self._tcp_listener is not None:
            # First: the workers put its (bound) port into their candidates.
            await self._tcp_listener.start()
            self._configs = [
                dataclasses.replace(config,
                                    ice_tcp_advertised_port=self._tcp_listener.advertised_port)
                for config in self._configs
            ]
        self._workers = [_Worker(config, self._worker_exited) for config in self._configs]
        try:
            await asyncio.gather(*(worker.start() for worker in self._workers))
        except BaseException:
            await self.close()
            raise
        self._running = True
        log.info("media relay in %d worker processes (pids %s), ports %s",
                    len(self._workers), ", ".join(str(w.pid) for w in self._workers),
                    ", ".join(f"{c.port_min}-{c.port_max}" for c in self._configs))

    @property
    def pids(self) -> list[int]:
        """The processes of the workers ready for calls (a replacement once it is)."""
        return [worker.pid for worker in self._live() if worker.pid is not None]

    def create_session(self, session_id: str) -> RemoteSession:
        if session_id in self._sessions:
            raise ValueError(f"media session {session_id!r} already exists")
        if not self._workers:
            raise RuntimeError("MediaWorkers.start() first")
        # Ready workers first; one being restarted only when none is.
        worker = min(self._workers, key=lambda w: (not w.ready.done(), len(w.sessions)))
        session = RemoteSession(worker, session_id, self._forget)
        worker.sessions[session_id] = session
        self._sessions[session_id] = session
        return session

    def get_session(self, session_id: str) -> RemoteSession | None:
        return self._sessions.get(session_id)

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    async def stats(self) -> dict[str, int]:
        """Every open session's counters added up over the workers (MediaRelay.stats)."""
        totals: dict[str, int] = {}
        for worker_stats in await asyncio.gather(*(w.request("stats") for w in self._live())):
            for key, value in worker_stats.items():
                totals[key] = totals.get(key, 0) + value
        return totals

    async def open_ports(self) -> frozenset[int]:
        """Every UDP port the workers hold right now."""
        lists = await asyncio.gather(*(w.request("ports") for w in self._live()))
        return frozenset(port for ports in lists for port in ports)

    async def close(self) -> None:
        self._running = False
        for task in self._restarts:
            task.cancel()
        if self._tcp_listener is not None:
            await self._tcp_listener.close()
        await asyncio.gather(*(worker.stop() for worker in self._workers))
        for session in self._sessions.values():
            session.failure = session.failure or "media relay stopped"
        self._sessions.clear()

    def _ice_tcp_handoff(self, ufrag: str) -> Handoff | None:
        """The handoff to the live worker whose index leads `ufrag` (see WorkerConfig)."""
        prefix = ufrag[:WORKER_PREFIX_LENGTH]
        if not prefix.isdigit():
            return None
        for worker in self._live():
            if worker.config.index == int(prefix) and worker.ice_tcp_channel is not None:
                return functools.partial(hand_over, worker.ice_tcp_channel)
        return None

    def _live(self) -> list[_Worker]:
        return [worker for worker in self._workers if worker.alive and worker.ready.done()]

    def _forget(self, session: RemoteSession) -> None:
        self._sessions.pop(session.session_id, None)

    def _worker_exited(self, worker: _Worker) -> None:
        if not self._running:
            return
        code = worker.process.exitcode if worker.process is not None else None
        log.error("media worker %d (pid %s) exited (code %s): %d calls lose their media; "
                     "restarting it", worker.config.index, worker.pid, code, len(worker.sessions))
        for session in worker.sessions.values():
            session.failure = f"media worker {worker.config.index} exited"
        replacement = _Worker(worker.config, self._worker_exited)
        self._workers[self._workers.index(worker)] = replacement
        task = asyncio.create_task(self._restart(worker, replacement))
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _restart(self, dead: _Worker, replacement: _Worker) -> None:
        await dead._reap()
        await asyncio.sleep(RESTART_DELAY)
        try:
            await replacement.start()
        except (MediaError, TimeoutError, OSError) as error:
            log.error("media worker %d did not restart: %s", replacement.config.index, error)
            replacement.kill()
            return
        log.info("media worker %d restarted (pid %s)", replacement.config.index,
                    replacement.pid)
