"""A bounded fuzz run through the whole request path of a real in-process gateway (transport →
parser → registrar/proxy → SDP rewriting → response, and on to a registered phone): no
traceback logged, and nothing left behind (dialogs, transactions, media sessions), not even as
reference cycles awaiting the collector."""

from __future__ import annotations

import gc
from pathlib import Path

from tests.support.sip_fuzz import FuzzGateway, cyclic_garbage, fuzz

CASES = 3000
TIME_LIMIT = 40.0  # seconds of sending at most, whatever the machine's load
DRAIN_TIMEOUT = 15.0  # transaction timers run at T1 = 50 ms: everything ends within ~4 s


async def test_mutated_authenticated_requests_leave_no_traceback_and_no_state(
    tmp_path: Path,
) -> None:
    gateway = FuzzGateway(tmp_path)
    await gateway.start()
    try:
        run = await fuzz(gateway, seed=14, cases=CASES, seconds=TIME_LIMIT)
        left = await gateway.drained(DRAIN_TIMEOUT)
    finally:
        await gateway.stop()
    assert run.cases >= 1000, f"only {run.cases} cases in {TIME_LIMIT} s"
    # The deep code was reached: calls were answered by bob (486), some got 488 or 400.
    assert run.statuses[486] > 0 and run.statuses[400] > 0, run.statuses
    assert gateway.recorder.total == 0, "\n\n".join(
        f"{count}x {signature}\n{gateway.recorder.examples[signature]}"
        for signature, count in gateway.recorder.counts.most_common(5))
    assert left == {"dialogs": 0, "transactions": 0, "media_sessions": 0}, left


async def test_ended_transactions_and_calls_are_freed_by_reference_counting(
    tmp_path: Path,
) -> None:
    """The gateway collects cycles rarely (gateway/app.py raises the thresholds for CPU), so
    every request and call must be freed by reference counting alone once it ends: a reference
    cycle per transaction or per call held hundreds of MB between full collections in a soak
    (bench/memory_soak.py). With the automatic collector off during the run, a full collection
    afterwards must find nothing."""
    gateway = FuzzGateway(tmp_path)
    await gateway.start()
    cyclic_garbage()  # what start-up left
    gc.disable()
    try:
        run = await fuzz(gateway, seed=15, cases=CASES // 2, seconds=TIME_LIMIT)
        left = await gateway.drained(DRAIN_TIMEOUT)
        garbage = cyclic_garbage()
    finally:
        gc.enable()
        await gateway.stop()
    assert run.statuses[200] > 0 and run.statuses[486] > 0, run.statuses  # calls were made
    assert left == {"dialogs": 0, "transactions": 0, "media_sessions": 0}, left
    assert not garbage, f"{sum(garbage.values())} objects in reference cycles after " \
        f"{run.cases} cases: {garbage.most_common(12)}"
