"""The SIPp harness: scenarios played against each other directly, no gateway."""

from __future__ import annotations

import pytest

from tests.support.sipp import Sipp, run_sipp

DOMAIN = {"domain": "example.test"}


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_uac_call_is_answered_by_uas_and_hung_up(transport: str) -> None:
    uas = await Sipp.start("uas_answer.xml", transport=transport, name=f"uas-{transport}")
    uac = await run_sipp("uac_call.xml", remote=f"127.0.0.1:{uas.port}", transport=transport,
                         service="bob", keys=DOMAIN, call_duration_ms=200,
                         name=f"uac-{transport}")
    uac.assert_success()
    assert uac.successful_calls == 1
    callee = await uas.wait()
    callee.assert_success()
    messages = uac.message_log_path.read_text()
    assert "SIP/2.0 180 Ringing" in messages and "BYE sip:" in messages


async def test_busy_callee_fails_the_uac_call() -> None:
    uas = await Sipp.start("uas_busy.xml", name="busy")
    uac = await run_sipp("uac_call.xml", remote=f"127.0.0.1:{uas.port}", service="bob",
                         keys=DOMAIN, timeout=10, name="uac-to-busy")
    assert (uac.exit_code, uac.failed_calls) == (1, 1), uac.describe()
    assert "486" in uac.errors
    (await uas.wait()).assert_success()


async def test_cancel_while_ringing_gets_487() -> None:
    uas = await Sipp.start("uas_no_answer.xml", name="no-answer")
    uac = await run_sipp("uac_cancel.xml", remote=f"127.0.0.1:{uas.port}", service="bob",
                         keys=DOMAIN, name="canceller")
    uac.assert_success()
    (await uas.wait()).assert_success()
    assert "SIP/2.0 487 Request Terminated" in uac.message_log_path.read_text()


@pytest.mark.parametrize(("password", "accepted"), [("right-secret", True), ("wrong", False)])
async def test_register_answers_the_digest_challenge(password: str, accepted: bool) -> None:
    registrar = await Sipp.start(
        "registrar_uas.xml", name="registrar",
        keys={**DOMAIN, "user": "alice", "password": "right-secret"},
    )
    client = await run_sipp("register_uac.xml", remote=f"127.0.0.1:{registrar.port}",
                            service="alice", auth=("alice", password),
                            keys={**DOMAIN, "expires": "60"}, timeout=10, name="register")
    checked = await registrar.wait()
    if accepted:
        client.assert_success()
        checked.assert_success()
    else:
        assert client.failed_calls == 1, client.describe()
        assert "403" in client.errors
        assert "SIP/2.0 403 Forbidden" in checked.message_log_path.read_text()
