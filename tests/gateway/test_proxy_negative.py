"""What the proxy refuses, seen by a hand-written UDP client: 407 without credentials (and the
trunk never hears of it), 403 spoofed From, 404, 480, 482 loop, 483, 481, call limits."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sip.digest import build_authorization, select_challenge
from sip.message import Response
from tests.fixtures.gateway import GatewayFactory, GatewayProcess
from tests.sip.core_peer import RawUdpPeer
from tests.support.ports import free_udp_ports
from tests.support.sipp import free_port, messages, register_then_serve, run_sipp

DOMAIN = "example.test"
SILENCE = 1.0  # seconds a peer that must hear nothing is watched


@dataclass
class RawUac:
    """A UDP user agent writing its requests by hand, answering 407 challenges like a phone."""

    peer: RawUdpPeer
    gateway: tuple[str, int]

    @classmethod
    async def open(cls, port: int) -> RawUac:
        return cls(await RawUdpPeer.open(), ("127.0.0.1", port))

    def close(self) -> None:
        self.peer.close()

    def request(self, method: str, ruri: str, *, from_user: str, call_id: str, cseq: int,
                to_tag: str | None = None, max_forwards: int = 70, extra: str = "") -> tuple[
                    str, str]:
        host, port = self.peer.address
        branch = f"z9hG4bK{secrets.token_hex(6)}"
        to_user = ruri.removeprefix("sip:").partition("@")[0]
        to = f"<sip:{to_user}@{DOMAIN}>" + (f";tag={to_tag}" if to_tag else "")
        text = (
            f"{method} {ruri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{port};branch={branch};rport\r\n"
            f"Max-Forwards: {max_forwards}\r\n"
            f"From: <sip:{from_user}@{DOMAIN}>;tag=raw{cseq}\r\n"
            f"To: {to}\r\n"
            f"Call-ID: {call_id}\r\n"
            f"CSeq: {cseq} {method}\r\n"
            f"Contact: <sip:{from_user}@{host}:{port}>\r\n"
            f"{extra}"
            "Content-Length: 0\r\n\r\n"
        )
        return text, branch

    async def final(self, method: str, cseq: int) -> Response:
        """The final response to our request (provisionals and strays skipped); a non-2xx
        final to an INVITE is ACKed as §17.1.1.3 asks."""
        while True:
            message = await self.peer.next_message(timeout=10.0)
            if not isinstance(message, Response) or message.cseq.number != cseq or \
                    message.cseq.method != method or message.status < 200:
                continue
            if method == "INVITE" and message.status >= 300:
                self._ack(message)
            return message

    def _ack(self, response: Response) -> None:
        via = response.get_all("via")[0]
        text = (
            f"ACK {self._last_ruri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n"
            f"From: {response.get('from')}\r\nTo: {response.get('to')}\r\n"
            f"Call-ID: {response.call_id}\r\nCSeq: {response.cseq.number} ACK\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        self.peer.send(text, self.gateway)

    async def send(self, method: str, ruri: str, *, from_user: str = "alice",
                   call_id: str | None = None, cseq: int = 1, **options: object) -> Response:
        self._last_ruri = ruri
        text, _ = self.request(method, ruri, from_user=from_user,
                               call_id=call_id or secrets.token_hex(8), cseq=cseq,
                               **options)  # type: ignore[arg-type]
        self.peer.send(text, self.gateway)
        return await self.final(method, cseq)

    async def send_authenticated(
        self, method: str, ruri: str, *, user: str, password: str, from_user: str | None = None,
        **options: Any,
    ) -> Response:
        """Send, answer the 407 with user's credentials, return the final response to that."""
        call_id = secrets.token_hex(8)
        challenge = await self.send(method, ruri, from_user=from_user or user, call_id=call_id,
                                    **options)
        assert challenge.status == 407, f"expected a 407 challenge, got {challenge.status}"
        credentials = build_authorization(
            select_challenge(challenge.get_all("proxy-authenticate")), method=method, uri=ruri,
            username=user, password=password,
        )
        return await self.send(method, ruri, from_user=from_user or user, call_id=call_id,
                               cseq=2, extra=f"Proxy-Authorization: {credentials}\r\n",
                               **options)


def users() -> dict[str, str]:
    return {name: secrets.token_urlsafe(9) for name in ("alice", "bob", "carol")}


