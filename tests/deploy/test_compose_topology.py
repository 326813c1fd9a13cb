"""deploy/compose.yaml's topology as plain processes on loopback: HAProxy, two gateway nodes,
Redis master + replica, three Sentinels and coturn, each started with the command compose.yaml
gives it and the configuration files deploy/ ships (haproxy/haproxy.cfg, ws2sip-cluster.toml,
redis/sentinel.conf, coturn/turnserver.conf). Only port numbers are substituted (free loopback
ports instead of the host's), and the nodes announce 127.0.0.1 instead of the example's
public address."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import secrets
import shlex
import shutil
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.config import load_config
from gateway.users import RedisUserStore
from tests.fixtures.gateway import REPO_ROOT, GatewayProcess
from tests.support.cluster import HaproxyProcess
from tests.support.healthz import metric_value
from tests.support.ports import free_port
from tests.support.ws_sip import WsSipUa

yaml = pytest.importorskip("yaml")  # untyped (no stubs): Any, as in test_deploy_files

DEPLOY = REPO_ROOT / "deploy"
CLUSTER_CONFIG = DEPLOY / "ws2sip-cluster.toml"
# The gateway reads redis+sentinel:// URLs once gateway/redis_connect.py is there (the Redis HA
# work); until then the nodes are pointed at the master itself.
SENTINEL_URLS = importlib.util.find_spec("gateway.redis_connect") is not None


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


class PortMap:
    """The host ports compose.yaml and the files use, each replaced by a free loopback port."""

    def __init__(self) -> None:
        self._ports: dict[str, int] = {}

    def sub(self, text: str) -> str:
        return re.sub(r"(?<![\d-])(\d{4,5})(?![\d-])", self._replace, text)

    def _replace(self, match: re.Match[str]) -> str:
        original = match[1]
        if original not in self._ports:
            kind = socket.SOCK_DGRAM if original in ("3478", "5060", "5062") else \
                socket.SOCK_STREAM
            self._ports[original] = free_port(kind)
        return str(self._ports[original])

    def __getitem__(self, original: int) -> int:
        return int(self.sub(str(original)))


class ComposeNode(GatewayProcess):
    """A gateway node started as compose.yaml's service starts it."""

    arguments: list[str]

    def argv(self) -> list[str]:
        return [*self.command, "run", *self.arguments]


async def start_process(args: list[str], log: Path) -> asyncio.subprocess.Process:
    with log.open("wb") as output:
        return await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=output)


async def wait_for_redis(port: int, process: asyncio.subprocess.Process, log: Path) -> None:
    client = aioredis.Redis(host="127.0.0.1", port=port)
    try:
        for _ in range(100):
            assert process.returncode is None, log.read_text()[-2000:]
            with contextlib.suppress(OSError, aioredis.ConnectionError):
                if await client.ping():
                    return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"redis on {port} does not answer: {log.read_text()[-2000:]}")
    finally:
        await client.aclose()


def stun_binding_answered(port: int) -> bool:
    transaction = os.urandom(12)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.settimeout(2)
        probe.sendto(b"\x00\x01\x00\x00\x21\x12\xa4\x42" + transaction, ("127.0.0.1", port))
        answer, _ = probe.recvfrom(2048)
    return answer[:2] == b"\x01\x01" and answer[8:20] == transaction


@pytest.fixture
async def processes() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    started: list[asyncio.subprocess.Process] = []
    yield started
    for process in reversed(started):
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


