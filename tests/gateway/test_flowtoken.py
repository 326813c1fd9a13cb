"""Flow tokens round-trip for every MAC value and refuse anything not signed by the cluster."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.flowtoken import FlowRef, FlowTokens

names = st.text(st.characters(blacklist_characters="~", min_codepoint=33, max_codepoint=0x2FF),
                min_size=1, max_size=40)


@given(secret=st.binary(min_size=16, max_size=32), node=names, flow=names)
def test_tokens_round_trip_whatever_bytes_the_mac_holds(secret: bytes, node: str, flow: str):
    tokens = FlowTokens(secret)
    assert tokens.decode(tokens.encode(FlowRef(node, flow))) == FlowRef(node, flow)


def test_tokens_from_another_secret_or_tampered_are_refused() -> None:
    token = FlowTokens(b"cluster-secret-1").encode(FlowRef("node-a", "ws:7"))
    assert FlowTokens(b"cluster-secret-2").decode(token) is None
    tampered = ("A" if token[0] != "A" else "B") + token[1:]
    assert FlowTokens(b"cluster-secret-1").decode(tampered) is None
    assert FlowTokens(b"cluster-secret-1").decode("not base64 at all!") is None
