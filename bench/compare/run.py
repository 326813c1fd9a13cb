"""ws2sip next to Kamailio 5.6 under the same client load, in one run.

For each target (ws2sip with its in-process location and a users file; Kamailio with
kamailio-ws.cfg: usrloc in memory, digest against a fixed password), on fresh processes:
  * CPU µs per REGISTER -> 401 -> REGISTER+digest -> 200 over WebSocket: the client process
    of bench/register_bench.py (--clients connections re-registering back to back);
  * memory per idle registered WebSocket connection: PSS (see processes.py) of the server's
    process tree before and after --idle connections, each registered once, as in
    register_bench.py's idle measurement;
  * CPU µs per WebSocket-to-WebSocket call (INVITE/407/ACK/INVITE/100/180/200/ACK/BYE/200):
    the caller/callee pairs of bench/call_bench.py (ws_pair), --ws-pairs at once.
Server CPU is user+system time of every process of the server over the measured window only.
Each round runs both targets (the first alternating between rounds) and prints the figures and
the ratio ws2sip/Kamailio; the summary gives each figure's range over the rounds. Alongside,
the machine's busy cores during each window and the part of them neither the server nor the
load client used ("others"), since the machine is shared.

    python bench/compare/run.py [--rounds 3] [--clients 100] [--registrations 20000]
                                [--idle 5000] [--calls 1000] [--ws-pairs 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

COMPARE_DIR = Path(__file__).resolve().parent
REPO_ROOT = COMPARE_DIR.parent.parent
sys.path[:0] = [str(COMPARE_DIR), str(REPO_ROOT / "bench"), str(REPO_ROOT)]

import call_bench  # noqa: E402
import register_bench  # noqa: E402
from kamailio import kamailio  # noqa: E402
from processes import MachineSample, cpu_seconds, pss_bytes  # noqa: E402

from gateway.users import make_record  # noqa: E402

KAMAILIO = "Kamailio"
WS2SIP = "ws2sip"
CALL_DOMAIN = call_bench.DOMAIN
CALL_PASSWORD = "call-bench-password"
SETTLE_SECONDS = register_bench.SETTLE_SECONDS
# Kamailio keeps each TCP connection's 64 KB read buffer in shared memory; 1 GB holds ~10 000.
KAMAILIO_SHARED_MEMORY_MB = 1024
# Both the server and the client hold one descriptor per idle connection; keep headroom under
# the hard open-file limit (20 000 on the reference machine).
MAX_IDLE = 9000
MAX_REGISTRATIONS = 200_000
MAX_CALLS = 20_000
MAX_SECONDS = 120.0


@dataclass
class Server:
    """A running target: where clients connect and which processes to account."""

    name: str
    ws_url: str
    pids: Callable[[], list[int]]


@dataclass
class CallTarget:
    """What call_bench.ws_pair needs of a gateway: the URL and the users' passwords."""

    ws_url: str
    users: dict[str, str]


@dataclass
class Window:
    """One measured stretch: the server's CPU, the load client's and the whole machine's."""

    server_cpu: float = 0.0
    client_cpu: float = 0.0
    wall: float = 0.0
    busy_cores: float = 0.0
    load_average: str = ""

    @property
    def others_cores(self) -> float:
        return max(0.0, self.busy_cores - (self.server_cpu + self.client_cpu) / self.wall)


@contextmanager
def measured(server_pids: list[int], client_cpu: Callable[[], float]) -> Iterator[Window]:
    window = Window()
    machine, server, client = MachineSample.now(), cpu_seconds(server_pids), client_cpu()
    started = time.perf_counter()
    yield window
    window.wall = time.perf_counter() - started
    window.server_cpu = cpu_seconds(server_pids) - server
    window.client_cpu = client_cpu() - client
    now = MachineSample.now()
    window.busy_cores = now.busy_cores_since(machine)
    window.load_average = now.load_average


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


@dataclass
class TargetFigures:
    register_cpu_us: float = 0.0
    registrations: int = 0
    register_window: Window = field(default_factory=Window)
    idle_kb_per_connection: float = 0.0
    idle_connections: int = 0
    call_cpu_us: float = 0.0
    calls: int = 0
    call_failures: list[str] = field(default_factory=list)
    call_window: Window = field(default_factory=Window)


# --- the two targets -----------------------------------------------------------------------------
def write_users_file(path: Path, users: list[tuple[str, str, str]]) -> None:
    """The gateway's users file (format version 1) in one write: FileUserStore.add rewrites the
    whole file per user, quadratic for the thousands of idle users."""
    records = [asdict(make_record(user, domain, password)) for user, domain, password in users]
    path.write_text(json.dumps({"version": 1, "users": records}))
    path.chmod(0o600)


