"""Calls to sleeping mobile apps (RFC 8599 push) against the real gateway.

Sets up `python -m gateway run` (in-memory location) with APNs pointed at the local APNs
stand-in (tests/support/push_services, HTTP/2 over TLS, in this process), N users each with one
app that registered over TCP with push parameters and then closed its connection (asleep). A
trunk trusted by address sends the calls (INVITE without SDP, no digest). When a push arrives,
the "app" of that token connects, registers (401, then REGISTER with digest) and answers the
INVITE that follows on its new connection with 486; the caller ACKs.

Prints:
  * REGISTER → INVITE: the gateway's own time from the woken app's authenticated REGISTER
    leaving the app to the INVITE arriving on the same connection (loopback), p50/p99, first
    one call at a time (--latency-calls), then under load;
  * pushes/s: N calls fired at once (at most --window outstanding) to the N sleeping apps, the
    rate at which the stand-in received the pushes, and the rate of calls completed
    (push → REGISTER → INVITE → 486 at the caller).

Bounded: --devices (default 1000) calls, every wait bounded by --time-limit.

    python bench/push_wake.py [--devices 1000] [--window 200] [--latency-calls 200]
                              [--push-only]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import signal
import socket
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from gateway.users import FileUserStore  # noqa: E402
from sip.digest import build_authorization, parse_challenge  # noqa: E402
from tests.support.push_services.apns import ApnsPush, ApnsStandIn  # noqa: E402
from tests.support.push_services.server import serve_http2  # noqa: E402

DOMAIN = "bench.test"
PASSWORD = "bench-password"
TEAM_ID = "BENCHTEAM1"
KEY_ID = "BENCHKEY01"
BUNDLE_ID = "org.example.bench"
PN_PARAM = f"{TEAM_ID}.{BUNDLE_ID}.voip"
READY_TIMEOUT = 30.0
CONNECT_CONCURRENCY = 50
CONTENT_LENGTH = re.compile(rb"^(?:Content-Length|l):\s*(\d+)", re.I | re.M)
CHALLENGE = re.compile(r"^WWW-Authenticate: *(.*)$", re.M | re.I)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def header(message: str, name: str) -> str:
    match = re.search(rf"^{name}:\s*(.*?)\r?$", message, re.M | re.I)
    return match[1] if match else ""


async def read_message(reader: asyncio.StreamReader) -> str:
    head = await reader.readuntil(b"\r\n\r\n")
    length = CONTENT_LENGTH.search(head)
    body = await reader.readexactly(int(length[1])) if length else b""
    return (head + body).decode()


@dataclass
class Device:
    index: int
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    instance: str = field(default_factory=lambda: f"urn:uuid:{uuid.uuid4()}")

    @property
    def user(self) -> str:
        return f"dev{self.index}"


class App:
    """The apps: register with push parameters over TCP, and answer calls when woken."""

    def __init__(self, tcp_port: int) -> None:
        self.tcp_port = tcp_port
        self.register_to_invite: list[float] = []  # seconds

    async def _register(self, device: Device, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> float:
        """REGISTER, 401, REGISTER with digest; returns when the digest one was sent."""
        host, port = writer.get_extra_info("sockname")
        contact = (f"<sip:{device.user}@{host}:{port};transport=tcp;pn-provider=apns;"
                   f"pn-prid={device.token};pn-param={PN_PARAM}>;"
                   f"+sip.instance=\"<{device.instance}>\";reg-id=1")
        call_id = secrets.token_hex(8)
        authorization = ""
        for cseq in (1, 2):
            lines = [
                f"REGISTER sip:{DOMAIN} SIP/2.0",
                f"Via: SIP/2.0/TCP {host}:{port};branch=z9hG4bK{secrets.token_hex(8)};rport",
                "Max-Forwards: 70", f"From: <sip:{device.user}@{DOMAIN}>;tag={cseq}x",
                f"To: <sip:{device.user}@{DOMAIN}>", f"Call-ID: {call_id}",
                f"CSeq: {cseq} REGISTER", f"Contact: {contact}", "Expires: 600",
                "Supported: outbound",
            ]
            if authorization:
                lines.append(f"Authorization: {authorization}")
            writer.write(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode())
            sent = time.perf_counter()
            if cseq == 2:
                return sent
            await writer.drain()
            challenge = await read_message(reader)
            match = CHALLENGE.search(challenge)
            assert match, challenge[:200]
            authorization = build_authorization(
                parse_challenge(match[1]), method="REGISTER", uri=f"sip:{DOMAIN}",
                username=device.user, password=PASSWORD)
        raise AssertionError("unreachable")

    async def register_and_sleep(self, device: Device) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.tcp_port)
        await self._register(device, reader, writer)
        ok = await read_message(reader)
        assert ok.startswith("SIP/2.0 200"), ok[:200]
        assert 'Feature-Caps: *;+sip.pns="apns"' in ok, ok
        writer.close()  # the app is suspended: its connection goes, its binding stays

    async def wake(self, device: Device) -> None:
        """Woken by a push: register on a new connection, take the INVITE, refuse it (486)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.tcp_port)
        try:
            sent = await self._register(device, reader, writer)
            while True:
                message = await read_message(reader)
                if message.startswith("INVITE "):
                    self.register_to_invite.append(time.perf_counter() - sent)
                    break
            busy = [
                "SIP/2.0 486 Busy Here", *(f"Via: {v}" for v in _all(message, "Via")),
                f"From: {header(message, 'From')}",
                f"To: {header(message, 'To')};tag={secrets.token_hex(4)}",
                f"Call-ID: {header(message, 'Call-ID')}", f"CSeq: {header(message, 'CSeq')}",
            ]
            writer.write(("\r\n".join(busy) + "\r\nContent-Length: 0\r\n\r\n").encode())
            await writer.drain()
            while not (await read_message(reader)).startswith("ACK "):
                pass
        finally:
            writer.close()


