"""REGISTER with digest over WebSocket against the real gateway on Redis.

Prints, for `python -m gateway run` with its location service and users in a private
redis-server:
  * registrations/s and p50/p99 latency of REGISTER -> 401 -> REGISTER+digest -> 200 with
    --clients concurrent WebSocket clients (bounded by --registrations and --time-limit);
  * gateway CPU µs per registration (utime+stime of the gateway process from /proc, over the
    measured loop only; redis-server and the clients are other processes);
  * gateway RSS per idle registered WebSocket connection at each --idle count (RSS delta over a
    fresh gateway with one registration done, divided by the connections).

The client load runs in a child process (this script with --client) so that it does not share
the gateway's interpreter; both raise their open-file limit to the hard limit.

    python bench/register_bench.py [--clients 100] [--registrations 20000] [--idle 1000 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import aiohttp  # noqa: E402

from gateway.users import FileUserStore, RedisUserStore, UserStore  # noqa: E402
from sip.digest import build_authorization, parse_challenge  # noqa: E402

DOMAIN = "bench.test"
PASSWORD = "bench-password"
READY_TIMEOUT = 30.0
# Connections registering at once while building the idle population: bounds the client
# process's own load, so the population builds at a steady pace.
CONNECT_CONCURRENCY = 50
SETTLE_SECONDS = 2.0  # let the gateway finish the bookkeeping of the last registrations
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CHALLENGE = re.compile(r"^WWW-Authenticate: *(.*)$", re.MULTILINE | re.IGNORECASE)
# Kamailio 5.6 figures quoted in the issue, and the targets derived from them.
KAMAILIO_CPU_US = (37.0, 87.0)
KAMAILIO_KB_PER_CONNECTION = 73.0
TARGET_KB_PER_CONNECTION = 30.0


def raise_open_file_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def wait_until_listening(port: int, timeout: float, running: Callable[[], bool]) -> bool:
    """True once a TCP connect to 127.0.0.1:port succeeds; False if the server stopped
    running or the timeout passed first."""
    deadline = time.monotonic() + timeout
    while running() and time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- the client side (child process) ------------------------------------------------------------
def register_text(user: str, contact: str, call_id: str, cseq: int, authorization: str) -> str:
    auth_row = f"Authorization: {authorization}\r\n" if authorization else ""
    return (
        f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/WS {contact}.invalid;branch=z9hG4bK{secrets.token_hex(8)}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:{user}@{DOMAIN}>;tag={call_id}\r\n"
        f"To: <sip:{user}@{DOMAIN}>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} REGISTER\r\n"
        f"Contact: <sip:{contact}@{contact}.invalid;transport=ws>;expires=600\r\n"
        f"{auth_row}"
        "Content-Length: 0\r\n\r\n"
    )


@dataclass
class RegisteringClient:
    """One WebSocket connection that (re-)registers one user, answering each 401."""

    ws: aiohttp.ClientWebSocketResponse
    user: str
    contact: str
    call_id: str
    cseq: int = 0

    async def register(self) -> None:
        self.cseq += 1
        await self.ws.send_str(register_text(self.user, self.contact, self.call_id, self.cseq, ""))
        challenge = await self._expect("401")
        header = CHALLENGE.search(challenge)
        if header is None:
            raise RuntimeError(f"401 without WWW-Authenticate:\n{challenge}")
        authorization = build_authorization(
            parse_challenge(header[1].strip()), method="REGISTER", uri=f"sip:{DOMAIN}",
            username=self.user, password=PASSWORD,
        )
        self.cseq += 1
        await self.ws.send_str(
            register_text(self.user, self.contact, self.call_id, self.cseq, authorization)
        )
        await self._expect("200")

    async def _expect(self, status: str) -> str:
        message = await self.ws.receive(timeout=READY_TIMEOUT)
        if message.type is not aiohttp.WSMsgType.TEXT or message.data[8:11] != status:
            raise RuntimeError(f"expected {status}, got {message.type.name}: {message.data!r}")
        return message.data


async def connect_clients(
    session: aiohttp.ClientSession, url: str, first_user: int, count: int
) -> list[RegisteringClient]:
    """`count` connections, each registered once, opened CONNECT_CONCURRENCY at a time."""
    clients: list[RegisteringClient] = []
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(index: int) -> None:
        async with gate:
            ws = await session.ws_connect(url, protocols=("sip",), autoping=True,
                                          max_msg_size=0)
            client = RegisteringClient(ws, f"u{index}", secrets.token_hex(6),
                                       secrets.token_hex(10))
            await client.register()
            clients.append(client)

    await asyncio.gather(*(one(first_user + i) for i in range(count)))
    return clients


def report(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def wait_for_line(expected: str) -> None:
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if line.strip() != expected:
        raise RuntimeError(f"expected {expected!r} from the parent, got {line!r}")


async def client_main(args: argparse.Namespace) -> None:
    raise_open_file_limit()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        clients = await connect_clients(session, args.url, 0, args.connections)
        report("connected", connections=len(clients))
        await wait_for_line("go")
        if args.registrations:
            latencies = await register_loop(clients, args.registrations, args.time_limit)
            report("done", latencies=latencies)
        else:
            report("idle")
        await wait_for_line("quit")
        for client in clients:
            await client.ws.close()


async def register_loop(
    clients: list[RegisteringClient], registrations: int, time_limit: float
) -> list[float]:
    """Every client re-registers back to back until `registrations` or `time_limit`."""
    latencies: list[float] = []
    deadline = time.monotonic() + time_limit

    async def worker(client: RegisteringClient) -> None:
        while len(latencies) < registrations and time.monotonic() < deadline:
            started = time.perf_counter()
            await client.register()
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker(client) for client in clients))
    return latencies


# --- the measuring side (parent process) --------------------------------------------------------
@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    executable = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    process = subprocess.Popen(
        [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        if not wait_until_listening(port, READY_TIMEOUT, lambda: process.poll() is None):
            raise RuntimeError("redis-server did not start")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait()


async def create_users(store: UserStore, count: int) -> None:
    try:
        existing = {record.username for record in await store.list(DOMAIN)}
        gate = asyncio.Semaphore(100)

        async def add(index: int) -> None:
            async with gate:
                await store.add(f"u{index}", DOMAIN, PASSWORD)

        await asyncio.gather(*(add(i) for i in range(count) if f"u{i}" not in existing))
    finally:
        await store.close()


@contextmanager
def gateway(store: list[str], log_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The gateway with `store` flags: ["--redis", URL] or ["--users-file", PATH] (memory)."""
    port = free_port()
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--domain", DOMAIN, "--ws", f"127.0.0.1:{port}",
         *store, "--no-demo-users", "--log-level", "warning",
         "--public-address", "127.0.0.1", "--ws-idle-timeout", "3700",
         # Every client connects from 127.0.0.1: lift the per-IP limits out of the load's way,
         # while still counting requests (a limit of 0 would skip the count: what it costs is
         # part of the measure).
         "--max-connections-per-ip", "0", "--max-requests-per-ip", "1000000000"],
        cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, preexec_fn=raise_open_file_limit,
    )
    try:
        url = f"ws://127.0.0.1:{port}/ws"
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"gateway did not start; log {log_path}")
        yield process, url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class ClientProcess:
    def __init__(self, url: str, connections: int, registrations: int, time_limit: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--client", "--url", url, "--connections",
             str(connections), "--registrations", str(registrations), "--time-limit",
             str(time_limit)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
        )

    def expect(self, event: str) -> dict[str, object]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"client exited with {self.process.wait()} before {event!r}")
        message = json.loads(line)
        if message["event"] != event:
            raise RuntimeError(f"client said {message} instead of {event!r}")
        return message

    def tell(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def finish(self) -> None:
        self.tell("quit")
        self.process.wait(60)


def percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def measure_throughput(store: list[str], label: str, workdir: Path, clients: int,
                       registrations: int, time_limit: float) -> float:
    with gateway(store, workdir / f"gateway-throughput-{label}.log") as (process, url):
        load = ClientProcess(url, clients, registrations, time_limit)
        load.expect("connected")
        cpu_before, wall_before = cpu_seconds(process.pid), time.perf_counter()
        load.tell("go")
        latencies = sorted(load.expect("done")["latencies"])  # type: ignore[arg-type]
        wall = time.perf_counter() - wall_before
        cpu = cpu_seconds(process.pid) - cpu_before
        load.finish()
    count = len(latencies)
    cpu_us = cpu / count * 1e6
    print(f"REGISTER+digest over WebSocket, {label} location, {clients} concurrent clients:")
    print(f"  {count} registrations in {wall:.2f} s = {count / wall:,.0f} registrations/s")
    print(f"  latency (REGISTER -> 401 -> REGISTER -> 200): p50 "
          f"{percentile(latencies, 0.50) * 1e3:.2f} ms, p99 {percentile(latencies, 0.99) * 1e3:.2f}"
          f" ms")
    print(f"  gateway CPU: {cpu_us:.0f} µs per registration (2 SIP requests), "
          f"{cpu / wall * 100:.0f}% of one core; Kamailio 5.6: {KAMAILIO_CPU_US[0]:.0f}-"
          f"{KAMAILIO_CPU_US[1]:.0f} µs, target <= {2 * KAMAILIO_CPU_US[1]:.0f} µs "
          f"({'met' if cpu_us <= 2 * KAMAILIO_CPU_US[1] else 'MISSED'})")
    return cpu_us


def measure_idle_memory(store: list[str], workdir: Path, connections: int) -> float:
    with gateway(store, workdir / f"gateway-idle-{connections}.log") as (process, url):
        warmup = ClientProcess(url, 1, 0, 0)  # one registration loads every code path
        warmup.expect("connected")
        warmup.tell("go")
        warmup.expect("idle")
        warmup.finish()
        time.sleep(SETTLE_SECONDS)
        baseline = rss_bytes(process.pid)
        load = ClientProcess(url, connections, 0, 0)
        load.expect("connected")
        time.sleep(SETTLE_SECONDS)
        loaded = rss_bytes(process.pid)
        load.tell("go")
        load.expect("idle")
        load.finish()
    per_connection_kb = (loaded - baseline) / connections / 1024
    print(f"idle registered WebSocket connections: {connections}: gateway RSS "
          f"{baseline / 2**20:.1f} MiB -> {loaded / 2**20:.1f} MiB = "
          f"{per_connection_kb:.1f} KB per connection (Kamailio 5.6: "
          f"{KAMAILIO_KB_PER_CONNECTION:.0f} KB; target <= {TARGET_KB_PER_CONNECTION:.0f} KB: "
          f"{'met' if per_connection_kb <= TARGET_KB_PER_CONNECTION else 'MISSED'})")
    return per_connection_kb


def parent_main(args: argparse.Namespace) -> None:
    raise_open_file_limit()
    # Kept when a run fails: the gateway logs in it say why.
    workdir = Path(tempfile.mkdtemp(prefix="register-bench-"))
    users_file = workdir / "users.json"
    asyncio.run(create_users(FileUserStore(users_file), args.clients))
    with redis_server(workdir) as redis_url:
        redis_store = ["--redis", redis_url]
        asyncio.run(create_users(RedisUserStore(redis_url), max([args.clients, *args.idle])))
        measure_throughput(redis_store, "Redis", workdir, args.clients, args.registrations,
                           args.time_limit)
        # The same load on the in-process location and a users file: the difference is
        # what the Redis round trips cost the gateway.
        measure_throughput(["--users-file", str(users_file)], "in-memory", workdir,
                           args.clients, args.registrations, args.time_limit)
        for connections in args.idle:
            measure_idle_memory(redis_store, workdir, connections)
    shutil.rmtree(workdir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--registrations", type=int, default=20_000)
    parser.add_argument("--time-limit", type=float, default=30.0, help="seconds of load at most")
    parser.add_argument("--idle", type=int, nargs="*", default=[1_000, 10_000])
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--connections", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        asyncio.run(client_main(args))
    else:
        parent_main(args)


if __name__ == "__main__":
    main()
