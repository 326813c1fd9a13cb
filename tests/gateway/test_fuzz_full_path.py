"""A bounded fuzz run through the whole request path of a real in-process gateway (transport →
parser → registrar/proxy → SDP rewriting → response, and on to a registered phone): no
traceback logged, and nothing left behind (dialogs, transactions, media sessions)."""

from __future__ import annotations

from pathlib import Path

from tests.support.sip_fuzz import FuzzGateway, fuzz

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
