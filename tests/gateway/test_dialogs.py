"""The dialog table (gateway.dialogs) in-process: per-user and per-trunk counts, the flows a
call lives on, the 503 when full, expiry, and the release callback on every way out."""

from __future__ import annotations

import asyncio

import pytest

from gateway.dialogs import Dialog, DialogTable, Party, Replaces
from sip.errors import SipError
from sip.resolver import Target

ALICE = "sip:alice@example.com"
BOB = "sip:bob@example.com"


def table_recording_releases() -> tuple[DialogTable, list[str]]:
    released: list[str] = []

    async def on_released(dialog: Dialog) -> None:
        released.append(dialog.call_id)

    return DialogTable(on_released, max_dialogs=2), released


async def test_counts_flows_and_release() -> None:
    table, released = table_recording_releases()
    call = table.add(Dialog("call-1", "INVITE", caller=ALICE, callee=BOB, trunk="pbx"), 60.0)
    table.add(Dialog("sub-1", "SUBSCRIBE", caller=ALICE), 60.0)
    table.attach_flow(call, "ws:7")
    assert (table.calls_of_user(ALICE), table.calls_of_user(BOB), table.calls_of_trunk("pbx")) \
        == (1, 1, 1)  # a subscription is no call
    assert table.on_flow("ws:7") == [call]
    assert table.add(Dialog("call-1", "INVITE"), 60.0) is call  # the same Call-ID: the same
    assert table.release("call-1") is call
    assert (table.calls_of_user(ALICE), table.calls_of_trunk("pbx"), table.on_flow("ws:7")) \
        == (0, 0, [])
    await asyncio.sleep(0)
    assert released == ["call-1"]
    table.close()  # releases what is left
    await asyncio.sleep(0)
    assert released == ["call-1", "sub-1"] and len(table) == 0


async def test_full_table_refuses_with_503_until_one_expires() -> None:
    table, released = table_recording_releases()
    table.add(Dialog("a", "INVITE"), 60.0)
    short = table.add(Dialog("b", "INVITE"), 60.0)
    with pytest.raises(SipError) as refused:
        table.add(Dialog("c", "INVITE"), 60.0)
    assert refused.value.status == 503 and ("Retry-After", "10") in refused.value.headers
    table.extend(short, -1.0)  # its deadline has passed
    assert table.get("b") is None
    table.add(Dialog("c", "INVITE"), 60.0)
    await asyncio.sleep(0)
    assert released == ["b"]
    table.close()


async def test_typed_state_starts_empty() -> None:
    dialog = Dialog("typed", "INVITE")
    assert (dialog.media, dialog.caller_side, dialog.callee_side, dialog.trunk_cseq_offset,
            dialog.ack_answer_pending) == (None, "plain", "plain", 0, False)


async def test_replaces_names_a_party_of_a_confirmed_call_by_its_tags() -> None:
    """RFC 3891: to-tag is the recipient's own tag, from-tag its peer's; the swapped order (as
    JsSIP writes it for a call it received) names the same party. Unknown, unconfirmed or
    mismatched dialogs name nobody."""
    assert Replaces.parse("c1;to-tag=b;from-tag=a;early-only") == Replaces("c1", "b", "a")
    assert Replaces.parse("c1;to-tag=b") is None
    assert Replaces.in_uri_headers("Require=replaces&Replaces=c1%3Bto-tag%3Db%3Bfrom-tag%3Da") \
        == Replaces("c1", "b", "a")
    assert Replaces.in_uri_headers("Subject=x") is None

    table, _ = table_recording_releases()
    call = table.add(Dialog("c1", "INVITE", caller=ALICE, callee=BOB), 60.0)
    caller = Party(Target("udp", "192.0.2.1", 5060))
    callee = Party(Target("udp", "192.0.2.2", 5060))
    call.caller_tag, call.caller_party, call.caller_side = "a", caller, "webrtc"
    call.learn_callee("b", callee)
    assert table.replaced_party(Replaces("c1", "b", "a")) is None  # not answered yet
    call.confirmed = True
    to_callee = table.replaced_party(Replaces("c1", "b", "a"))
    assert to_callee is not None and (to_callee.party, to_callee.aor, to_callee.side) == \
        (callee, BOB, "plain")
    to_caller = table.replaced_party(Replaces("c1", "a", "b"))
    assert to_caller is not None and (to_caller.party, to_caller.aor, to_caller.side) == \
        (caller, ALICE, "webrtc")
    assert table.replaced_party(Replaces("c1", "b", "x")) is None
    assert table.replaced_party(Replaces("c2", "b", "a")) is None
    table.close()
