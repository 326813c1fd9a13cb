"""Media relay throughput: CPU per relayed packet, loss and added latency under N calls.

The relay runs in this process; a second process runs the load: per call an aiortc
RTCPeerConnection as the browser (real ICE + DTLS-SRTP with the relay) and a UDP socket as
the phone (PCMU, plain RTP). Both ends send 50 packets/s (20 ms audio) carrying their send
time (CLOCK_MONOTONIC, shared by both processes), so the receiver computes the one-way time
through the relay. CPU is this process's user+system time during the load, divided by the
packets it relayed; it covers the event loop, syscalls, SRTP and forwarding.

    python bench/media_relay.py --calls 20 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import multiprocessing
import os
import random
import resource
import statistics
import struct
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

MAX_CALLS = 200
MAX_SECONDS = 60.0
PACKET_INTERVAL = 0.02
PAYLOAD_BYTES = 160  # 20 ms of PCMU


def asterisk_answer(port: int) -> str:
    return ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=Asterisk\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n")


# -- load generator process ----------------------------------------------------------------

def _stamp(sequence: int, ssrc: int) -> bytes:
    header = struct.pack("!BBHII", 0x80, 0, sequence & 0xFFFF, sequence * 160, ssrc)
    return header + struct.pack("!Q", time.monotonic_ns()) + bytes(PAYLOAD_BYTES - 8)


def _latency_us(packet: bytes) -> float:
    (sent,) = struct.unpack_from("!Q", packet, 12)
    return (time.monotonic_ns() - sent) / 1000


class _PhoneSocket(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.received = 0

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) >= 20 and data[1] & 0x7F == 0:
            self.received += 1
            self.latencies.append(_latency_us(data))


async def _generate(pipe: Connection, calls: int, seconds: float) -> None:
    from unittest import mock

    import aioice.ice
    from aiortc import RTCPeerConnection, RTCSessionDescription

    loop = asyncio.get_running_loop()
    with mock.patch.object(aioice.ice, "get_host_addresses", lambda **_: ["127.0.0.1"]):
        pcs = []
        for _ in range(calls):
            pc = RTCPeerConnection()
            pc.addTransceiver("audio", direction="sendrecv")
            await pc.setLocalDescription(await pc.createOffer())
            pcs.append(pc)
    phones = []
    for _ in range(calls):
        transport, protocol = await loop.create_datagram_endpoint(
            _PhoneSocket, local_addr=("127.0.0.1", 0))
        phones.append((transport, protocol))
    pipe.send([(pc.localDescription.sdp, t.get_extra_info("sockname")[1])
               for pc, (t, _) in zip(pcs, phones, strict=True)])
    answers: list[tuple[str, tuple[str, int]]] = pipe.recv()
    for pc, (answer, _) in zip(pcs, answers, strict=True):
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    browser_latencies: list[float] = []
    browser_received = [0]
    transports = []
    for pc in pcs:
        dtls = pc.getTransceivers()[0].receiver.transport

        async def capture(data: bytes, arrival_time_ms: int) -> None:
            if len(data) >= 20:
                browser_received[0] += 1
                browser_latencies.append(_latency_us(data))

        dtls._handle_rtp_data = capture  # bench reads raw packets, skips aiortc's decoder
        transports.append(dtls)
    deadline = loop.time() + 60
    while not all(t.state == "connected" for t in transports):
        if loop.time() > deadline:
            states = [f"{t.state}/{t.transport.state}" for t in transports]
            counts = {state: states.count(state) for state in set(states)}
            raise SystemExit(f"DTLS did not connect with every call within 60 s: {counts}")
        await asyncio.sleep(0.05)

    pipe.send("start")
    sent = [0, 0]
    start = loop.time()
    ticks = int(seconds / PACKET_INTERVAL)
    for tick in range(ticks):
        for index, dtls in enumerate(transports):
            await dtls._send_rtp(_stamp(tick, 1000 + index))
            sent[0] += 1
            phone_transport, _ = phones[index]
            phone_transport.sendto(_stamp(tick, 5000 + index), answers[index][1])
            sent[1] += 1
        await asyncio.sleep(max(0.0, start + (tick + 1) * PACKET_INTERVAL - loop.time()))
    await asyncio.sleep(0.3)  # let the last packets arrive
    pipe.send("stop")
    phone_latencies = [v for _, p in phones for v in p.latencies]
    await asyncio.wait_for(asyncio.gather(*(pc.close() for pc in pcs)), 30)
    pipe.send({
        "sent_browser_to_phone": sent[0], "sent_phone_to_browser": sent[1],
        "received_at_phones": sum(p.received for _, p in phones),
        "received_at_browsers": browser_received[0],
        "latency_to_phone": phone_latencies, "latency_to_browser": browser_latencies,
    })


def _generator_main(pipe: Connection, calls: int, seconds: float, cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    asyncio.run(_generate(pipe, calls, seconds))


# -- relay process -------------------------------------------------------------------------

async def _wait_message(pipe: Connection) -> Any:
    while not pipe.poll():
        await asyncio.sleep(0.01)
    return pipe.recv()


def _split_cpus() -> tuple[int, int] | None:
    """One CPU for the relay, another for the load, when there are two to give."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else None


