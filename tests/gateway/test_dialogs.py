"""The dialog table (gateway.dialogs) in-process: per-user and per-trunk counts, the flows a
call lives on, the 503 when full, expiry, and the release callback on every way out."""

from __future__ import annotations

import asyncio

import pytest

from gateway.dialogs import Dialog, DialogTable
from sip.errors import SipError

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
