"""register() and lookup() throughput of both location backends.

Prints ops/s, wall µs per op and CPU µs per op (this process only: the gateway's share,
excluding redis-server). Every loop is bounded in count and in time.

    python bench/location_bench.py [--ops 5000] [--redis-url redis://127.0.0.1:6379/15]

--redis-url takes every form of the gateway's --redis, redis+sentinel:// and redis+cluster://
included.

Without --redis-url a private redis-server is started on a free loopback port.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402

from gateway.location import (  # noqa: E402
    ContactChange,
    LocationService,
    MemoryLocationService,
    RedisLocationService,
    RegisterChange,
)
from gateway.redis_connect import open_redis, parse_redis_url  # noqa: E402

TIME_LIMIT = 20.0  # seconds per measured loop, whatever --ops says


def register_change(index: int, cseq: int) -> RegisterChange:
    return RegisterChange(
        aor=f"sip:user{index}@example.com",
        call_id=f"bench-{index}",
        cseq=cseq,
        contacts=(
            ContactChange(
                f"sip:{index:x}@{index % 250}.invalid;transport=ws",
                600,
                1.0,
                f"<urn:uuid:00000000-0000-1000-8000-{index:012d}>",
                1,
            ),
        ),
        remove_all=False,
        node_id="bench-node",
        connection_id=f"ws-{index}",
        transport="wss",
        received=f"127.0.0.1:{10000 + index % 50000}",
        path=(),
        user_agent="JsSIP 3.10.0",
        now=time.time(),
    )


async def measure(name: str, ops: int, operation: Callable[[int], Awaitable[object]]) -> None:
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    deadline = wall_start + TIME_LIMIT
    done = 0
    while done < ops and time.perf_counter() < deadline:
        await operation(done)
        done += 1
    wall = time.perf_counter() - wall_start
    cpu = time.process_time() - cpu_start
    print(
        f"  {name:<22} {done:>7} ops  {done / wall:>9.0f} ops/s  "
        f"{wall / done * 1e6:>7.1f} µs/op wall  {cpu / done * 1e6:>7.1f} µs/op CPU"
    )


async def bench_backend(label: str, location: LocationService, ops: int) -> None:
    print(f"{label}:")
    users = min(ops, 1000)
    await measure("register (new)", ops, lambda i: location.register(register_change(i, 1)))
    await measure(
        "register (refresh)", ops, lambda i: location.register(register_change(i % users, 2 + i))
    )
    await measure("lookup", ops, lambda i: location.lookup(f"sip:user{i % users}@example.com"))
    await location.close()


@contextmanager
def private_redis() -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as workdir:
        server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir]
            + ["--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        try:
            client = redis.Redis(port=port)
            for _ in range(500):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.01)
            client.close()
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            server.kill()
            server.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=5000, help="operations per measured loop")
    parser.add_argument("--redis-url", help="an existing Redis database to use (it is flushed)")
    args = parser.parse_args()
    await bench_backend("memory", MemoryLocationService(), args.ops)
    if args.redis_url:
        # Any --redis form (one server, Sentinel, Cluster: gateway/redis_connect.py).
        client = open_redis(parse_redis_url(args.redis_url), max_connections=1, pool_timeout=5)
        await client.flushdb()
        await client.aclose()
        await bench_backend("redis", RedisLocationService(args.redis_url), args.ops)
    else:
        with private_redis() as url:
            await bench_backend("redis", RedisLocationService(url), args.ops)


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