async def _relay(calls: int, seconds: float, profile: str | None = None,
                 pin: bool = True) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from webrtc import MediaRelay
    from webrtc.sdp import parse

    base = random.randrange(30000, 50000, 2)
    relay = MediaRelay(bind_host="127.0.0.1", port_min=base, port_max=base + 8 * calls + 100)
    cpus = _split_cpus() if pin else None
    if cpus is not None:
        os.sched_setaffinity(0, {cpus[0]})
    parent, child = multiprocessing.get_context("spawn").Pipe()
    worker = multiprocessing.get_context("spawn").Process(
        target=_generator_main, args=(child, calls, seconds, cpus and cpus[1]), daemon=True)
    worker.start()
    try:
        offers = await _wait_message(parent)
        sessions = []
        replies = []
        for index, (offer, phone_port) in enumerate(offers):
            session = relay.create_session(f"bench-{index}")
            plain_offer = parse(await session.process_offer(offer, "webrtc")).first("audio")
            assert plain_offer is not None and plain_offer.address is not None
            answer = await session.process_answer(asterisk_answer(phone_port), "plain")
            replies.append((answer, (plain_offer.address, plain_offer.port)))
            sessions.append(session)
        parent.send(replies)
        if await _wait_message(parent) != "start":
            raise RuntimeError("load generator did not start")
        profiler = cProfile.Profile() if profile else None
        usage_start = resource.getrusage(resource.RUSAGE_SELF)
        wall_start = time.monotonic()
        if profiler is not None:
            profiler.enable()
        await _wait_message(parent)  # "stop"
        usage_end = resource.getrusage(resource.RUSAGE_SELF)
        user = usage_end.ru_utime - usage_start.ru_utime
        system = usage_end.ru_stime - usage_start.ru_stime
        wall = time.monotonic() - wall_start
        if profiler is not None and profile is not None:
            profiler.disable()
            profiler.dump_stats(profile)
        report = await _wait_message(parent)
        relayed = sum(s.stats()["webrtc_to_plain_packets"] + s.stats()["plain_to_webrtc_packets"]
                      for s in sessions)
        report.update(user_seconds=user, system_seconds=system, wall_seconds=wall,
                      relayed=relayed,
                      lost=sum(s.stats()["lost"] for s in sessions))
        return report
    finally:
        await relay.close()
        worker.join(timeout=10)
        if worker.is_alive():
            worker.terminate()


def _percentiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    quantiles = statistics.quantiles(values, n=100)
    return f"p50 {quantiles[49]:.0f} µs, p99 {quantiles[98]:.0f} µs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio",
                        help="event loop of the relay process")
    parser.add_argument("--no-pin", action="store_true",
                        help="let relay and load share CPUs (default: one CPU each)")
    parser.add_argument("--profile", metavar="FILE",
                        help="write a cProfile of the relay process during the load")
    args = parser.parse_args()
    calls = max(1, min(args.calls, MAX_CALLS))
    seconds = max(1.0, min(args.seconds, MAX_SECONDS))
    if args.loop == "uvloop":
        import uvloop

        report = uvloop.run(_relay(calls, seconds, args.profile, not args.no_pin))
    else:
        report = asyncio.run(_relay(calls, seconds, args.profile, not args.no_pin))
    relayed = report["relayed"]
    to_phone_loss = 1 - report["received_at_phones"] / report["sent_browser_to_phone"]
    to_browser_loss = 1 - report["received_at_browsers"] / report["sent_phone_to_browser"]
    print(f"event loop: {args.loop}, CPUs {'shared' if args.no_pin else 'pinned apart'}, "
          f"calls: {calls}, duration: {report['wall_seconds']:.1f} s, "
          f"packets relayed: {relayed} ({relayed / report['wall_seconds']:.0f}/s)")
    per_packet = 1e6 / max(relayed, 1)
    user, system = report["user_seconds"], report["system_seconds"]
    print(f"relay CPU per relayed packet (SRTP on the browser side, PCMU not decoded): "
          f"{(user + system) * per_packet:.1f} µs = user {user * per_packet:.1f} µs "
          f"(Python: loop, SRTP, forwarding) + system {system * per_packet:.1f} µs "
          f"(kernel UDP receive/send)")
    print(f"loss browser->phone: {to_phone_loss:.3%}, phone->browser: {to_browser_loss:.3%}, "
          f"sequence gaps seen by the relay: {report['lost']}")
    print(f"one-way latency browser->phone (incl. sender SRTP): "
          f"{_percentiles(report['latency_to_phone'])}")
    print(f"one-way latency phone->browser (incl. receiver SRTP): "
          f"{_percentiles(report['latency_to_browser'])}")


if __name__ == "__main__":
    main()
