"""Flow tokens round-trip for every MAC value and refuse anything not signed by the cluster, or
signed for another dialog or use: a Record-Route token opens nothing outside its dialog."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import flowtoken
from gateway.flowtoken import DIALOG, HOP, FlowRef, FlowTokens

names = st.text(st.characters(blacklist_characters="~", min_codepoint=33, max_codepoint=0x2FF),
                min_size=1, max_size=40)


@given(secret=st.binary(min_size=16, max_size=32), node=names, flow=names, call_id=names)
def test_tokens_round_trip_whatever_bytes_the_mac_holds(
    secret: bytes, node: str, flow: str, call_id: str
) -> None:
    tokens = FlowTokens(secret)
    for use in (DIALOG, HOP):
        assert tokens.decode(tokens.encode(FlowRef(node, flow), call_id, use), call_id, use) \
            == FlowRef(node, flow)


def test_tokens_from_another_secret_or_tampered_are_refused() -> None:
    token = FlowTokens(b"cluster-secret-1").encode(FlowRef("node-a", "ws:7"), "call-1")
    assert FlowTokens(b"cluster-secret-2").decode(token, "call-1") is None
    tampered = ("A" if token[0] != "A" else "B") + token[1:]
    assert FlowTokens(b"cluster-secret-1").decode(tampered, "call-1") is None
    assert FlowTokens(b"cluster-secret-1").decode("not base64 at all!", "call-1") is None


def test_a_token_is_bound_to_its_call_id_and_its_use() -> None:
    tokens = FlowTokens(b"cluster-secret-1")
    record_route = tokens.encode(FlowRef("node-a", "ws:7"), "call-1", DIALOG)
    assert tokens.decode(record_route, "call-2", DIALOG) is None
    # Seen by every caller in a Record-Route, it must never pass for a node-to-node hop.
    assert tokens.decode(record_route, "call-1", HOP) is None
    hop = tokens.encode(FlowRef("node-a", "ws:7"), "call-1", HOP)
    assert tokens.decode(hop, "call-1", DIALOG) is None


def test_a_hop_token_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = FlowTokens(b"cluster-secret-1")
    hop = tokens.encode(FlowRef("node-a", "ws:7"), "call-1", HOP)
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + flowtoken.HOP_LIFETIME + 1)
    assert tokens.decode(hop, "call-1", HOP) is None
