"""User authentication (gateway.auth) in-process: the challenge and its header names, the
answer checked against the user file, a wrong password reported and challenged again, and
the caller's From that must be the authenticated user."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from gateway.auth import Authenticator, auth_headers
from gateway.users import FileUserStore
from sip.digest import build_authorization, select_challenge
from sip.message import Request
from tests.sip.core_peer import CorePeer
from tests.support.signalling_node import signalling_node, with_credentials

DOMAIN = "example.com"


def request_from(user: str, method: str = "INVITE") -> Request:
    return Request(method, f"sip:bob@{DOMAIN}", [
        ("via", "Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKauth"),
        ("from", "From", f"<sip:{user}@{DOMAIN}>;tag=a"), ("to", "To", f"<sip:bob@{DOMAIN}>"),
        ("call-id", "Call-ID", secrets.token_hex(6)), ("cseq", "CSeq", f"1 {method}")])


async def authenticator(tmp_path: Path) -> tuple[Authenticator, list[str], list[str]]:
    users = FileUserStore(tmp_path / "users.json")
    await users.add("alice", DOMAIN, "alice-pw")
    auth = Authenticator(users, DOMAIN, secrets.token_bytes(32), nonce_lifetime=60.0)
    verified: list[str] = []
    failed: list[str] = []
    auth.on_verified = verified.append
    auth.on_failed = failed.append
    return auth, verified, failed


def answer(request: Request, challenge_values: list[str], password: str, *, proxy: bool) -> None:
    request.add(auth_headers(proxy=proxy)[1], build_authorization(
        select_challenge(challenge_values), method=request.method, uri=request.uri,
        username="alice", password=password))


@pytest.mark.parametrize("proxy", [True, False])
async def test_challenge_then_verified(tmp_path: Path, proxy: bool) -> None:
    auth, verified, failed = await authenticator(tmp_path)
    request = request_from("alice")
    refusal = (await auth.authenticate(request, proxy=proxy)).refusal
    assert refusal is not None and refusal.status == (407 if proxy else 401)
    challenges = refusal.get_all(auth_headers(proxy=proxy)[0])
    assert len(challenges) == 2  # MD5 and SHA-256
    answer(request, challenges, "alice-pw", proxy=proxy)
    outcome = await auth.authenticate(request, proxy=proxy)
    assert (outcome.username, outcome.refusal, verified, failed) == ("alice", None, ["alice"], [])


async def test_wrong_password_is_reported_and_challenged_again(tmp_path: Path) -> None:
    auth, verified, failed = await authenticator(tmp_path)
    request = request_from("alice")
    refusal = (await auth.authenticate(request, proxy=True)).refusal
    assert refusal is not None
    answer(request, refusal.get_all("Proxy-Authenticate"), "guessed", proxy=True)
    outcome = await auth.authenticate(request, proxy=True)
    assert outcome.refusal is not None and outcome.refusal.status == 407
    assert (verified, failed) == ([], ["alice"])


async def test_caller_must_be_the_authenticated_user(tmp_path: Path) -> None:
    """Through the proxy of an in-process node: alice's credentials on mallory's From."""
    async with signalling_node(tmp_path, users={"alice": "alice-pw"}) as node:
        peer = CorePeer()
        await peer.start()
        try:
            invite = peer.new_request("INVITE", node.target)
            invite.uri = f"sip:bob@{DOMAIN}"
            invite.set("From", f"<sip:mallory@{DOMAIN}>;tag=m")
            responses, _ = await peer.send(invite, node.target)
            assert responses[-1].status == 407
            retry = with_credentials(invite, responses[-1], "alice", "alice-pw")
            retry.set("Via", peer.transport.via_value("udp", peer.transactions.new_branch()))
            responses, _ = await peer.send(retry, node.target)
            assert (responses[-1].status, responses[-1].reason) == (
                403, "From identity does not match the authenticated user")
        finally:
            await peer.close()
