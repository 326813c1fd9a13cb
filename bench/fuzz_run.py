"""A long fuzz run through the whole request path of an in-process gateway (the engine of
tests/gateway/test_fuzz_full_path.py, tests/support/sip_fuzz.py): mutated, digest-signed
REGISTER / INVITE / SUBSCRIBE / MESSAGE over UDP, with a registered phone answering.

Run: `python bench/fuzz_run.py [--cases N] [--seconds S] [--seed K]` (default 1,000,000 cases or
one hour, whichever ends first). Prints a progress line every 10 s (cases, cases/s, tracebacks,
dialogs/transactions/media sessions in flight, RSS) and the RSS before, at the end of the load and
once drained and at the end every distinct traceback
(grouped by exception type and the line that raised it) with one example, and what was left
behind once the transaction timers ran out. Exit code 1 when a traceback or a leak was seen.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.sip_fuzz import FuzzGateway, FuzzRun, fuzz  # noqa: E402

REPORT_EVERY = 10.0  # seconds
CHUNK_CASES = 2_000  # cases per fuzz() call between progress lines
DRAIN_TIMEOUT = 30.0


def rss_mb() -> float:
    """This process's resident memory now (gateway and fuzzer together), in MB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


async def main(cases: int, seconds: float, seed: int) -> int:
    with tempfile.TemporaryDirectory() as workdir:
        gateway = FuzzGateway(Path(workdir))
        await gateway.start()
        baseline = rss_mb()
        total = FuzzRun()
        started = last_report = time.monotonic()
        chunk = 0
        try:
            while total.cases < cases and time.monotonic() - started < seconds:
                left = min(CHUNK_CASES, cases - total.cases)
                run = await fuzz(gateway, seed=seed * 1_000_003 + chunk, cases=left,
                                 seconds=seconds - (time.monotonic() - started))
                chunk += 1
                total.cases += run.cases
                total.statuses.update(run.statuses)
                if time.monotonic() - last_report >= REPORT_EVERY:
                    last_report = time.monotonic()
                    elapsed = last_report - started
                    print(f"{total.cases:>9,} cases  {total.cases / elapsed:7.0f} cases/s  "
                          f"tracebacks {gateway.recorder.total}  in flight {gateway.counts()}  "
                          f"RSS {rss_mb():.0f} MB", flush=True)
            elapsed = time.monotonic() - started
            loaded = rss_mb()
            left_behind = await gateway.drained(DRAIN_TIMEOUT)
            gc.collect()
            drained = rss_mb()
        finally:
            await gateway.stop()
    print(f"\n{total.cases:,} cases in {elapsed:.0f} s: {total.cases / elapsed:.0f} cases/s "
          f"(seed {seed}; pure Python or compiled as installed)")
    print("answers by status:", dict(sorted(total.statuses.items())))
    print(f"left after {DRAIN_TIMEOUT:.0f} s of timers: {left_behind}")
    print(f"RSS: {baseline:.0f} MB before, {loaded:.0f} MB at the end of the load, "
          f"{drained:.0f} MB once drained")
    recorder = gateway.recorder
    print(f"distinct tracebacks: {len(recorder.counts)} ({recorder.total} in all)")
    for signature, count in recorder.counts.most_common():
        print(f"\n--- {count}x {signature}\n{recorder.examples[signature]}")
    return 1 if recorder.total or any(left_behind.values()) else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=3600.0)
    parser.add_argument("--seed", type=int, default=1)
    arguments = parser.parse_args()
    sys.exit(asyncio.run(main(arguments.cases, arguments.seconds, arguments.seed)))