@contextmanager
def ws2sip_register_server(workdir: Path, users_file: Path, label: str) -> Iterator[Server]:
    with register_bench.gateway(["--users-file", str(users_file)],
                                workdir / f"ws2sip-{label}.log") as (process, url):
        yield Server(WS2SIP, url, lambda: [process.pid])


@contextmanager
def kamailio_server(workdir: Path, password: str) -> Iterator[Server]:
    with kamailio(workdir, password, KAMAILIO_SHARED_MEMORY_MB) as instance:
        yield Server(KAMAILIO, instance.ws_url, instance.pids)


# --- the three measurements ----------------------------------------------------------------------
def measure_registrations(server: Server, args: argparse.Namespace, figures: TargetFigures
                          ) -> None:
    load = register_bench.ClientProcess(server.ws_url, args.clients, args.registrations,
                                        args.time_limit)
    load.expect("connected")
    with measured(server.pids(), lambda: cpu_seconds([load.process.pid])) as window:
        load.tell("go")
        latencies = load.expect("done")["latencies"]
    load.finish()
    figures.registrations = len(latencies)  # type: ignore[arg-type]
    figures.register_cpu_us = window.server_cpu / figures.registrations * 1e6
    figures.register_window = window


def measure_idle(server: Server, connections: int, figures: TargetFigures) -> None:
    warmup = register_bench.ClientProcess(server.ws_url, 1, 0, 0)  # loads every code path
    warmup.expect("connected")
    warmup.tell("go")
    warmup.expect("idle")
    warmup.finish()
    time.sleep(SETTLE_SECONDS)
    baseline = pss_bytes(server.pids())
    load = register_bench.ClientProcess(server.ws_url, connections, 0, 0)
    load.expect("connected")
    time.sleep(SETTLE_SECONDS)
    loaded = pss_bytes(server.pids())
    load.tell("go")
    load.expect("idle")
    load.finish()
    figures.idle_connections = connections
    figures.idle_kb_per_connection = (loaded - baseline) / connections / 1024


