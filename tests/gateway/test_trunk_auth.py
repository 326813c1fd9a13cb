"""Answering a trunk's challenge (gateway.trunk_auth): the credentials verify against the
challenge with the digest server's own check, the CSeq goes up by one, and a trunk without
credentials or with an unusable challenge gets no answer."""

from __future__ import annotations

from gateway.config import Trunk
from gateway.trunk_auth import answer_trunk_challenge
from sip.digest import DigestServer, VerifyOutcome, compute_ha1, parse_credentials
from sip.message import Request

TRUNK = Trunk("pbx", "192.0.2.10:5060", username="gateway", password="trunk-secret")


def forwarded_invite() -> Request:
    return Request("INVITE", "sip:0123@192.0.2.10:5060", [
        ("via", "Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKtrunkauth"),
        ("from", "From", "<sip:alice@example.com>;tag=a"), ("to", "To", "<sip:0123@pbx>"),
        ("call-id", "Call-ID", "trunk-auth-call"), ("cseq", "CSeq", "7 INVITE")])


def test_answer_verifies_against_the_challenge_and_raises_the_cseq() -> None:
    server = DigestServer("pbx.example", b"pbx secret")
    for status, challenge_header, credentials_header in [
        (407, "Proxy-Authenticate", "Proxy-Authorization"),
        (401, "WWW-Authenticate", "Authorization"),
    ]:
        request = forwarded_invite()
        challenge = request.response(status)
        for value in server.challenge(stale=False):
            challenge.add(challenge_header, value)
        retry = answer_trunk_challenge(request, TRUNK, challenge)
        assert retry is not None
        assert (retry.cseq.number, retry.cseq.method) == (8, "INVITE")
        assert request.cseq.number == 7  # the original stays as it was sent
        credentials = parse_credentials(retry.get(credentials_header) or "")
        ha1 = compute_ha1("gateway", "pbx.example", "trunk-secret", credentials.algorithm)
        assert server.verify(credentials, "INVITE", ha1) is VerifyOutcome.OK


def test_no_answer_without_credentials_or_with_an_unusable_challenge() -> None:
    request = forwarded_invite()
    challenge = request.response(407)
    challenge.add("Proxy-Authenticate", 'Digest realm="pbx", nonce="n1"')
    assert answer_trunk_challenge(request, Trunk("pbx", "192.0.2.10:5060"), challenge) is None
    unusable = request.response(407)
    unusable.add("Proxy-Authenticate", "Basic realm=pbx")
    assert answer_trunk_challenge(request, TRUNK, unusable) is None
