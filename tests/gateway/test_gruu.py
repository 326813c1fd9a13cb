"""GRUUs (RFC 5627) as gateway.gruu makes and reads them, checked through the SIP URI parser."""

from __future__ import annotations

import base64
import secrets

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.gruu import Gruus, GruuTarget, call_id_digest, instance_urn
from sip.errors import SipError
from sip.message import Request, parse_message
from sip.uri import SipUri

AOR = "sip:alice@example.test"
INSTANCE = '"<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>"'  # as a Contact carries it
URN = "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
CALL_ID = "a84b4c76e66710@pc33.example.test"


@pytest.fixture
def gruus() -> Gruus:
    return Gruus(secrets.token_bytes(32))


def resolve(gruus: Gruus, uri: str) -> GruuTarget | None:
    return gruus.resolve(SipUri.parse(uri))


def token_of(temporary_gruu: str) -> str:
    user = SipUri.parse(temporary_gruu).user or ""
    assert user.startswith("tgruu.")
    return user.removeprefix("tgruu.")


def test_public_gruu_is_the_aor_with_the_instance_urn(gruus: Gruus) -> None:
    public = gruus.public(AOR, INSTANCE)
    assert public == f"{AOR};gr={URN}"
    assert resolve(gruus, public) == GruuTarget(AOR, URN, None)


def test_public_gruu_escapes_what_a_uri_parameter_cannot_hold(gruus: Gruus) -> None:
    public = gruus.public(AOR, '"<urn:x-test:a b;c=d%e"f>"')
    assert public == f"{AOR};gr=urn:x-test:a%20b%3Bc%3Dd%25e%22f"
    uri = SipUri.parse(public)
    assert set(uri.params) == {"gr"}
    target = gruus.resolve(uri)
    assert target is not None and target.instance == 'urn:x-test:a b;c=d%e"f'


@given(st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40))
def test_any_instance_survives_a_public_gruu_in_a_request_line(instance: str) -> None:
    gruus = Gruus(b"fixed secret for hypothesis")
    public = gruus.public(AOR, f"<{instance}>")
    request = parse_message(
        f"MESSAGE {public} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1\r\n"
        f"From: <sip:bob@example.test>;tag=1\r\nTo: <{public}>\r\nCall-ID: x\r\n"
        "CSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n".encode()
    )
    assert isinstance(request, Request)
    target = gruus.resolve(request.ruri)
    assert target is not None and target.instance == instance_urn(f"<{instance}>")


def test_temporary_gruu_round_trip_reaches_only_its_instance_and_call_id(
    gruus: Gruus,
) -> None:
    temporary = gruus.temporary(AOR, INSTANCE, CALL_ID)
    uri = SipUri.parse(temporary)
    assert uri.host == "example.test" and uri.params == {"gr": None}
    target = gruus.resolve(uri)
    assert target == GruuTarget(AOR, URN, call_id_digest(CALL_ID))
    assert target.temporary
    assert target.admits(INSTANCE, CALL_ID)
    assert target.admits(URN, CALL_ID)
    assert not target.admits(INSTANCE, "another-call-id@pc33")  # §5.3: new Call-ID, invalid
    assert not target.admits('"<urn:uuid:00000000-0000-0000-0000-000000000000>"', CALL_ID)
    assert not target.admits(None, CALL_ID)
    assert target.names_instance(INSTANCE)


def test_public_gruu_admits_its_instance_under_any_call_id(gruus: Gruus) -> None:
    target = resolve(gruus, gruus.public(AOR, INSTANCE))
    assert target is not None and not target.temporary
    assert target.admits(INSTANCE, CALL_ID) and target.admits(INSTANCE, "other")
    assert not target.admits(None, CALL_ID)


def test_each_temporary_gruu_is_new_and_reveals_neither_user_nor_instance(
    gruus: Gruus,
) -> None:
    first = gruus.temporary(AOR, INSTANCE, CALL_ID)
    second = gruus.temporary(AOR, INSTANCE, CALL_ID)
    assert first != second
    for temporary in (first, second):
        token = token_of(temporary)
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        for secret_part in (b"alice", b"f81d4fae", CALL_ID.encode()):
            assert secret_part not in raw
        assert "alice" not in temporary and "f81d4fae" not in temporary
    assert resolve(gruus, first) == resolve(gruus, second)


def test_forged_or_garbled_tokens_decode_to_none(gruus: Gruus) -> None:
    token = token_of(gruus.temporary(AOR, INSTANCE, CALL_ID))
    flipped = token[:20] + ("A" if token[20] != "A" else "B") + token[21:]
    other_gateway = Gruus(secrets.token_bytes(32))
    foreign = token_of(other_gateway.temporary(AOR, INSTANCE, CALL_ID))
    for bad in (flipped, token[:-1], token[:10], "", "!!!!", foreign, token + "AAAA"):
        assert gruus.decode_temporary(bad) is None, bad
    assert gruus.decode_temporary(token) is not None


def test_gr_uri_that_is_no_gruu_of_ours_is_404(gruus: Gruus) -> None:
    token = token_of(gruus.temporary(AOR, INSTANCE, CALL_ID))
    for uri in (f"sip:tgruu.{token[:-2]}@example.test;gr", "sip:alice@example.test;gr",
                "sip:tgruu.@example.test;gr", f"sip:{token}@example.test;gr"):
        with pytest.raises(SipError) as raised:
            resolve(gruus, uri)
        assert raised.value.status == 404, uri


def test_uri_without_gr_is_not_a_gruu(gruus: Gruus) -> None:
    assert resolve(gruus, AOR) is None
    assert resolve(gruus, "sip:tgruu.abc@example.test") is None
    assert resolve(gruus, "sip:alice@example.test;transport=ws;grx=1") is None


def test_the_same_secret_reads_another_nodes_temporary_gruu() -> None:
    secret = secrets.token_bytes(32)
    temporary = Gruus(secret).temporary(AOR, INSTANCE, CALL_ID)
    assert resolve(Gruus(secret), temporary) == GruuTarget(AOR, URN, call_id_digest(CALL_ID))
