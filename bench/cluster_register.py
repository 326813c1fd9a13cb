"""Registrations per second through HAProxy (deploy/haproxy/haproxy.cfg) in front of 1, 2 and 3
gateway nodes sharing one redis-server, all on loopback.

The load is bench/register_bench.py's client (REGISTER -> 401 -> REGISTER+digest -> 200 over
WebSocket, every connection re-registering back to back) in one child process. Per run it
prints registrations/s and the CPU share of the client, HAProxy, the nodes and Redis: on a
machine with few cores the client and HAProxy take a core of their own, so more nodes add no
throughput once the client is the bottleneck (its CPU near 100 % of one core).

    python bench/cluster_register.py [--nodes 1 2 3] [--clients 100] [--registrations 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.register_bench import (  # noqa: E402
    DOMAIN,
    READY_TIMEOUT,
    ClientProcess,
    cpu_seconds,
    create_users,
    free_port,
    raise_open_file_limit,
    redis_server,
    wait_until_listening,
)
from gateway.users import RedisUserStore  # noqa: E402

HAPROXY_CONFIG = REPO_ROOT / "deploy" / "haproxy" / "haproxy.cfg"


Node = tuple[subprocess.Popen[bytes], int]  # the process and its WebSocket port


@contextlib.contextmanager
def nodes(count: int, redis_url: str, workdir: Path) -> Iterator[list[Node]]:
    secret = secrets.token_hex(16)
    started: list[Node] = []
    try:
        for index in range(count):
            port = free_port()
            log = (workdir / f"node-{count}-{index}.log").open("wb")
            process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "--domain", DOMAIN,
                 "--ws", f"127.0.0.1:{port}", "--tcp", f"127.0.0.1:{free_port()}",
                 "--redis", redis_url, "--node-id", f"node-{index}", "--auth-secret", secret,
                 "--no-demo-users", "--log-level", "warning", "--public-address", "127.0.0.1",
                 # Behind HAProxy every client has its address: as deploy/ws2sip-cluster.toml.
                 "--max-connections-per-ip", "0", "--max-requests-per-ip", "0",
                 "--auth-failures-before-ban", "0", "--drain-grace", "0"],
                cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=raise_open_file_limit,
            )
            started.append((process, port))
            if not wait_until_listening(port, READY_TIMEOUT, process_running(process)):
                raise RuntimeError(f"node {index} did not start: see {log.name}")
        yield started
    finally:
        for process, _ in started:
            process.terminate()
        for process, _ in started:
            process.wait(30)


def process_running(process: subprocess.Popen[bytes]) -> Callable[[], bool]:
    return lambda: process.poll() is None


@contextlib.contextmanager
def haproxy(node_ports: list[int], workdir: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    env = {**os.environ, "WS2SIP_LB_BIND": f"127.0.0.1:{port}",
           "WS2SIP_LB_ADMIN": str(workdir / f"haproxy-{port}.sock")}
    for index, node_port in enumerate(node_ports, 1):
        env[f"WS2SIP_NODE{index}"] = f"127.0.0.1:{node_port}"
    log = (workdir / f"haproxy-{port}.log").open("wb")
    process = subprocess.Popen([shutil.which("haproxy") or "haproxy", "-db", "-f",
                                str(HAPROXY_CONFIG)], env=env, stdout=log,
                               stderr=subprocess.STDOUT, preexec_fn=raise_open_file_limit)
    try:
        if not wait_until_listening(port, READY_TIMEOUT, lambda: process.poll() is None):
            raise RuntimeError("haproxy did not start")
        time.sleep(2.5)  # two health checks (rise 2, inter 1s): every node UP
        yield process, f"ws://127.0.0.1:{port}/ws"
    finally:
        process.terminate()
        process.wait(10)


def redis_pid(redis_url: str) -> int:
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    found = subprocess.run(["pgrep", "-f", f"redis-server.*{port}"], capture_output=True,
                           text=True, check=False).stdout.split()
    return int(found[0]) if found else 0


def measure(count: int, redis_url: str, workdir: Path, clients: int, registrations: int,
            time_limit: float) -> None:
    with nodes(count, redis_url, workdir) as started, \
            haproxy([port for _, port in started], workdir) as (balancer, url):
        load = ClientProcess(url, clients, registrations, time_limit)
        load.expect("connected")
        watched = {"client": load.process.pid, "haproxy": balancer.pid,
                   **{f"node{i}": p.pid for i, (p, _) in enumerate(started)}}
        if redis_pid(redis_url):
            watched["redis"] = redis_pid(redis_url)
        before = {name: cpu_seconds(pid) for name, pid in watched.items()}
        wall_before = time.perf_counter()
        load.tell("go")
        latencies = load.expect("done")["latencies"]
        wall = time.perf_counter() - wall_before
        shares = {name: (cpu_seconds(pid) - before[name]) / wall * 100
                  for name, pid in watched.items()}
        load.finish()
    done = len(latencies)  # type: ignore[arg-type]
    print(f"{count} node(s) behind HAProxy, {clients} clients: {done} registrations in "
          f"{wall:.1f} s = {done / wall:,.0f} registrations/s; CPU % of one core: "
          + ", ".join(f"{name} {share:.0f}" for name, share in shares.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="*", default=[1, 2, 3])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--registrations", type=int, default=20_000)
    parser.add_argument("--time-limit", type=float, default=20.0, help="seconds of load at most")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPU(s); client: bench/register_bench.py's, one process", flush=True)
    with tempfile.TemporaryDirectory(prefix="ws2sip-cluster-bench-") as directory:
        workdir = Path(directory)
        with redis_server(workdir) as redis_url:
            asyncio.run(create_users(RedisUserStore(redis_url), args.clients))
            for count in args.nodes:
                measure(count, redis_url, workdir, args.clients, args.registrations,
                        args.time_limit)


if __name__ == "__main__":
    main()
