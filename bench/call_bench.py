"""Calls through the proxy: calls per second, gateway CPU µs per call, setup latency.

Each call is INVITE → 407 → ACK → INVITE (credentials) → 100/180/200 → ACK → BYE → 200.

    python bench/call_bench.py [--calls 500] [--rate 100] [--ws-pairs 10]

UDP: a SIPp UAC (digest auth) at a fixed rate against a SIPp UAS registered as the callee.
WebSocket: --ws-pairs concurrent caller/callee pairs of the JsSIP-like WebSocket UA of
tests/interop/test_proxy_websocket.py, each pair one call at a time.
CPU is the gateway process's own user+system time (/proc/<pid>/stat) over the run, divided by
the completed calls. Setup latency is from the credentialed INVITE to its 200 (SIPp's rtd for
UDP; client timestamps for WebSocket); "added" subtracts the same call made directly, without
the gateway (SIPp UAC → SIPp UAS). Every run is bounded by --calls and by TIME_LIMIT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fixtures.gateway import GatewayProcess, start_gateway  # noqa: E402
from tests.support.ports import free_udp_ports  # noqa: E402
from tests.support.sipp import ARTIFACTS_DIR, Sipp, free_port, run_sipp  # noqa: E402
from tests.support.ws_sip import DEFAULT_DOMAIN as DOMAIN  # noqa: E402
from tests.support.ws_sip import WsSipUa as WsSipClient  # noqa: E402
from tests.support.ws_sip import browser_sdp  # noqa: E402

TIME_LIMIT = 60.0  # seconds per measured run, whatever --calls says
# The load comes from 127.0.0.1 alone: lift the gateway's per-IP limits out of its way (the
# request count still runs: a limit of 0 would skip it).
UNLIMITED_SOURCE = ("--max-connections-per-ip", "0", "--max-requests-per-ip", "1000000000")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Figures:
    label: str
    calls: int
    failed: int
    wall: float
    cpu_us_per_call: float
    setup_ms: list[float]

    def show(self, baseline_ms: list[float] | None = None) -> None:
        setup = sorted(self.setup_ms)
        p50, p99 = percentile(setup, 50), percentile(setup, 99)
        line = (f"{self.label:<22} {self.calls:6d} calls ({self.failed} failed) in "
                f"{self.wall:6.2f} s = {self.calls / self.wall:7.1f} calls/s | gateway CPU "
                f"{self.cpu_us_per_call:7.0f} µs/call | setup p50 {p50:6.2f} ms p99 {p99:6.2f} ms")
        if baseline_ms:
            base = sorted(baseline_ms)
            line += (f" | added p50 {p50 - percentile(base, 50):6.2f} ms "
                     f"p99 {p99 - percentile(base, 99):6.2f} ms")
        print(line, flush=True)


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    index = min(len(values) - 1, max(0, round(pct / 100 * len(values) + 0.5) - 1))
    return values[index]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def rtt_ms(scenario: str, pid: int) -> list[float]:
    """SIPp's -trace_rtt file: one row per call with the rtd (ms) of the timed response."""
    path = ARTIFACTS_DIR / f"{Path(scenario).stem}_{pid}_rtt.csv"
    if not path.exists():
        return []
    values = []
    for row in path.read_text().splitlines()[1:]:
        columns = row.split(";")
        if len(columns) >= 3:
            values.append(float(columns[2]))
    path.unlink()
    return values


async def sipp_calls(remote: str, calls: int, rate: float, auth: tuple[str, str] | None,
                     callee_port: int | None = None) -> tuple[int, int, list[float], float]:
    uac = await Sipp.start(
        "uac_call.xml", remote=remote, service="bob", auth=auth, calls=calls, rate=rate,
        keys={"domain": DOMAIN}, timeout=TIME_LIMIT, media_port=free_udp_ports(4),
        extra_args=["-trace_rtt", "-rtt_freq", "1", "-l", str(max(10, int(rate)))],
        name="bench-uac",
    )
    started = time.perf_counter()
    result = await uac.wait()
    wall = time.perf_counter() - started
    return result.successful_calls, result.failed_calls, rtt_ms("uac_call.xml",
                                                                uac.process.pid), wall


