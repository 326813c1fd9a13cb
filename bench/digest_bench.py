"""CPU cost of the Digest steps on the REGISTER path: challenge, parse, verify.

Run: python bench/digest_bench.py [iterations]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

# The tree this script sits in, not whichever one the editable install points at.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sip.digest import (  # noqa: E402
    DigestServer,
    VerifyOutcome,
    build_authorization,
    compute_ha1,
    parse_challenge,
    parse_credentials,
)

REALM = "bench.ws2sip"
URI = f"sip:{REALM}"


def measure(label: str, iterations: int, step: Callable[[int], object]) -> None:
    started = time.perf_counter()
    for index in range(iterations):
        step(index)
    elapsed = time.perf_counter() - started
    print(f"{label:<34} {elapsed / iterations * 1e6:8.2f} µs/op  ({iterations} ops)")


def bench_algorithm(server: DigestServer, algorithm: str, iterations: int) -> None:
    ha1 = compute_ha1("alice", REALM, "secret", algorithm)
    headers = []
    for _ in range(iterations):
        value = next(v for v in server.challenge() if f"algorithm={algorithm}," in v)
        challenge = parse_challenge(value)
        headers.append(
            build_authorization(challenge, method="REGISTER", uri=URI, username="alice", ha1=ha1)
        )
    parsed = [parse_credentials(header) for header in headers]

    def verify(index: int) -> None:
        outcome = server.verify(parsed[index], "REGISTER", ha1)
        if outcome is not VerifyOutcome.OK:
            raise RuntimeError(f"verify #{index} gave {outcome}")

    def parse_and_verify(index: int) -> None:
        server.verify(parse_credentials(headers[index]), "REGISTER", ha1)

    measure(f"{algorithm} challenge()", iterations, lambda _index: server.challenge())
    measure(f"{algorithm} parse_credentials()", iterations, lambda i: parse_credentials(headers[i]))
    measure(f"{algorithm} verify()", iterations, verify)
    # Same headers again: every one is now a replay, which costs as much as an accepted one.
    measure(f"{algorithm} parse+verify (replays)", iterations, parse_and_verify)


def main(iterations: int) -> None:
    for algorithm in ("SHA-256", "MD5"):
        server = DigestServer(REALM, b"bench-secret", replay_window=iterations + 1)
        bench_algorithm(server, algorithm, iterations)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