def write_config(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


async def open_uac(gateway: GatewayProcess) -> RawUac:
    assert gateway.udp_port is not None
    return await RawUac.open(gateway.udp_port)


async def test_unauthenticated_invite_is_challenged_and_never_reaches_the_trunk(
    gateway_factory: GatewayFactory, tmp_path: Path,
) -> None:
    pbx = await RawUdpPeer.open()
    config = write_config(tmp_path / "trunk.toml", (
        f'[[trunks]]\nname = "pbx"\naddress = "127.0.0.1:{pbx.address[1]}"\n'
        'match = "9[0-9]+"\nstrip_prefix = "9"\n'
    ))
    gateway = await gateway_factory(users=users(), domain=DOMAIN, transports=("udp",),
                                    extra_args=["--config", config])
    uac = await open_uac(gateway)
    try:
        refused = await uac.send("INVITE", f"sip:9555123@{DOMAIN}")
        assert refused.status == 407
        assert (refused.get("proxy-authenticate") or "").startswith("Digest ")
        assert await pbx.nothing_within(SILENCE), "the PBX heard an unauthenticated INVITE"
    finally:
        uac.close()
        pbx.close()


async def test_authenticated_user_with_a_spoofed_from_is_forbidden(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = await gateway_factory(users=users(), domain=DOMAIN, transports=("udp",))
    callee = await register_then_serve(gateway, "carol", "uas_answer.xml", timeout=5)
    uac = await open_uac(gateway)
    try:
        refused = await uac.send_authenticated(
            "INVITE", f"sip:carol@{DOMAIN}", user="alice", password=gateway.users["alice"],
            from_user="bob",
        )
        assert (refused.status, refused.reason) == (
            403, "From identity does not match the authenticated user")
    finally:
        uac.close()
    result = await callee.stop()
    assert "INVITE sip:" not in messages(result)


async def test_unknown_user_is_404_and_unregistered_user_is_480(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = await gateway_factory(users=users(), domain=DOMAIN, transports=("udp",))
    uac = await open_uac(gateway)
    try:
        password = gateway.users["alice"]
        unknown = await uac.send_authenticated("INVITE", f"sip:nobody@{DOMAIN}", user="alice",
                                               password=password)
        assert unknown.status == 404
        never = await uac.send_authenticated("INVITE", f"sip:bob@{DOMAIN}", user="alice",
                                             password=password)
        assert never.status == 480
        # Registered, then gone: the binding was removed (REGISTER Expires: 0).
        port = free_port("udp")
        for expires in ("300", "0"):
            registered = await run_sipp(
                "register_uac.xml", remote=f"127.0.0.1:{gateway.udp_port}", port=port,
                service="carol", auth=("carol", gateway.users["carol"]),
                keys={"domain": DOMAIN, "expires": expires}, timeout=10,
                media_port=free_udp_ports(4),
            )
            registered.assert_success()
        gone = await uac.send_authenticated("INVITE", f"sip:carol@{DOMAIN}", user="alice",
                                            password=password)
        assert (gone.status, gone.reason) == (480, "Temporarily Unavailable (not registered)")
    finally:
        uac.close()


async def test_max_forwards_zero_is_483_and_unknown_dialog_is_481(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = await gateway_factory(users=users(), domain=DOMAIN, transports=("udp",))
    uac = await open_uac(gateway)
    try:
        hops = await uac.send("INVITE", f"sip:bob@{DOMAIN}", max_forwards=0)
        assert hops.status == 483
        stray = await uac.send("BYE", f"sip:bob@{DOMAIN}", to_tag="never-made")
        assert stray.status == 481
        stray_reinvite = await uac.send("INVITE", f"sip:bob@{DOMAIN}", to_tag="never-made")
        assert stray_reinvite.status == 481
    finally:
        uac.close()


async def test_trunk_pointing_back_at_the_gateway_is_a_loop(
    gateway_factory: GatewayFactory, tmp_path: Path,
) -> None:
    own_port = free_port("udp")
    config = write_config(tmp_path / "loop.toml", (
        f'[[trunks]]\nname = "mirror"\naddress = "127.0.0.1:{own_port}"\nmatch = "7[0-9]+"\n'
    ))
    gateway = await gateway_factory(
        users=users(), domain=DOMAIN, transports=("tcp",),
        extra_args=["--udp", f"127.0.0.1:{own_port}", "--config", config],
    )
    uac = await RawUac.open(own_port)
    try:
        looped = await uac.send_authenticated(
            "INVITE", f"sip:7001@127.0.0.1:{own_port}", user="alice",
            password=gateway.users["alice"],
        )
        assert looped.status == 482, f"{looped.status} {looped.reason}"
    finally:
        uac.close()


async def test_per_user_call_limit_refuses_caller_503_and_callee_486(
    gateway_factory: GatewayFactory, tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "limits.toml", "max_calls_per_user = 1\n")
    gateway = await gateway_factory(users=users(), domain=DOMAIN, transports=("udp",),
                                    extra_args=["--config", config])
    callee = await register_then_serve(gateway, "bob", "uas_answer.xml", timeout=10)
    uac = await open_uac(gateway)
    try:
        first = await uac.send_authenticated("INVITE", f"sip:bob@{DOMAIN}", user="alice",
                                             password=gateway.users["alice"])
        assert first.status == 200
        caller_limited = await uac.send_authenticated(
            "INVITE", f"sip:bob@{DOMAIN}", user="alice", password=gateway.users["alice"])
        assert (caller_limited.status, caller_limited.reason) == (
            503, f"Call limit of 1 reached for sip:alice@{DOMAIN}")
        callee_limited = await uac.send_authenticated(
            "INVITE", f"sip:bob@{DOMAIN}", user="carol", password=gateway.users["carol"])
        assert (callee_limited.status, callee_limited.reason) == (
            486, "Busy Here (call limit reached)")
    finally:
        uac.close()
        await callee.stop()