async def udp_run(gateway: GatewayProcess, calls: int, rate: float) -> Figures:
    assert gateway.process is not None
    port = free_port("udp")
    registered = await run_sipp(
        "register_uac.xml", remote=f"127.0.0.1:{gateway.udp_port}", port=port, service="bob",
        auth=("bob", gateway.users["bob"]), keys={"domain": DOMAIN, "expires": "3600"},
        timeout=10, media_port=free_udp_ports(4), name="bench-register",
    )
    registered.assert_success()
    uas = await Sipp.start("uas_answer.xml", port=port, calls=calls, timeout=TIME_LIMIT + 5,
                           media_port=free_udp_ports(4), name="bench-uas")
    cpu_before = cpu_seconds(gateway.process.pid)
    ok, failed, setup, wall = await sipp_calls(
        f"127.0.0.1:{gateway.udp_port}", calls, rate, ("alice", gateway.users["alice"]))
    cpu = cpu_seconds(gateway.process.pid) - cpu_before
    await uas.stop()
    return Figures("UDP ↔ UDP (SIPp)", ok, failed, wall, cpu / max(ok, 1) * 1e6, setup)


async def direct_run(calls: int, rate: float) -> list[float]:
    uas = await Sipp.start("uas_answer.xml", calls=calls, timeout=TIME_LIMIT + 5,
                           media_port=free_udp_ports(4), name="bench-direct-uas")
    _, _, setup, _ = await sipp_calls(f"127.0.0.1:{uas.port}", calls, rate, None)
    await uas.stop()
    return setup


async def ws_pair(gateway: GatewayProcess, index: int, calls: int, deadline: float,
                  setup: list[float], failures: list[str]) -> int:
    caller = await WsSipClient.connect(gateway.ws_url, "alice", gateway.users["alice"])
    callee = await WsSipClient.connect(gateway.ws_url, f"bob{index}",
                                       gateway.users[f"bob{index}"])
    done = 0
    try:
        await caller.register()
        await callee.register()
        offer, answer = browser_sdp("actpass"), browser_sdp("active")
        while done < calls and time.monotonic() < deadline:
            answering = asyncio.create_task(callee.answer(answer))
            started = time.perf_counter()
            final, dialog = await caller.call(f"bob{index}", offer)
            setup.append((time.perf_counter() - started) * 1000)
            _, callee_dialog = await answering
            if final.status != 200 or dialog is None:
                failures.append(f"{final.status} {final.reason}")
                break
            hanging_up = asyncio.create_task(callee.take_bye())
            bye = await caller.hang_up(dialog)
            await hanging_up
            if bye.status != 200:
                failures.append(f"BYE {bye.status}")
                break
            done += 1
    except (TimeoutError, AssertionError) as error:
        failures.append(f"pair {index}: {error!r}")
    finally:
        await caller.close()
        await callee.close()
    return done


async def ws_run(gateway: GatewayProcess, calls: int, pairs: int) -> Figures:
    assert gateway.process is not None
    setup: list[float] = []
    failures: list[str] = []
    deadline = time.monotonic() + TIME_LIMIT
    cpu_before = cpu_seconds(gateway.process.pid)
    started = time.perf_counter()
    per_pair = max(1, calls // pairs)
    done = await asyncio.gather(*(ws_pair(gateway, index, per_pair, deadline, setup, failures)
                                  for index in range(pairs)))
    wall = time.perf_counter() - started
    cpu = cpu_seconds(gateway.process.pid) - cpu_before
    if failures:
        print(f"  WebSocket failures: {failures[:5]}", flush=True)
    total = sum(done)
    # The registrations (2 per pair) are inside the window; they are few next to the calls.
    return Figures(f"WS ↔ WS ({pairs} pairs)", total, len(failures), wall,
                   cpu / max(total, 1) * 1e6, setup)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--rate", type=float, default=100.0, help="SIPp calls per second")
    parser.add_argument("--ws-pairs", type=int, default=10)
    args = parser.parse_args()
    users = {"alice": "alice-bench", "bob": "bob-bench"}
    users.update({f"bob{index}": f"bob{index}-bench" for index in range(args.ws_pairs)})
    with tempfile.TemporaryDirectory() as workdir:
        gateway = await start_gateway(
            Path(workdir), users=users, domain=DOMAIN, transports=("udp", "ws"),
            extra_args=["--log-level", "info", "--rtp-ports", "40000-40999",
                        *UNLIMITED_SOURCE],
        )
        try:
            print(f"gateway pid {gateway.process.pid if gateway.process else '?'}, "
                  f"{args.calls} calls per run", flush=True)
            baseline = await direct_run(args.calls, args.rate)
            print(f"direct SIPp UAC → UAS setup p50 {percentile(sorted(baseline), 50):.2f} ms "
                  f"p99 {percentile(sorted(baseline), 99):.2f} ms", flush=True)
            (await udp_run(gateway, args.calls, args.rate)).show(baseline)
            (await ws_run(gateway, args.calls, args.ws_pairs)).show()
        finally:
            await gateway.stop()
    print("Kamailio 5.6 side by side in one run: python bench/compare/run.py "
          "(reference: 350–566 µs CPU per WebSocket-to-WebSocket call, target within 2×)")


if __name__ == "__main__":
    asyncio.run(main())
