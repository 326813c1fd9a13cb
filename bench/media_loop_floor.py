"""The floor under bench/media_load.py: CPU per datagram of an asyncio process that only
receives each UDP packet and sends it on (no SRTP, no routing), at the same packet rate and
socket count as N relayed calls. Whatever media_load.py measures above this is the relay.

    python bench/media_loop_floor.py --calls 50 --seconds 10 [--loop uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import socket
import time
from multiprocessing.connection import Connection

MAX_CALLS = 200
MAX_SECONDS = 60.0
PACKET = bytes(172)  # 12-byte RTP header + 20 ms of PCMU


def _send(pipe: Connection, seconds: float, cpu: int | None) -> None:
    """The peers: send to every relay socket each 20 ms and drain what comes back."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    pipe.send(sink.getsockname())
    targets: list[tuple[str, int]] = pipe.recv()
    start = time.monotonic()
    for tick in range(int(seconds / 0.02)):
        for target in targets:  # one packet per socket per 20 ms, like one call direction
            sender.sendto(PACKET, target)
        try:
            while True:
                sink.recv(2048)
        except BlockingIOError:
            pass
        time.sleep(max(0.0, start + (tick + 1) * 0.02 - time.monotonic()))
    pipe.send("done")


class _Forward(asyncio.DatagramProtocol):
    def __init__(self, sink: tuple[str, int], counter: list[int]) -> None:
        self.sink = sink
        self.counter = counter
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, self.sink)
        self.counter[0] += 1


async def _floor(calls: int, seconds: float) -> tuple[float, float, int]:
    loop = asyncio.get_running_loop()
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        os.sched_setaffinity(0, {cpus[0]})
    parent, child = multiprocessing.get_context("spawn").Pipe()
    worker = multiprocessing.get_context("spawn").Process(
        target=_send, args=(child, seconds, cpus[1] if len(cpus) >= 2 else None), daemon=True)
    worker.start()
    while not parent.poll():
        await asyncio.sleep(0.01)
    sink = tuple(parent.recv())
    counter = [0]
    transports = []
    for _ in range(2 * calls):
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Forward(sink, counter), local_addr=("127.0.0.1", 0))
        transports.append(transport)
    before = resource.getrusage(resource.RUSAGE_SELF)
    parent.send([t.get_extra_info("sockname") for t in transports])
    while not parent.poll():
        await asyncio.sleep(0.05)
    parent.recv()
    after = resource.getrusage(resource.RUSAGE_SELF)
    worker.join(5)
    for transport in transports:
        transport.close()
    return after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime, counter[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    args = parser.parse_args()
    calls = max(1, min(args.calls, MAX_CALLS))
    seconds = max(1.0, min(args.seconds, MAX_SECONDS))
    if args.loop == "uvloop":
        import uvloop

        user, system, packets = uvloop.run(_floor(calls, seconds))
    else:
        user, system, packets = asyncio.run(_floor(calls, seconds))
    per = 1e6 / max(packets, 1)
    print(f"event loop: {args.loop}, sockets: {2 * calls}, packets forwarded: {packets}")
    print(f"floor CPU per datagram (receive + send, nothing else): "
          f"{(user + system) * per:.1f} µs = user {user * per:.1f} µs + system "
          f"{system * per:.1f} µs")


if __name__ == "__main__":
    main()