async def measure_calls(server: Server, users: dict[str, str], args: argparse.Namespace,
                        figures: TargetFigures) -> None:
    target = CallTarget(server.ws_url, users)
    setup_ms: list[float] = []
    failures: list[str] = []
    deadline = time.monotonic() + args.time_limit
    per_pair = max(1, args.calls // args.ws_pairs)
    with measured(server.pids(), own_cpu_seconds) as window:
        done = await asyncio.gather(*(
            call_bench.ws_pair(target, index, per_pair, deadline, setup_ms, failures)  # type: ignore[arg-type]
            for index in range(args.ws_pairs)))
    figures.calls = sum(done)
    figures.call_failures = failures
    # As in call_bench: the 2 registrations per pair fall inside the window.
    figures.call_cpu_us = window.server_cpu / max(figures.calls, 1) * 1e6
    figures.call_window = window


def register_server(name: str, workdir: Path, users_file: Path, label: str
                    ) -> AbstractContextManager[Server]:
    if name == KAMAILIO:
        return kamailio_server(workdir, register_bench.PASSWORD)
    return ws2sip_register_server(workdir, users_file, label)


def run_target(name: str, workdir: Path, users_file: Path, args: argparse.Namespace,
               call_users: dict[str, str]) -> TargetFigures:
    figures = TargetFigures()
    with register_server(name, workdir, users_file, "register") as server:
        measure_registrations(server, args, figures)
    for connections in args.idle:
        with register_server(name, workdir, users_file, f"idle-{connections}") as server:
            measure_idle(server, connections, figures)
    if name == KAMAILIO:
        with kamailio_server(workdir, CALL_PASSWORD) as server:
            asyncio.run(measure_calls(server, call_users, args, figures))
    else:
        asyncio.run(ws2sip_calls(workdir, call_users, args, figures))
    return figures


async def ws2sip_calls(workdir: Path, users: dict[str, str], args: argparse.Namespace,
                       figures: TargetFigures) -> None:
    gateway = await call_bench.start_gateway(
        workdir / "calls", users=users, domain=CALL_DOMAIN, transports=("ws",),
        # As call_bench runs it; info is the least the fixture needs (it waits for the ready
        # line), and the gateway logs nothing per call at info.
        extra_args=["--log-level", "info", "--rtp-ports", "40000-40999",
                    *call_bench.UNLIMITED_SOURCE],
    )
    try:
        assert gateway.process is not None
        pid = gateway.process.pid
        await measure_calls(Server(WS2SIP, gateway.ws_url, lambda: [pid]), users, args, figures)
    finally:
        await gateway.stop()


# --- report --------------------------------------------------------------------------------------
def window_text(window: Window) -> str:
    return (f"[{window.wall:.1f} s; machine {window.busy_cores:.2f} busy cores of "
            f"{os.cpu_count()}, others {window.others_cores:.2f}; loadavg {window.load_average}]")


def print_round(number: int, results: dict[str, TargetFigures]) -> dict[str, float]:
    ours, theirs = results[WS2SIP], results[KAMAILIO]
    ratios = {
        "register": ours.register_cpu_us / theirs.register_cpu_us,
        "idle": ours.idle_kb_per_connection / theirs.idle_kb_per_connection,
        "call": ours.call_cpu_us / theirs.call_cpu_us,
    }
    print(f"round {number}:")
    for name in (WS2SIP, KAMAILIO):
        figures = results[name]
        print(f"  {name:<9} REGISTER+digest {figures.register_cpu_us:6.1f} µs CPU "
              f"({figures.registrations} registrations) {window_text(figures.register_window)}")
        print(f"  {name:<9} idle connection {figures.idle_kb_per_connection:6.1f} KB PSS "
              f"({figures.idle_connections} connections)")
        failed = f", {len(figures.call_failures)} failed: {figures.call_failures[:3]}" \
            if figures.call_failures else ""
        print(f"  {name:<9} WS<->WS call    {figures.call_cpu_us:6.0f} µs CPU "
              f"({figures.calls} calls{failed}) {window_text(figures.call_window)}")
    print(f"  ratio ws2sip/Kamailio: REGISTER {ratios['register']:.2f}, idle memory "
          f"{ratios['idle']:.2f}, call {ratios['call']:.2f}", flush=True)
    return ratios


def span(values: list[float], digits: int) -> str:
    low, high = min(values), max(values)
    return f"{low:.{digits}f}" if low == high else f"{low:.{digits}f}-{high:.{digits}f}"


def print_summary(rounds: list[dict[str, TargetFigures]], ratios: list[dict[str, float]]) -> None:
    print(f"summary over {len(rounds)} round(s) (min-max):")
    rows = (("REGISTER+digest CPU µs", "register_cpu_us", "register", 1),
            ("idle connection KB", "idle_kb_per_connection", "idle", 1),
            ("WS<->WS call CPU µs", "call_cpu_us", "call", 0))
    for label, attribute, ratio_key, digits in rows:
        ours = [getattr(result[WS2SIP], attribute) for result in rounds]
        theirs = [getattr(result[KAMAILIO], attribute) for result in rounds]
        print(f"  {label:<24} ws2sip {span(ours, digits):>13} | Kamailio "
              f"{span(theirs, digits):>13} | ratio {span([r[ratio_key] for r in ratios], 2)}")


def bounded(args: argparse.Namespace) -> None:
    checks = ((args.rounds, 1, 10, "--rounds"), (args.registrations, 1, MAX_REGISTRATIONS,
              "--registrations"), (args.calls, 1, MAX_CALLS, "--calls"),
              (args.ws_pairs, 1, 100, "--ws-pairs"), (args.clients, 1, 1000, "--clients"),
              *((count, 1, MAX_IDLE, "--idle") for count in args.idle))
    for value, low, high, flag in checks:
        if not low <= value <= high:
            raise SystemExit(f"{flag} {value}: must be within {low}..{high}")
    if not 0 < args.time_limit <= MAX_SECONDS:
        raise SystemExit(f"--time-limit {args.time_limit}: must be within 0..{MAX_SECONDS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--registrations", type=int, default=20_000)
    parser.add_argument("--idle", type=int, nargs="+", default=[5_000])
    parser.add_argument("--calls", type=int, default=1_000)
    parser.add_argument("--ws-pairs", type=int, default=10)
    parser.add_argument("--time-limit", type=float, default=30.0,
                        help="seconds of load at most per measurement")
    args = parser.parse_args()
    bounded(args)
    register_bench.raise_open_file_limit()
    workdir = Path(tempfile.mkdtemp(prefix="compare-"))  # kept: the servers' logs are in it
    idle_users = max(args.clients, *args.idle)
    call_users = {"alice": CALL_PASSWORD,
                  **{f"bob{index}": CALL_PASSWORD for index in range(args.ws_pairs)}}
    write_users_file(workdir / "users.json", [
        (f"u{index}", register_bench.DOMAIN, register_bench.PASSWORD)
        for index in range(idle_users)])
    print(f"{os.cpu_count()} cores, loadavg {MachineSample.now().load_average}; logs in {workdir}",
          flush=True)
    rounds: list[dict[str, TargetFigures]] = []
    ratios: list[dict[str, float]] = []
    for number in range(1, args.rounds + 1):
        order = (WS2SIP, KAMAILIO) if number % 2 else (KAMAILIO, WS2SIP)
        results = {}
        for name in order:
            target_dir = workdir / f"round{number}-{name}"
            target_dir.mkdir()
            results[name] = run_target(name, target_dir, workdir / "users.json", args,
                                       call_users)
        rounds.append(results)
        ratios.append(print_round(number, results))
    print_summary(rounds, ratios)


if __name__ == "__main__":
    main()
