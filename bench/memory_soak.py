"""Does memory come back after load? A soak of an in-process gateway in cycles: each cycle
sends mutated, digest-signed REGISTER / INVITE (with browser or phone SDP, so media sessions are
opened and closed) / SUBSCRIBE / MESSAGE cases through the whole request path (the engine of
bench/fuzz_run.py), then waits until every dialog, transaction and media session has ended.

The gateway keeps its own collector settings (gateway/app.py: full collections are rare), so
what a cycle leaves is what a server would hold. Per cycle it prints the process's RSS at the
end of the load and once drained, the Python heap's allocated blocks, and how many objects a
full collection would find in reference cycles (counted in a forked child, so that this
process's heap stays as the gateway left it).

Run: `python bench/memory_soak.py [--cycles N] [--cases C] [--drain S] [--seed K]`.
The last lines compare the drained RSS of the last cycle with the cold start and with the first
drained cycle; exit code 1 when a cycle left dialogs, transactions or media sessions behind.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz_run import CHUNK_CASES, rss_mb  # noqa: E402  (bench/ is this script's directory)

from tests.support.sip_fuzz import FuzzGateway, cyclic_garbage, fuzz  # noqa: E402


def garbage_in_cycles() -> int:
    """Objects a full collection would free now, counted in a forked child so that this
    process keeps its heap (and its RSS) exactly as the gateway left it."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        os.write(write_end, str(sum(cyclic_garbage().values())).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        count = int(pipe.read() or "-1")
    os.waitpid(child, 0)
    return count


async def main(cycles: int, cases: int, drain: float, seed: int) -> int:
    leaks = False
    with tempfile.TemporaryDirectory() as workdir:
        gateway = FuzzGateway(Path(workdir))
        await gateway.start()
        cold = rss_mb()
        print(f"cold start: RSS {cold:.0f} MB, {sys.getallocatedblocks():,} heap blocks",
              flush=True)
        drained_rss: list[float] = []
        try:
            for cycle in range(cycles):
                started = time.monotonic()
                sent = chunk = 0
                while sent < cases:
                    run = await fuzz(gateway, seed=seed * 1_000_003 + cycle * 10_007 + chunk,
                                     cases=min(CHUNK_CASES, cases - sent), seconds=600)
                    sent += run.cases
                    chunk += 1
                loaded = rss_mb()
                left = await gateway.drained(drain)
                leaks = leaks or any(left.values())
                drained_rss.append(rss_mb())
                print(f"cycle {cycle + 1}: {sent:,} cases in {time.monotonic() - started:.0f} s; "
                      f"RSS {loaded:.0f} MB loaded, {drained_rss[-1]:.0f} MB drained; "
                      f"{sys.getallocatedblocks():,} heap blocks; "
                      f"{garbage_in_cycles():,} objects in reference cycles; left {left}",
                      flush=True)
        finally:
            await gateway.stop()
    first, last = drained_rss[0], drained_rss[-1]
    print(f"\nRSS drained after cycle 1: {first:.0f} MB ({first - cold:+.0f} MB over the cold "
          f"start: the allocator keeps the peak of the first load's in-flight requests)")
    print(f"RSS drained after cycle {cycles}: {last:.0f} MB ({last - first:+.0f} MB over cycle 1, "
          f"{(last - first) / max(cycles - 1, 1):+.1f} MB per further cycle of {cases:,} cases)")
    return 1 if leaks else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--cases", type=int, default=50_000, help="cases per cycle")
    parser.add_argument("--drain", type=float, default=30.0, help="seconds to wait for the end")
    parser.add_argument("--seed", type=int, default=7)
    arguments = parser.parse_args()
    sys.exit(asyncio.run(main(arguments.cycles, arguments.cases, arguments.drain,
                              arguments.seed)))