@pytest.mark.timeout(120)
async def test_compose_topology_runs_on_loopback_with_the_shipped_files(
    tmp_path: Path, processes: list[asyncio.subprocess.Process],
) -> None:
    for binary in ("redis-server", "haproxy", "turnserver"):
        if shutil.which(binary) is None:
            pytest.fail(f"{binary} is not installed; run tests/bootstrap.sh")
    services = compose()["services"]
    ports = PortMap()

    # Redis master and replica: their compose commands, with a data directory of their own.
    for name in ("redis", "redis-replica"):
        args = [ports.sub(arg) for arg in services[name]["command"]]
        directory = tmp_path / name
        directory.mkdir()
        log = tmp_path / f"{name}.log"
        processes.append(await start_process([*args, "--dir", str(directory)], log))
        await wait_for_redis(int(args[args.index("--port") + 1]), processes[-1], log)

    # Sentinels: compose copies sentinel.conf and runs redis-server on the copy.
    sentinel_ports = []
    for name in ("sentinel-1", "sentinel-2", "sentinel-3"):
        script = services[name]["command"][-1]
        run = shlex.split(script.split("&& exec ", 1)[1])
        copy = tmp_path / f"{name}.conf"
        copy.write_text(ports.sub((DEPLOY / "redis" / "sentinel.conf").read_text()))
        args = [ports.sub(arg) for arg in run]
        args[args.index("/data/sentinel.conf")] = str(copy)
        log = tmp_path / f"{name}.log"
        processes.append(await start_process(args, log))
        sentinel_ports.append(int(args[args.index("--port") + 1]))
        await wait_for_redis(sentinel_ports[-1], processes[-1], log)

    # coturn: its config, its ports moved through command-line options (which win over it).
    relay = free_port(socket.SOCK_DGRAM)
    turn_args = ["turnserver", *services["coturn"]["command"]]
    turn_args[turn_args.index("/etc/coturn/turnserver.conf")] = \
        str(DEPLOY / "coturn" / "turnserver.conf")
    turn_port = ports[3478]
    processes.append(await start_process(
        [*turn_args, "--listening-ip", "127.0.0.1", "--listening-port", str(turn_port),
         "--tls-listening-port", str(free_port()), "--min-port", str(relay),
         "--max-port", str(relay + 20), "--pidfile", str(tmp_path / "turnserver.pid")],
        tmp_path / "coturn.log"))

    # The gateway nodes: ws2sip-cluster.toml, then compose's flags.
    cluster = load_config(str(CLUSTER_CONFIG), {})
    redis_url = ports.sub(cluster.redis) if SENTINEL_URLS else \
        f"redis://127.0.0.1:{ports[6379]}/0"
    store = RedisUserStore(f"redis://127.0.0.1:{ports[6379]}/0")
    users = {name: secrets.token_urlsafe(9) for name in ("alice", "bob")}
    try:
        for name, password in users.items():
            await store.add(name, cluster.domain, password)
    finally:
        await store.close()
    nodes: list[ComposeNode] = []
    try:
        for name in ("ws2sip-1", "ws2sip-2"):
            node = ComposeNode(
                domain=cluster.domain, users={}, transports=(), users_file=None,
                redis_url=redis_url, node_id=name, extra_args=[],
                log_path=tmp_path / f"{name}.log", command=(sys.executable, "-m", "gateway"),
            )
            node.arguments = ["--config", str(CLUSTER_CONFIG),
                              *(ports.sub(arg) for arg in services[name]["command"]),
                              "--public-address", "127.0.0.1", "--redis", redis_url]
            await node.start()
            nodes.append(node)

        # HAProxy: haproxy.cfg with compose's environment.
        environment = {key: ports.sub(value)
                       for key, value in services["haproxy"]["environment"].items()
                       if key != "WS2SIP_LB_ADMIN"}
        environment["WS2SIP_LB_BIND"] = f"127.0.0.1:{ports[8080]}"
        lb = await HaproxyProcess.start_with(tmp_path, environment)
        try:
            alice = await WsSipUa.connect(lb.ws_url, "alice", users["alice"],
                                          domain=cluster.domain)
            bob = await WsSipUa.connect(lb.ws_url, "bob", users["bob"], domain=cluster.domain)
            try:
                assert (await alice.register()).status == 200
                assert (await bob.register()).status == 200
                for metrics in (ports[9091], ports[9092]):  # one WebSocket on each node
                    assert await metric_value(f"http://127.0.0.1:{metrics}", "ws2sip_flows") == 1
                # leastconn put them on different nodes: the MESSAGE crosses over via Redis.
                assert (await alice.message("bob", "over the cluster")).status == 200
                message = await bob.next_request("MESSAGE")
                assert message.body == b"over the cluster"
            finally:
                await alice.close()
                await bob.close()
        finally:
            await lb.stop()
    finally:
        for node in nodes:
            await node.stop()

    # The Sentinels watch the master, and have found its replica.
    sentinel = aioredis.Redis(host="127.0.0.1", port=sentinel_ports[0], decode_responses=True)
    try:
        fields: dict[str, Any] = await sentinel.sentinel_master("ws2sip")  # type: ignore[assignment]
        assert int(fields["port"]) == ports[6379]
        assert int(fields["num-slaves"]) == 1
        assert int(fields["quorum"]) == 2
    finally:
        await sentinel.aclose()
    assert await asyncio.to_thread(stun_binding_answered, turn_port)
