"""The pjsua phone harness: two real pjsua2 phones call each other directly, no gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.audio import assert_hears, read_wav_pcm
from tests.support.pjsua_phone import PjsuaPhone

ALICE_TONE = 440.0
BOB_TONE = 1000.0
TONE_LISTENING_SECONDS = 1.5


@pytest.fixture
async def phones() -> AsyncIterator[tuple[PjsuaPhone, PjsuaPhone]]:
    alice = await PjsuaPhone.start("harness-alice")
    bob = await PjsuaPhone.start("harness-bob")
    try:
        yield alice, bob
    finally:
        await alice.stop()
        await bob.stop()


async def connect(alice: PjsuaPhone, bob: PjsuaPhone) -> None:
    await alice.call(bob.uri())
    incoming = await bob.wait_for("incoming_call")
    assert incoming["has_sdp"]
    await bob.answer(180)
    await alice.wait_for("call_state", state="EARLY", code=180)
    await bob.answer(200)
    await alice.wait_for("call_state", state="CONFIRMED")
    await bob.wait_for("call_state", state="CONFIRMED")


async def test_direct_call_carries_each_tone_and_dtmf_and_callee_hangs_up(
    phones: tuple[PjsuaPhone, PjsuaPhone], tmp_path: Path
) -> None:
    alice, bob = phones
    await alice.play_tone(ALICE_TONE)
    await bob.play_tone(BOB_TONE)
    await alice.record(tmp_path / "alice-heard.wav")
    await bob.record(tmp_path / "bob-heard.wav")
    await connect(alice, bob)
    alice_media = await alice.wait_for("media_active")
    bob_media = await bob.wait_for("media_active")
    assert alice_media["codec"] == bob_media["codec"]
    # Let a stretch of tone through before DTMF, whose events replace the caller's audio.
    await asyncio.sleep(TONE_LISTENING_SECONDS)
    await alice.stop_recording()
    await bob.stop_recording()

    await alice.send_dtmf("1234#")
    digits = [(await bob.wait_for("dtmf"))["digit"] for _ in range(5)]
    assert "".join(digits) == "1234#"

    await bob.hangup()
    assert (await alice.wait_for("call_state", state="DISCONNECTED"))["code"] == 200
    await bob.wait_for("call_state", state="DISCONNECTED")

    alice_heard, alice_rate = read_wav_pcm(tmp_path / "alice-heard.wav")
    bob_heard, bob_rate = read_wav_pcm(tmp_path / "bob-heard.wav")
    assert_hears(alice_heard, alice_rate, BOB_TONE)
    assert_hears(bob_heard, bob_rate, ALICE_TONE)


async def test_caller_hangs_up_and_codec_choice_is_honoured(
    phones: tuple[PjsuaPhone, PjsuaPhone],
) -> None:
    alice, bob = phones
    assert await alice.set_codecs(["PCMA"]) == ["PCMA/8000/1"]
    await connect(alice, bob)
    assert (await bob.wait_for("media_active"))["codec"] == "PCMA"
    await alice.hangup()
    await alice.wait_for("call_state", state="DISCONNECTED")
    assert (await bob.wait_for("call_state", state="DISCONNECTED"))["code"] == 200


async def test_callee_rejects_with_busy(phones: tuple[PjsuaPhone, PjsuaPhone]) -> None:
    alice, bob = phones
    await alice.call(bob.uri())
    await bob.wait_for("incoming_call")
    await bob.reject(486)
    disconnected = await alice.wait_for("call_state", state="DISCONNECTED")
    assert disconnected["code"] == 486


async def test_late_offer_call_to_an_auto_answering_trunk_gets_media() -> None:
    caller = await PjsuaPhone.start("harness-late-caller")
    trunk = await PjsuaPhone.start("harness-trunk", auto_answer=200)
    try:
        await caller.call(trunk.uri("4000"), late_offer=True)
        incoming = await trunk.wait_for("incoming_call")
        assert not incoming["has_sdp"]
        assert incoming["to"].startswith("<sip:4000@127.0.0.1")
        await caller.wait_for("call_state", state="CONFIRMED")
        assert (await caller.wait_for("media_active"))["codec"]
        await trunk.wait_for("media_active")
        await caller.hangup()
        await trunk.wait_for("call_state", state="DISCONNECTED")
    finally:
        await caller.stop()
        await trunk.stop()


async def test_phones_call_each_other_over_tcp() -> None:
    alice = await PjsuaPhone.start("harness-tcp-alice", transport="tcp")
    bob = await PjsuaPhone.start("harness-tcp-bob", transport="tcp", auto_answer=200)
    try:
        await alice.call(bob.uri())
        assert "SIP/2.0/TCP" in (await bob.wait_for("incoming_call"))["request"]
        await alice.wait_for("call_state", state="CONFIRMED")
        await bob.hangup()
        await alice.wait_for("call_state", state="DISCONNECTED")
    finally:
        await alice.stop()
        await bob.stop()


CALLS_IN_A_ROW = 6  # pjsua keeps 4 call slots: calls 5 and 6 reuse the ids of calls 1 and 2


async def test_six_calls_in_a_row_each_stay_up_until_hung_up(
    phones: tuple[PjsuaPhone, PjsuaPhone],
) -> None:
    alice, bob = phones
    for round_number in range(1, CALLS_IN_A_ROW + 1):
        call = await alice.call(bob.uri())
        incoming = await bob.wait_for("incoming_call")
        await bob.answer(200, call=incoming["call"])
        await alice.wait_for("call_state", call=call, state="CONFIRMED")
        await bob.wait_for("call_state", call=incoming["call"], state="CONFIRMED")
        # Both sides still see exactly this one call up: nothing ended it behind the test's back.
        for phone in (alice, bob):
            assert [(c["state"], c["code"]) for c in await phone.calls()] == [
                ("CONFIRMED", 200)
            ], f"call {round_number} on {phone.name}"
        await alice.hangup(call=call)
        ended = await bob.wait_for("call_state", call=incoming["call"], state="DISCONNECTED")
        assert ended["code"] == 200, f"call {round_number}: {ended}"
        await alice.wait_for("call_state", call=call, state="DISCONNECTED")