def _all(message: str, name: str) -> list[str]:
    head = message.split("\r\n\r\n", 1)[0]
    return [line.split(":", 1)[1].strip() for line in head.split("\r\n")
            if line.lower().startswith(name.lower() + ":")]


class Caller(asyncio.DatagramProtocol):
    """The trusted trunk: INVITEs over UDP; ACKs the final response; notes when it came."""

    def __init__(self, gateway: tuple[str, int]) -> None:
        self.gateway = gateway
        self.transport: asyncio.DatagramTransport | None = None
        self.finals: dict[str, asyncio.Future[int]] = {}
        self.answered: set[str] = set()  # Call-IDs with any response: no more retransmission
        self.retransmissions = 0
        self.port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's
        self.port = transport.get_extra_info("sockname")[1]

    def call(self, device: Device) -> asyncio.Future[int]:
        call_id = secrets.token_hex(10)
        branch = f"z9hG4bK{secrets.token_hex(8)}"
        invite = "\r\n".join([
            f"INVITE sip:{device.user}@{DOMAIN} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch};rport",
            "Max-Forwards: 70", f"From: <sip:pbx@127.0.0.1>;tag={secrets.token_hex(4)}",
            f"To: <sip:{device.user}@{DOMAIN}>", f"Call-ID: {call_id}", "CSeq: 1 INVITE",
            f"Contact: <sip:pbx@127.0.0.1:{self.port}>", "Content-Length: 0", "", "",
        ])
        final: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.finals[call_id] = final
        assert self.transport is not None
        self.transport.sendto(invite.encode(), self.gateway)
        asyncio.get_running_loop().call_later(0.5, self._retransmit, call_id, invite, 0.5)
        return final

    def _retransmit(self, call_id: str, invite: str, interval: float) -> None:
        """RFC 3261 timer A: UDP loses datagrams (a busy receiver's full socket buffer)."""
        if call_id in self.answered or interval > 4.0 or self.transport is None:
            return
        self.retransmissions += 1
        self.transport.sendto(invite.encode(), self.gateway)
        asyncio.get_running_loop().call_later(interval * 2, self._retransmit, call_id, invite,
                                              interval * 2)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        text = data.decode(errors="replace")
        if not text.startswith("SIP/2.0 "):
            return
        status = int(text[8:11])
        call_id = header(text, "Call-ID")
        self.answered.add(call_id)
        if status < 200:
            return
        via = header(text, "Via")
        ack = "\r\n".join([
            f"ACK sip:{header(text, 'To').split('<')[1].split('>')[0]} SIP/2.0", f"Via: {via}",
            "Max-Forwards: 70", f"From: {header(text, 'From')}", f"To: {header(text, 'To')}",
            f"Call-ID: {call_id}", "CSeq: 1 ACK", "Content-Length: 0", "", "",
        ])
        assert self.transport is not None
        self.transport.sendto(ack.encode(), addr)
        final = self.finals.get(call_id)
        if final is not None and not final.done():
            final.set_result(status)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def describe(label: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (f"{label}: {len(ms)} calls, p50 {percentile(ms, 0.5):.2f} ms, "
            f"p99 {percentile(ms, 0.99):.2f} ms, mean {statistics.fmean(ms):.2f} ms")


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="push-bench-"))
    key = ec.generate_private_key(ec.SECP256R1())
    key_file = work / "AuthKey.p8"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    devices = [Device(i) for i in range(args.devices)]
    users = FileUserStore(work / "users.json")
    for device in devices:
        await users.add(device.user, DOMAIN, PASSWORD)
    await users.close()
    by_token = {device.token: device for device in devices}
    stand_in = ApnsStandIn(key.public_key(), KEY_ID, TEAM_ID, BUNDLE_ID)
    loop = asyncio.get_running_loop()
    caller = Caller(("127.0.0.1", 0))
    transport, _ = await loop.create_datagram_endpoint(lambda: caller,
                                                       local_addr=("127.0.0.1", 0))
    # One long-lived connection, as APNs keeps one with a busy provider.
    async with serve_http2(stand_in, work / "apns", idle_timeout=3600,
                           max_requests=1_000_000) as server:
        udp, tcp = free_port(socket.SOCK_DGRAM), free_port()
        caller.gateway = ("127.0.0.1", udp)
        config = work / "ws2sip.toml"
        config.write_text(
            f'[[trunks]]\nname = "pbx"\naddress = "127.0.0.1:{caller.port}"\n'
            f'trusted_sources = ["udp:127.0.0.1:{caller.port}"]\n'
        )
        argv = [
            sys.executable, "-m", "gateway", "run", "--config", str(config), "--domain", DOMAIN,
            "--udp", f"127.0.0.1:{udp}", "--tcp", f"127.0.0.1:{tcp}",
            "--users-file", str(work / "users.json"), "--no-demo-users",
            "--log-level", "warning", "--public-address", "127.0.0.1",
            "--max-requests-per-ip", "0", "--max-connections-per-ip", "0",
            "--unauthenticated-timeout", "0", "--auth-failures-before-ban", "0",
            "--push-apns-url", server.url, "--push-apns-key-file", str(key_file),
            "--push-apns-key-id", KEY_ID, "--push-apns-team-id", TEAM_ID,
            "--push-ca-file", str(server.ca_file), "--push-wait", "60", "--push-repeat", "60",
        ]
        log_path = work / "gateway.log"
        with log_path.open("wb") as log:
            gateway = await asyncio.create_subprocess_exec(
                *argv, cwd=REPO_ROOT, stdout=log, stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            await wait_listening(tcp, gateway, log_path)
            await run(args, devices, by_token, stand_in, caller, App(tcp))
        finally:
            if gateway.returncode is None:
                gateway.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(gateway.wait(), 10)
            except TimeoutError:
                gateway.kill()
            transport.close()


async def wait_listening(port: int, gateway: asyncio.subprocess.Process, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if gateway.returncode is not None:
            raise SystemExit(f"gateway exited: {log.read_text()[-2000:]}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise SystemExit(f"gateway not listening after {READY_TIMEOUT}s")


async def run(args: argparse.Namespace, devices: list[Device], by_token: dict[str, Device],
              stand_in: ApnsStandIn, caller: Caller, app: App) -> None:
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def sleep_app(device: Device) -> None:
        async with limit:
            await app.register_and_sleep(device)

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(sleep_app(d) for d in devices)), args.time_limit)
    print(f"{len(devices)} apps registered with push parameters and went to sleep in "
          f"{time.perf_counter() - started:.1f} s")

    wakes: set[asyncio.Task[None]] = set()

    def on_push(push: ApnsPush) -> None:
        if push.payload["ws2sip"]["type"] != "call":
            return
        task = asyncio.get_running_loop().create_task(app.wake(by_token[push.device_token]))
        wakes.add(task)
        task.add_done_callback(wakes.discard)

    stand_in.on_push = on_push
    # 1) One call at a time: the gateway's own REGISTER → INVITE time.
    for device in devices[:args.latency_calls]:
        status = await asyncio.wait_for(caller.call(device), args.time_limit)
        assert status == 486, status
    print(describe("REGISTER -> INVITE, one call at a time", app.register_to_invite))

    # 2) Every app called at once (window-bounded): pushes/s and calls/s.
    app.register_to_invite.clear()
    pushes_before = len(stand_in.pushes)
    if args.push_only:
        await push_only(args, devices, stand_in, caller, pushes_before)
        return
    window = asyncio.Semaphore(args.window)

    async def one_call(device: Device) -> int:
        async with window:
            return await caller.call(device)

    started = time.perf_counter()
    calls = [asyncio.ensure_future(one_call(d)) for d in devices]
    try:
        statuses = await asyncio.wait_for(asyncio.gather(*calls), args.time_limit)
    except TimeoutError:
        done = [c.result() for c in calls if c.done() and not c.cancelled()]
        raise SystemExit(f"time limit: {len(done)} calls ended ({sorted(set(done))}), "
                         f"{len(stand_in.pushes) - pushes_before} pushes, "
                         f"{len(app.register_to_invite)} INVITEs reached apps, "
                         f"{caller.retransmissions} INVITE retransmissions, "
                         f"stand-in refusals {stand_in.refusals[:3]}") from None
    elapsed = time.perf_counter() - started
    pushes = stand_in.pushes[pushes_before:]
    push_span = pushes[-1].received_at - pushes[0].received_at if len(pushes) > 1 else 0.0
    # Without the tail that waited for an INVITE retransmission (UDP loss at the receiver).
    bulk = int(len(pushes) * 0.95)
    bulk_span = pushes[bulk - 1].received_at - pushes[0].received_at if bulk > 1 else 0.0
    print(f"{len(devices)} sleeping apps called at once (window {args.window}): "
          f"{len(pushes)} pushes in {push_span:.2f} s = {len(pushes) / max(push_span, 1e-9):.0f} "
          f"pushes/s (the first {bulk}: {bulk / max(bulk_span, 1e-9):.0f} pushes/s); "
          f"{len(statuses)} calls completed (push, REGISTER, INVITE, 486) in "
          f"{elapsed:.2f} s = {len(statuses) / elapsed:.0f} calls/s; "
          f"statuses {sorted(set(statuses))}; {caller.retransmissions} INVITE retransmissions")
    print(describe("REGISTER -> INVITE under that load", app.register_to_invite))


async def push_only(args: argparse.Namespace, devices: list[Device], stand_in: ApnsStandIn,
                    caller: Caller, pushes_before: int) -> None:
    """The apps stay asleep: the gateway's own rate of INVITE → lookup → push (→ 180), the
    calls left waiting when the bench ends."""
    stand_in.on_push = None
    started = time.perf_counter()
    for sent, device in enumerate(devices, 1):
        caller.call(device)
        # At most a window of calls not yet pushed: UDP would drop a larger burst.
        while len(stand_in.pushes) - pushes_before < sent - args.window and \
                time.perf_counter() - started < args.time_limit:
            await asyncio.sleep(0.002)
    await stand_in.wait_for_pushes(pushes_before + len(devices), args.time_limit)
    pushes = stand_in.pushes[pushes_before:]
    span = pushes[-1].received_at - pushes[0].received_at
    print(f"push only: {len(pushes)} calls to sleeping apps -> {len(pushes)} pushes in "
          f"{span:.2f} s = {len(pushes) / span:.0f} pushes/s "
          f"({caller.retransmissions} INVITE retransmissions)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--latency-calls", type=int, default=200)
    parser.add_argument("--time-limit", type=float, default=120.0)
    parser.add_argument("--push-only", action="store_true",
                        help="the apps never wake: measure pushes/s alone")
    asyncio.run(main(parser.parse_args()))
