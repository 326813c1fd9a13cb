"""Several gateway nodes behind a real HAProxy, on loopback, as deploy/ runs them: HAProxy reads
deploy/haproxy/haproxy.cfg itself, with the ports in its environment.

    lb = await HaproxyProcess.start(tmp_path, [node.ws_port for node in nodes])
    lb.ws_url; await lb.wait_for_state("node1", "UP"); await lb.stop()

ReconnectingUa is a WebSocket SIP client that, like JsSIP, reconnects (through the balancer)
and registers again whenever its WebSocket closes, and answers calls meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.fixtures.gateway import ARTIFACTS_DIR, REPO_ROOT, log_tail
from tests.support.ports import free_port
from tests.support.ws_sip import WsSipUa, browser_sdp

HAPROXY_CONFIG = REPO_ROOT / "deploy" / "haproxy" / "haproxy.cfg"
START_TIMEOUT = 15.0
RECONNECT_PAUSE = 0.3
CLOSING = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
           aiohttp.WSMsgType.ERROR)


def cluster_args(secret: str, *, drain_grace: float = 1.0, drain_timeout: float = 10.0,
                 heartbeat: float = 1.0) -> list[str]:
    """Flags of every node: one auth secret; per-IP limits off (every client comes from
    HAProxy's address, see haproxy.cfg); a fast heartbeat, so a dead node's bindings go soon."""
    return ["--auth-secret", secret, "--max-connections-per-ip", "0",
            "--max-requests-per-ip", "0", "--auth-failures-before-ban", "0",
            "--drain-grace", str(drain_grace), "--drain-timeout", str(drain_timeout),
            "--node-heartbeat", str(heartbeat)]


@dataclass
class HaproxyProcess:
    port: int
    admin_socket: Path
    log_path: Path
    process: asyncio.subprocess.Process

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @classmethod
    async def start(cls, directory: Path, node_ports: Sequence[int]) -> HaproxyProcess:
        if not 1 <= len(node_ports) <= 3:
            raise ValueError("haproxy.cfg names up to 3 nodes")
        port = free_port(socket.SOCK_STREAM)
        environment = {"WS2SIP_LB_BIND": f"127.0.0.1:{port}"}
        for index, node_port in enumerate(node_ports, 1):
            environment[f"WS2SIP_NODE{index}"] = f"127.0.0.1:{node_port}"
        return await cls.start_with(directory, environment)

    @classmethod
    async def start_with(cls, directory: Path, environment: dict[str, str]) -> HaproxyProcess:
        """HAProxy on deploy/haproxy/haproxy.cfg with these WS2SIP_* variables (the admin
        socket goes to `directory`); returns once every node is UP."""
        binary = shutil.which("haproxy")
        if binary is None:
            raise RuntimeError("haproxy is not installed; run tests/bootstrap.sh")
        port = int(environment["WS2SIP_LB_BIND"].rpartition(":")[2])
        admin_socket = directory / f"haproxy-{port}.sock"
        env = {**os.environ, **environment, "WS2SIP_LB_ADMIN": str(admin_socket)}
        nodes = sorted(name for name in environment if name.startswith("WS2SIP_NODE"))
        ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
        log_path = ARTIFACTS_DIR / f"haproxy-{os.getpid()}-{port}.log"
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                binary, "-db", "-f", str(HAPROXY_CONFIG), env=env,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            )
        haproxy = cls(port, admin_socket, log_path, process)
        try:
            for name in nodes:
                await haproxy.wait_for_state(f"node{name.removeprefix('WS2SIP_NODE')}", "UP",
                                             START_TIMEOUT)
        except BaseException:
            await haproxy.stop()
            raise
        return haproxy

    async def command(self, text: str) -> str:
        reader, writer = await asyncio.open_unix_connection(str(self.admin_socket))
        try:
            writer.write(f"{text}\n".encode())
            await writer.drain()
            return (await reader.read()).decode()
        finally:
            writer.close()

    async def server_states(self) -> dict[str, str]:
        """node name → UP, DOWN, NOLB, MAINT... as HAProxy's health checks see it."""
        states = {}
        for line in (await self.command("show stat")).splitlines():
            fields = line.split(",")
            if len(fields) > 17 and fields[0] == "ws2sip" and fields[1].startswith("node"):
                states[fields[1]] = fields[17]
        return states

    async def wait_for_state(self, server: str, state: str, timeout: float = 20.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.process.returncode is not None:
                raise RuntimeError(f"haproxy exited {self.process.returncode}: "
                                   f"{log_tail(self.log_path)}")
            with contextlib.suppress(OSError):
                current = (await self.server_states()).get(server, "")
                if current.startswith(state):
                    return
            if loop.time() > deadline:
                raise TimeoutError(f"haproxy: {server} not {state} within {timeout}s; log "
                                   f"{self.log_path}:\n{log_tail(self.log_path)}")
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


@dataclass
class ReconnectingUa:
    """A user that stays reachable: connects through `url`, registers, answers every call, and
    starts again on a new WebSocket when the gateway closes this one."""

    url: str
    user: str
    password: str
    domain: str
    ua: WsSipUa | None = None
    registered: asyncio.Event = field(default_factory=asyncio.Event)
    reconnects: int = 0
    _task: asyncio.Task[None] | None = None
    _stopping: bool = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while not self._stopping:
            try:
                ua = await WsSipUa.connect(self.url, self.user, self.password,
                                           domain=self.domain)
            except (aiohttp.ClientError, OSError):
                await asyncio.sleep(RECONNECT_PAUSE)
                continue
            self.ua = ua
            answering = asyncio.create_task(self._answer_calls(ua))
            try:
                if (await ua.register()).status == 200:
                    self.registered.set()
                while (await ua.receive_frame(timeout=3600)).type not in CLOSING:
                    pass
            except (TimeoutError, aiohttp.ClientError, OSError, ConnectionError):
                pass
            finally:
                self.registered.clear()
                answering.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await answering
                await ua.close()
            if not self._stopping:
                self.reconnects += 1
                await asyncio.sleep(RECONNECT_PAUSE)

    @staticmethod
    async def _answer_calls(ua: WsSipUa) -> None:
        while True:
            invite = await ua.next_request("INVITE", timeout=3600)
            with contextlib.suppress(TimeoutError):
                await ua.answer(browser_sdp("active"), invite)

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.ua is not None:
            await self.ua.close()


def passwords(names: Sequence[str]) -> dict[str, str]:
    return {name: secrets.token_urlsafe(9) for name in names}
