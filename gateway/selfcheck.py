"""`ws2sip selfcheck`: in a fresh interpreter, import every module the install compiles and
create an instance of each of their classes, with real arguments, then use each a little.

A compiled class can import cleanly and still be broken: a fresh install once built
webrtc.ice_media.MediaFirstProtocol (a mypyc class whose base, aioice's StunProtocol, stays
interpreted) with a wrong object layout, and its first instance crashed the process (SystemError
or a segfault) as the base's __init__ wrote its attributes. Only creating instances finds that.
mypyc checks argument types at run time, so the factories build genuine objects (a
TransactionLayer over a TransportLayer with real sockets, libsrtp sessions with a random key...)
inside one event loop. Each instance is then used: a method called, an attribute written and
read back, which touches what a corrupted layout would have misplaced.

The table (factories()) has one entry per class, keyed by qualified name. A class without one is
reported, so a class added to a compiled module cannot escape the check; so is an entry whose
class is gone. Classes that cannot have instances say so in their entry: an Enum's "instance" is
one of its members (member()), a typing.Protocol's an object with its members (conforming()),
an abstract base's an instance of a concrete subclass (subclass()).

The modules are imported by run(), not by this module's own imports, so that one that does not
import is reported as such instead of breaking `ws2sip selfcheck` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import hashlib
import importlib
import importlib.util
import inspect
import logging
import os
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from . import compiled

if TYPE_CHECKING:
    from pylibsrtp import Session

    from gateway.auth import Authenticator
    from gateway.location import MemoryLocationService
    from gateway.proxy import Proxy
    from gateway.registrar import Registrar
    from gateway.users import FileUserStore
    from gateway.wiring import Signalling
    from sip.digest import DigestServer
    from sip.message import Request
    from sip.server_transaction import ServerTransaction
    from sip.transaction import TransactionLayer
    from sip.transport import TransportLayer
    from sip.udp import UdpEndpoint, UdpFlow
    from webrtc.dtls import DtlsCertificate
    from webrtc.ports import PortPool
    from webrtc.relay import MediaRelay

DOMAIN = "example.com"
NODE_ID = "selfcheck"
ALICE = f"sip:alice@{DOMAIN}"
PASSWORD = "selfcheck password"
RTP_PORTS = (20000, 40000)  # the gateway's default media range; ports in use are skipped
SSRC = 0x5E1FC4EC
# Per factory and per use. Everything runs on loopback: only a hang comes near it.
STEP_TIMEOUT = 10.0

T = TypeVar("T")
Factory = Callable[["Kit"], Any]  # the instance, or an awaitable of it
Use = Callable[[Any, "Kit"], Any]  # None, or an awaitable

INSTANCE = "an instance of it"
MEMBER = "one of its members (an Enum has no other instances)"
CONFORMING = "an object with its members (a typing.Protocol has no instances)"
SUBCLASS = "an instance of a concrete subclass (an abstract base has none of its own)"


@dataclass(frozen=True)
class Check:
    """How to get an instance of one class (make), and what to do with it (use)."""

    make: Factory
    use: Use | None = None
    kind: str = INSTANCE


def new(make: Factory, use: Use | None = None) -> Check:
    return Check(make, use, INSTANCE)


def member(make: Factory, use: Use | None = None) -> Check:
    return Check(make, use, MEMBER)


def conforming(make: Factory, use: Use | None = None) -> Check:
    return Check(make, use, CONFORMING)


def subclass(make: Factory, use: Use | None = None) -> Check:
    return Check(make, use, SUBCLASS)


@dataclass
class Report:
    modules: list[str] = field(default_factory=list)  # the names of those imported
    classes: int = 0  # found and checked, whether or not they passed
    problems: list[str] = field(default_factory=list)


# --- entry points ------------------------------------------------------------------------------
def run() -> list[str]:
    """Import and check everything; the problems found, one line each (none: all is well)."""
    return check_install().problems


def main() -> int:
    with contextlib.suppress(AttributeError, ValueError, OSError):
        # A segfault in a compiled class is what this check is for: show where it happened.
        faulthandler.enable()
    report = check_install()
    if report.problems:
        for problem in report.problems:
            print(f"ws2sip selfcheck: {problem}", file=sys.stderr)
        return 1
    modules = [name for name in report.modules if name != compiled.RELAY_PATH_MODULE]
    relay_path = f" + {compiled.RELAY_PATH_MODULE}" if len(modules) < len(report.modules) else ""
    print(f"ws2sip selfcheck: {len(modules)} modules{relay_path}, {report.classes} classes, "
          f"{compiled.describe()}")
    return 0


def check_install() -> Report:
    """Import the compiled modules (and the C relay path where installed), check them all."""
    report = Report()
    namespaces: dict[str, ModuleType] = {}
    names = [compiled.module_name(path) for path in compiled.COMPILED_MODULES]
    if relay_path_present():
        names.append(compiled.RELAY_PATH_MODULE)
    for name in names:
        try:
            namespaces[name] = importlib.import_module(name)
        except Exception as error:
            report.problems.append(f"module {name} did not import: {_describe(error)}")
    report.modules = list(namespaces)
    try:
        table = factories()
    except Exception as error:
        report.problems.append(f"no class was checked: building the factory table (which "
                               f"imports every module) failed with {_describe(error)}")
        return report
    checked = check(namespaces, table)
    report.classes = checked.classes
    report.problems.extend(checked.problems)
    return report


def check(namespaces: Mapping[str, object], table: Mapping[str, Check] | None = None) -> Report:
    """Check every class each namespace defines (module name -> the module, or any object
    holding the module's globals as attributes) against the table, in one event loop."""
    return asyncio.run(_check(namespaces, factories() if table is None else table))


def classes_of(module_name: str, namespace: object) -> list[type]:
    """The classes a module defines (not those it imports), each once, in definition order."""
    found: dict[int, type] = {}
    for value in vars(namespace).values():
        if isinstance(value, type) and value.__module__ == module_name:
            found.setdefault(id(value), value)
    return list(found.values())


def relay_path_present() -> bool:
    """Whether the C relay path is installed. Importing it is then part of the check, which
    is why this does not ask compiled.relay_path_built(): that takes a broken one for none."""
    try:
        return importlib.util.find_spec(compiled.RELAY_PATH_MODULE) is not None
    except ImportError:
        return False


# --- the check ---------------------------------------------------------------------------------
async def _check(namespaces: Mapping[str, object], table: Mapping[str, Check]) -> Report:
    report = Report(modules=list(namespaces))
    kit = Kit()
    found: set[str] = set()
    try:
        for module_name, namespace in namespaces.items():
            for cls in classes_of(module_name, namespace):
                name = f"{module_name}.{cls.__qualname__}"
                found.add(name)
                report.classes += 1
                entry = table.get(name)
                if entry is None:
                    report.problems.append(f"no factory for {name}: add one to "
                                           f"gateway/selfcheck.py")
                    continue
                problem = await _check_class(name, cls, entry, kit)
                if problem is not None:
                    report.problems.append(problem)
    finally:
        report.problems.extend(await kit.close())
    for name in table:
        owner = next((module for module in namespaces if name.startswith(f"{module}.")), None)
        if owner is not None and name not in found:
            report.problems.append(f"a factory for {name}, which {owner} does not define: "
                                   f"remove it from gateway/selfcheck.py")
    return report


async def _check_class(name: str, cls: type, entry: Check, kit: Kit) -> str | None:
    try:
        instance = await _settle(entry.make(kit))
    except Exception as error:
        return f"{name}: its factory raised {_describe(error)}"
    made = type(instance)
    missing = ""
    if entry.kind == INSTANCE:
        wrong = made is not cls
    elif entry.kind == CONFORMING:
        absent = [member for member in _protocol_members(cls) if not hasattr(instance, member)]
        wrong, missing = bool(absent), f" without {', '.join(absent)}"
    elif entry.kind == SUBCLASS:
        wrong = made is cls or not isinstance(instance, cls)
    else:
        wrong = not isinstance(instance, cls)
    if wrong:
        return (f"{name}: its factory should make {entry.kind}, and made a "
                f"{made.__module__}.{made.__qualname__}{missing}")
    if entry.use is not None:
        try:
            await _settle(entry.use(instance, kit))
        except Exception as error:
            return f"{name}: using the instance its factory made raised {_describe(error)}"
    return None


def _protocol_members(protocol: type) -> list[str]:
    names = [*vars(protocol), *getattr(protocol, "__annotations__", {})]
    return sorted({name for name in names if not name.startswith("_")})


async def _settle(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await asyncio.wait_for(value, STEP_TIMEOUT)
    return value


def _describe(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return text.replace("\n", " ")


def _expect(actual: object, expected: object, what: str) -> None:
    if actual != expected:
        raise AssertionError(f"{what} is {actual!r}, expected {expected!r}")


async def _until(condition: Callable[[], object], what: str, timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise TimeoutError(f"no {what} within {timeout} s")
        await asyncio.sleep(0.002)


def _rtp(seq: int) -> bytes:
    """PCMU (payload type 0), 20 ms."""
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, SSRC) + b"\xd5" * 160


RTCP_RECEIVER_REPORT = struct.pack("!BBHI", 0x80, 201, 1, SSRC)  # with no report block


def _ignore_packet(packet: bytes) -> None:
    pass


def _ignore_datagram(data: bytes, address: Any) -> None:
    pass


def _ignore_error(error: Exception) -> None:
    pass


# --- shared objects ----------------------------------------------------------------------------
class Kit:
    """Real objects the factories share, made on first use, and what closes them at the end."""

    def __init__(self) -> None:
        self.secret = os.urandom(32)
        self.nominated: dict[int, Any] = {}  # an ICE connection's nominated pairs by component
        self._closers: list[Callable[[], object]] = []
        self._peer: socket.socket | None = None
        self._transport: TransportLayer | None = None
        self._endpoint: UdpEndpoint | None = None
        self._layer: TransactionLayer | None = None
        self._digest_server: DigestServer | None = None
        self._users: FileUserStore | None = None
        self._auth: Authenticator | None = None
        self._location: MemoryLocationService | None = None
        self._relay: MediaRelay | None = None
        self._signalling: Signalling | None = None
        self._pool: PortPool | None = None
        self._certificate: DtlsCertificate | None = None
        self._srtp: dict[str, tuple[Session, Session]] = {}

    def closing(self, thing: T, close: Callable[[], object]) -> T:
        """Have close (sync or async) called when the check ends, last registered first."""
        self._closers.append(close)
        return thing

    async def close(self) -> list[str]:
        problems = []
        while self._closers:
            close = self._closers.pop()
            try:
                await _settle(close())
            except Exception as error:
                problems.append(f"cleaning up after the checks failed: {_describe(error)}")
        # Transports closed just now call connection_lost on the next turns of the loop.
        for _ in range(3):
            await asyncio.sleep(0)
        return problems

    # --- sockets ---
    def udp_socket(self) -> socket.socket:
        """A bound, non-blocking loopback UDP socket."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.closing(sock, sock.close)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        return sock

    @property
    def peer(self) -> socket.socket:
        """Stands for the phone at the other end: what the checks send lands here, unread."""
        if self._peer is None:
            self._peer = self.udp_socket()
        return self._peer

    @property
    def peer_address(self) -> tuple[str, int]:
        host, port = self.peer.getsockname()
        return host, port

    # --- SIP ---
    def rows(self, method: str, uri: str = f"sip:bob@{DOMAIN}") -> list[tuple[str, str, str]]:
        """Header rows (key, name, value) of a request from the peer to uri (a REGISTER's
        domain-only URI has alice's address of record in To)."""
        from sip.branch import new_branch

        host, port = self.peer_address
        token = os.urandom(6).hex()
        return [
            ("via", "Via", f"SIP/2.0/UDP {host}:{port};branch={new_branch()};rport"),
            ("max-forwards", "Max-Forwards", "70"),
            ("from", "From", f"<{ALICE}>;tag={token}"),
            ("to", "To", f"<{uri if '@' in uri else ALICE}>"),
            ("call-id", "Call-ID", f"{token}@{host}"),
            ("cseq", "CSeq", f"1 {method}"),
            ("contact", "Contact", f"<sip:alice@{host}:{port}>"),
        ]

    def request(self, method: str, uri: str = f"sip:bob@{DOMAIN}") -> Request:
        from sip.message import Request

        return Request(method, uri, self.rows(method, uri))

    async def transport(self) -> TransportLayer:
        if self._transport is None:
            from sip.transport import TransportLayer

            transport = TransportLayer(idle_timeout=60.0)
            self.closing(transport, transport.close)
            await transport.listen_tcp("127.0.0.1", 0)
            self._transport = transport
        return self._transport

    async def endpoint(self) -> UdpEndpoint:
        """A UDP socket owned by the transport layer (as its own listeners are)."""
        if self._endpoint is None:
            from sip.udp import UdpEndpoint

            transport = await self.transport()
            _, endpoint = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: UdpEndpoint(transport), local_addr=("127.0.0.1", 0)
            )
            self._endpoint = self.closing(endpoint, endpoint.close)
        return self._endpoint

    async def flow(self) -> UdpFlow:
        """The flow to the peer: what is sent on it goes to the peer socket."""
        return (await self.endpoint()).flow_to(self.peer_address)

    async def layer(self) -> TransactionLayer:
        if self._layer is None:
            from sip.transaction import TransactionLayer

            layer = TransactionLayer(await self.transport())
            self._layer = self.closing(layer, layer.close)
        return self._layer

    async def server_transaction(self, request: Request) -> ServerTransaction:
        from sip.server_transaction import ServerTransaction

        via = request.top_via
        key = (via.branch or "", via.sent_by.lower(), request.method)
        transaction = ServerTransaction(await self.layer(), request, await self.flow(), key)
        return self.closing(transaction, transaction.terminate)

    def digest_server(self) -> DigestServer:
        if self._digest_server is None:
            from sip.digest import DigestServer

            self._digest_server = DigestServer(DOMAIN, self.secret)
        return self._digest_server

    # --- gateway ---
    async def users(self) -> FileUserStore:
        if self._users is None:
            from gateway.users import FileUserStore

            directory = tempfile.TemporaryDirectory(prefix="ws2sip-selfcheck-")
            self.closing(directory, directory.cleanup)
            users = FileUserStore(Path(directory.name) / "users.json")
            self._users = self.closing(users, users.close)
        return self._users

    async def auth(self) -> Authenticator:
        if self._auth is None:
            from gateway.auth import Authenticator

            self._auth = Authenticator(await self.users(), DOMAIN, self.secret, 300.0)
        return self._auth

    def location(self) -> MemoryLocationService:
        if self._location is None:
            from gateway.location import MemoryLocationService

            location = MemoryLocationService()
            self._location = self.closing(location, location.close)
        return self._location

    def relay(self) -> MediaRelay:
        if self._relay is None:
            from webrtc import MediaRelay

            relay = MediaRelay(bind_host="127.0.0.1", port_min=RTP_PORTS[0],
                               port_max=RTP_PORTS[1])
            self._relay = self.closing(relay, relay.close)
        return self._relay

    async def signalling(self) -> Signalling:
        """Wired as gateway.app wires it (gateway.wiring)."""
        if self._signalling is None:
            from gateway.config import Trunk
            from gateway.media import MediaAnchor
            from gateway.proxy import ProxyPolicy
            from gateway.registrar import RegistrarPolicy
            from gateway.wiring import wire_signalling

            signalling = wire_signalling(
                proxy_policy=ProxyPolicy(
                    domain=DOMAIN, node_id=NODE_ID, public_address="", invite_timeout=180.0,
                    max_calls_per_user=0,
                    trunks=(Trunk("pbx", "192.0.2.10:5060", match=r"^0\d+"),),
                ),
                registrar_policy=RegistrarPolicy(
                    domain=DOMAIN, node_id=NODE_ID, min_expires=60, max_expires=7200,
                    default_expires=3600, flow_timer=120,
                ),
                transactions=await self.layer(), transport=await self.transport(),
                location=self.location(), auth=await self.auth(), secret=self.secret,
                media=MediaAnchor(self.relay()),
            )
            self._signalling = self.closing(signalling, signalling.close)
        return self._signalling

    async def proxy(self) -> Proxy:
        return (await self.signalling()).proxy

    async def registrar(self) -> Registrar:
        return (await self.signalling()).registrar

    # --- media ---
    def pool(self) -> PortPool:
        if self._pool is None:
            from webrtc.ports import PortPool

            self._pool = PortPool("127.0.0.1", *RTP_PORTS)
        return self._pool

    def certificate(self) -> DtlsCertificate:
        if self._certificate is None:
            from webrtc.dtls import DtlsCertificate

            self._certificate = DtlsCertificate()
        return self._certificate

    def srtp_pair(self, name: str) -> tuple[Session, Session]:
        """Outbound and inbound libsrtp sessions sharing a random key: what the first protects,
        the second unprotects. A pair per name: libsrtp protects a sequence number only once."""
        if name not in self._srtp:
            from pylibsrtp import Policy, Session

            key = os.urandom(30)  # AES_CM_128_HMAC_SHA1_80: 16 bytes of key, 14 of salt
            self._srtp[name] = (Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND)),
                                Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND)))
        return self._srtp[name]


# --- the factory table -------------------------------------------------------------------------
def factories() -> dict[str, Check]:
    """Qualified class name -> Check, for every class of every module the install compiles."""
    table = {**_sip_factories(), **_gateway_factories(), **_webrtc_factories()}
    if relay_path_present():
        table.update(_relay_path_factories())
    return table


def _sip_factories() -> dict[str, Check]:
    from sip.branch import MAGIC_COOKIE
    from sip.client_transaction import ClientTransaction
    from sip.digest import (
        DigestAlgorithm,
        DigestChallenge,
        DigestCredentials,
        DigestServer,
        VerifyOutcome,
        _RandomPool,
        build_authorization,
        canonical_algorithm,
        compute_ha1,
        compute_response,
        parse_challenge,
        parse_credentials,
        select_challenge,
    )
    from sip.errors import SipError
    from sip.framing import KEEPALIVE_PING, PING, KeepAlivePing, StreamFramer
    from sip.headers import CSeq, NameAddr, Via
    from sip.message import Limits, Message, Request, Response, parse_message
    from sip.record import Record
    from sip.stream import StreamFlow
    from sip.timers import TimedTransaction, Timers, TransactionHost
    from sip.transaction import TransactionLayer
    from sip.transport import TransportLayer
    from sip.udp import UdpEndpoint, UdpFlow
    from sip.uri import SipUri

    alice_ha1 = compute_ha1("alice", DOMAIN, PASSWORD, "SHA-256")

    def use_uri(uri: SipUri, kit: Kit) -> None:
        _expect(str(uri), f"{ALICE}:5060;transport=tcp", "str(uri)")
        _expect(uri.transport, "tcp", "uri.transport")
        _expect(SipUri.parse(str(uri)), uri, "the URI parsed back")
        uri.port = 5080
        _expect(uri.copy().port, 5080, "the port written, in a copy")

    def use_name_addr(name_addr: NameAddr, kit: Kit) -> None:
        _expect(name_addr.uri.user, "alice", "the URI's user")
        _expect(name_addr.tag, "1928301774", "the tag")
        _expect(NameAddr.parse(str(name_addr)).display, "Alice", "the display name parsed back")

    def use_via(via: Via, kit: Kit) -> None:
        via.params["received"] = "198.51.100.7"
        _expect(via.branch, f"{MAGIC_COOKIE}776asdhds", "the branch")
        _expect(via.sent_by, "192.0.2.1:5060", "sent-by")
        _expect(Via.parse(str(via)), via, "the Via parsed back")

    def use_message(message: Message, kit: Kit) -> None:
        message.set_body(b"v=0\r\n", "application/sdp")
        _expect((message.call_id, message.content_type, message.get("l")),
                ("a84b4c76e66710", "application/sdp", "5"), "Call-ID, Content-Type, -Length")

    def use_request(request: Request, kit: Kit) -> None:
        request.validate()
        parsed = parse_message(request.to_bytes())
        _expect((parsed.start_line(), parsed.call_id), (request.start_line(), request.call_id),
                "start line and Call-ID parsed back")
        _expect(request.response(200, to_tag="uas").to.tag, "uas", "its response's To tag")

    def use_response(response: Response, kit: Kit) -> None:
        parsed = parse_message(response.to_bytes())
        _expect(isinstance(parsed, Response) and parsed.status, 180, "the status parsed back")
        _expect(response.copy().cseq, CSeq(1, "INVITE"), "a copy's CSeq")

    def make_credentials(kit: Kit) -> DigestCredentials:
        nonce = kit.digest_server().new_nonce()
        response = compute_response("SHA-256", alice_ha1, method="REGISTER", uri=f"sip:{DOMAIN}",
                                    nonce=nonce, qop="auth", nc="00000001", cnonce="0a4f113b")
        return DigestCredentials("alice", DOMAIN, nonce, f"sip:{DOMAIN}", response, "SHA-256",
                                 "auth", "00000001", "0a4f113b", None)

    def use_credentials(credentials: DigestCredentials, kit: Kit) -> None:
        verify = kit.digest_server().verify
        _expect(verify(credentials, "REGISTER", alice_ha1), VerifyOutcome.OK, "a first use")
        _expect(verify(credentials, "REGISTER", alice_ha1), VerifyOutcome.WRONG, "a replay")

    def use_digest_server(server: DigestServer, kit: Kit) -> None:
        challenges = server.challenge()
        _expect(parse_challenge(challenges[0]).realm, DOMAIN, "a challenge's realm")
        _expect(select_challenge(challenges).algorithm, "SHA-256", "the strongest challenge")

    def use_challenge(challenge: DigestChallenge, kit: Kit) -> None:
        answer = build_authorization(challenge, method="REGISTER", uri=f"sip:{DOMAIN}",
                                     username="alice", password=PASSWORD)
        _expect(kit.digest_server().verify(parse_credentials(answer), "REGISTER", alice_ha1),
                VerifyOutcome.OK, "the answer to the challenge, verified")

    def use_random_pool(pool: _RandomPool, kit: Kit) -> None:
        _expect(len(pool.take(48) + pool.take(48)), 96, "bytes taken across a refill")
        pool.discard()

    def use_framer(framer: StreamFramer, kit: Kit) -> None:
        data = kit.request("OPTIONS").to_bytes()
        _expect(list(framer.feed(data[:20])), [], "what a partial message gives")
        _expect(list(framer.feed(data[20:] + PING)), [data, KEEPALIVE_PING], "what the rest gives")
        _expect(framer.pending, 0, "the bytes left over")

    def use_timed(timed: TimedTransaction, kit: Kit) -> None:
        timed._retransmit_timer = asyncio.get_running_loop().call_later(60.0, _ignore_packet, b"")
        timed._stop_timers()
        _expect(timed._retransmit_timer, None, "the retransmission timer once stopped")

    def make_layer(kit: Kit) -> TransactionLayer:
        # Over a transport of its own: a layer takes over its transport's on_message.
        transport = TransportLayer()
        kit.closing(transport, transport.close)
        layer = TransactionLayer(transport, Timers(t1=0.1))
        return kit.closing(layer, layer.close)

    def use_layer(layer: TransactionLayer, kit: Kit) -> None:
        _expect(layer.new_branch()[:7], MAGIC_COOKIE, "a new branch's magic cookie")
        _expect((layer.loop, layer.transaction_count), (asyncio.get_running_loop(), 0),
                "its loop and transaction count")

    async def use_transaction_host(host: TransactionHost, kit: Kit) -> None:
        # Through the base class, as the state machines call it.
        _expect((host.timers, host.loop, host.transport),
                (Timers(), asyncio.get_running_loop(), await kit.transport()),
                "its timers, loop and transport")
        spawned: list[str] = []

        async def record_run() -> None:
            spawned.append("ran")

        host.spawn(record_run())
        await _until(lambda: spawned, "the spawned coroutine to run")
        layer = await kit.layer()
        server = await kit.server_transaction(kit.request("INVITE"))
        host.await_ack(server)
        _expect(layer.transaction_count, 1, "the transactions awaiting an ACK")
        host.forget(server)
        client = layer.create_client(kit.request("OPTIONS"), await kit.flow(),
                                     lambda response, _: None)
        _expect(layer.transaction_count, 1, "the transactions once a client one is created")
        host.forget(client)
        _expect(layer.transaction_count, 0, "the transactions left once both are forgotten")
        client.terminate()  # its timers

    def use_server_transaction(transaction: ServerTransaction, kit: Kit) -> None:
        transaction.respond(transaction.request.response(200, to_tag="uas"))  # to the peer
        last = transaction.last_response
        _expect((transaction.state, last and last.status), ("completed", 200),
                "state and last response after a 200")
        transaction.terminate()
        _expect(transaction.state, "terminated", "the state once terminated")

    async def make_client_transaction(kit: Kit) -> ClientTransaction:
        transaction = ClientTransaction(await kit.layer(), kit.request("OPTIONS"),
                                        await kit.flow(), lambda response, _: None)
        return kit.closing(transaction, transaction.terminate)

    def use_client_transaction(transaction: ClientTransaction, kit: Kit) -> None:
        transaction.start()  # sends the OPTIONS to the peer
        _expect(transaction.state, "trying", "the state once sent")
        transaction.receive_response(transaction.request.response(200, to_tag="uas"))
        _expect(transaction.state, "completed", "the state after a 200")
        transaction.terminate()

    def make_transport(kit: Kit) -> TransportLayer:
        transport = TransportLayer(limits=Limits(), idle_timeout=30.0)
        return kit.closing(transport, transport.close)

    async def use_transport(transport: TransportLayer, kit: Kit) -> None:
        bound = await transport.listen_udp("127.0.0.1", 0)
        _expect(transport.listening("udp"), bound, "the UDP listener")
        _expect(transport.via_value("udp", "z9hG4bKx", rport=False),
                f"SIP/2.0/UDP 127.0.0.1:{bound[1]};branch=z9hG4bKx", "a Via through it")

    async def make_accepting_owner(kit: Kit) -> Any:
        from sip.transport import _AcceptingOwner

        return _AcceptingOwner(await kit.transport())

    async def use_accepting_owner(owner: Any, kit: Kit) -> None:
        flow = await kit.flow()
        owner.unregister_flow(flow)  # not registered with this layer: a no-op that must not fail

    async def make_udp_flow(kit: Kit) -> UdpFlow:
        host, port = kit.udp_socket().getsockname()  # not the peer: the kit has a flow there
        return UdpFlow(await kit.endpoint(), (host, port))

    def use_udp_flow(flow: UdpFlow, kit: Kit) -> None:
        flow.send(PING)
        flow.touch()
        _expect((flow.transport, flow.reliable, flow.closed), ("udp", False, False),
                "transport, reliable, closed")
        flow.close()
        _expect(flow.closed, True, "closed, once closed")

    async def make_udp_endpoint(kit: Kit) -> UdpEndpoint:
        owner = make_transport(kit)
        _, endpoint = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: UdpEndpoint(owner), local_addr=("127.0.0.1", 0)
        )
        return kit.closing(endpoint, endpoint.close)

    def use_udp_endpoint(endpoint: UdpEndpoint, kit: Kit) -> None:
        flow = endpoint.flow_to(kit.peer_address)
        _expect(endpoint.flow_to(kit.peer_address), flow, "the flow to the same peer")
        flow.send(PING)
        _expect(endpoint.local[0], "127.0.0.1", "the local address")

    async def make_stream_flow(kit: Kit) -> StreamFlow:
        transport = await kit.transport()
        listener = transport.listening("tcp")
        if listener is None:
            raise RuntimeError("the kit's transport layer has no TCP listener")
        _, flow = await asyncio.get_running_loop().create_connection(
            lambda: StreamFlow(transport, "tcp", Limits()), *listener
        )
        return kit.closing(flow, flow.close)

    async def use_stream_flow(flow: StreamFlow, kit: Kit) -> None:
        transport = await kit.transport()
        _expect(transport.connection("tcp", *flow.remote), flow, "the transport's connection")
        _expect((flow.reliable, flow.secure, flow.closed), (True, False, False),
                "reliable, secure, closed")
        flow.send(PING)  # the listening side answers with a pong
        flow.close()

    return {
        # sip/errors.py
        "sip.errors.SipError": new(
            lambda k: SipError(486, "Busy Here", headers=[("Retry-After", "30")]),
            lambda e, k: _expect((str(e), e.headers), ("486 Busy Here", [("Retry-After", "30")]),
                                 "str and headers")),
        # sip/record.py: the base of the small value objects, empty but instantiable
        "sip.record.Record": new(
            lambda k: Record(),
            lambda r, k: _expect((r.values(), repr(r), r == Record()), ((), "Record()", True),
                                 "values, repr, equality")),
        # sip/uri.py
        "sip.uri.SipUri": new(
            lambda k: SipUri("sip", DOMAIN, user="alice", port=5060, params={"transport": "tcp"}),
            use_uri),
        # sip/headers.py
        "sip.headers.NameAddr": new(
            lambda k: NameAddr(ALICE, "Alice", {"tag": "1928301774"}), use_name_addr),
        "sip.headers.Via": new(
            lambda k: Via("UDP", "192.0.2.1", 5060, {"branch": f"{MAGIC_COOKIE}776asdhds"}),
            use_via),
        "sip.headers.CSeq": new(
            lambda k: CSeq(4711, "INVITE"),
            lambda c, k: _expect((str(c), CSeq.parse("4711 INVITE")), ("4711 INVITE", c),
                                 "str and the value parsed back")),
        # sip/message.py
        "sip.message.Limits": new(
            lambda k: Limits(max_message_size=4096, max_headers=32),
            lambda limits, k: _expect(
                parse_message(k.request("OPTIONS").to_bytes(), limits).start_line(),
                f"OPTIONS sip:bob@{DOMAIN} SIP/2.0", "a request parsed within the limits")),
        # The base of Request and Response, instantiable (only start_line is theirs).
        "sip.message.Message": new(
            lambda k: Message([("call-id", "Call-ID", "a84b4c76e66710")]), use_message),
        "sip.message.Request": new(
            lambda k: Request("OPTIONS", f"sip:bob@{DOMAIN}", k.rows("OPTIONS")), use_request),
        "sip.message.Response": new(
            lambda k: Response(180, "Ringing", k.rows("INVITE")), use_response),
        # sip/digest.py
        "sip.digest.DigestAlgorithm": member(
            lambda k: DigestAlgorithm.SHA256,
            lambda a, k: _expect((DigestAlgorithm("SHA-256"), canonical_algorithm("sha-256")),
                                 (a, a), "the member by value and by canonical name")),
        "sip.digest._HashObject": conforming(
            lambda k: hashlib.sha256(b"ws2sip"),
            lambda h, k: _expect(len(h.hexdigest()), 64, "the length of a SHA-256 hex digest")),
        "sip.digest.DigestCredentials": new(make_credentials, use_credentials),
        "sip.digest.VerifyOutcome": member(
            lambda k: VerifyOutcome.STALE,
            lambda o, k: _expect(VerifyOutcome("stale"), o, "the member by value")),
        "sip.digest._RandomPool": new(lambda k: _RandomPool(64), use_random_pool),
        "sip.digest.DigestServer": new(
            lambda k: DigestServer(DOMAIN, k.secret, algorithms=("SHA-256", "MD5")),
            use_digest_server),
        "sip.digest.DigestChallenge": new(
            lambda k: DigestChallenge(realm=DOMAIN, nonce=k.digest_server().new_nonce(),
                                      algorithm="SHA-256", qop_options=("auth",), opaque=None,
                                      stale=False),
            use_challenge),
        # sip/framing.py
        "sip.framing.KeepAlivePing": new(
            lambda k: KeepAlivePing(),
            lambda ping, k: _expect(list(StreamFramer().feed(PING)), [KEEPALIVE_PING],
                                    "what a ping gives")),
        "sip.framing.StreamFramer": new(lambda k: StreamFramer(Limits()), use_framer),
        # sip/timers.py
        "sip.timers.Timers": new(
            lambda k: Timers(t1=0.25, timer_b=10.0),
            lambda t, k: _expect((t.b, t.f), (10.0, 16.0), "timers B and F")),
        "sip.timers.TimedTransaction": new(lambda k: TimedTransaction(), use_timed),
        "sip.timers.TransactionHost": subclass(lambda k: k.layer(), use_transaction_host),
        # sip/transaction.py, sip/server_transaction.py, sip/client_transaction.py
        "sip.transaction.TransactionLayer": new(make_layer, use_layer),
        "sip.server_transaction.ServerTransaction": new(
            lambda k: k.server_transaction(k.request("OPTIONS")), use_server_transaction),
        "sip.client_transaction.ClientTransaction": new(
            make_client_transaction, use_client_transaction),
        # sip/transport.py, sip/udp.py, sip/stream.py
        "sip.transport.TransportLayer": new(make_transport, use_transport),
        "sip.transport._AcceptingOwner": new(make_accepting_owner, use_accepting_owner),
        "sip.udp.FlowOwner": conforming(
            lambda k: k.transport(),
            lambda owner, k: _expect(owner.flow_by_id("udp:nobody"), None, "an unknown flow")),
        "sip.udp.UdpFlow": new(make_udp_flow, use_udp_flow),
        "sip.udp.UdpEndpoint": new(make_udp_endpoint, use_udp_endpoint),
        "sip.stream.StreamFlow": new(make_stream_flow, use_stream_flow),
    }


def _gateway_factories() -> dict[str, Check]:
    from gateway.auth import AuthOutcome
    from gateway.config import Trunk
    from gateway.dialogs import Dialog, DialogTable, Party, ReplacedParty, Replaces
    from gateway.dispatch import ALLOWED_METHODS, RequestCounts, RequestDispatch
    from gateway.flowtoken import FlowRef, FlowTokens
    from gateway.forking import Branch, BranchHooks, Forwarding, ForwardingEngine
    from gateway.location.memory import MemoryLocationService
    from gateway.location.model import (
        Binding,
        ContactChange,
        NodeInfo,
        OutOfOrderRegister,
        RegisterChange,
        apply_register,
    )
    from gateway.media import Exchange, MediaAnchor
    from gateway.proxy import ProxiedRequest, ProxyPolicy
    from gateway.registrar import RegistrarPolicy
    from gateway.routing import Destination, LocalAddresses, TrunkTrust
    from gateway.targets import Targets
    from sip.digest import build_authorization, select_challenge
    from sip.resolver import Target
    from sip.tasks import TaskSet
    from sip.uri import SipUri

    contact = "sip:alice@192.0.2.4:5060"
    instance = '"<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>"'
    registered_at = 1_700_000_000.0

    def destination() -> Destination:
        return Destination("sip:bob@192.0.2.10", Target("udp", "192.0.2.10", 5060))

    def register_change(now: float = registered_at) -> RegisterChange:
        return RegisterChange(
            aor=ALICE, call_id="843817637684230@998sdasdh09", cseq=1,
            contacts=(ContactChange(contact, 3600, 1.0, instance, 1),), remove_all=False,
            node_id=NODE_ID, connection_id="udp:selfcheck", transport="udp",
            received="192.0.2.4:5060", path=(), user_agent="ws2sip selfcheck", now=now,
        )

    def use_branch(branch: Branch, kit: Kit) -> None:
        branch.provisional = True
        branch.final = branch.request.response(486)
        _expect((branch.client, branch.provisional, branch.final.status), (None, True, 486),
                "client transaction, provisional, final status")

    async def make_forwarding(kit: Kit) -> Forwarding:
        request = kit.request("INVITE")
        return Forwarding(request, await kit.server_transaction(request),
                          ProxiedRequest(await kit.proxy(), request))

    async def use_forwarding(forwarding: Forwarding, kit: Kit) -> None:
        forwarding.branches.append(Branch(destination(), forwarding.request))
        forwarding.answered = True
        async with forwarding.response_lock:
            _expect((len(forwarding.branches), forwarding.answered, forwarding.timer),
                    (1, True, None), "branches, answered, INVITE timer")

    async def make_engine(kit: Kit) -> ForwardingEngine:
        return (await kit.signalling()).engine

    async def make_targets(kit: Kit) -> Targets:
        return (await kit.signalling()).targets

    async def use_engine(engine: ForwardingEngine, kit: Kit) -> None:
        request = kit.request("INVITE")
        toward = Destination("sip:bob@192.0.2.10", Target("tcp", "192.0.2.10", 5060))
        out = engine.branch_request(request, toward, None, record_route=False)  # kit: TCP
        _expect((out.uri, out.max_forwards, len(out.vias), out.top_via.transport),
                ("sip:bob@192.0.2.10", 69, len(request.vias) + 1, "TCP"),
                "the forwarded request's URI, Max-Forwards, Vias and top Via's transport")

    async def make_hooks(kit: Kit) -> BranchHooks:
        return ProxiedRequest(await kit.proxy(), kit.request("INVITE"),
                              asserted_identity=ALICE)

    def use_hooks(hooks: BranchHooks, kit: Kit) -> None:
        trunk = Trunk("pbx", "192.0.2.10:5060")
        branch = Branch(Destination("sip:0123@192.0.2.10:5060",
                                    Target("udp", "192.0.2.10", 5060), trunk=trunk),
                        kit.request("INVITE"))
        hooks.on_branch_request(branch)
        _expect(branch.request.get("P-Asserted-Identity"), f"<{ALICE}>",
                "the identity asserted toward a trunk")
        _expect(hooks.on_challenge(branch, branch.request.response(407)), None,
                "the answer to a challenge from a trunk without credentials")

    def use_proxy(proxy: Proxy, kit: Kit) -> None:
        _expect((len(proxy.dialogs), proxy.media is not None), (0, True),
                "its dialogs, its media anchor")

    async def use_targets(targets: Targets, kit: Kit) -> None:
        request = kit.request("INVITE", f"sip:0555@{DOMAIN}")  # bob is not registered
        destinations, callee = await targets.select(request, None)
        _expect(([d.ruri for d in destinations], callee),
                (["sip:0555@192.0.2.10:5060"], f"sip:0555@{DOMAIN}"),
                "the trunk reached for a dialled number nobody registered")

    async def use_registrar(registrar: Registrar, kit: Kit) -> None:
        request = kit.request("REGISTER", f"sip:{DOMAIN}")
        transaction = await kit.server_transaction(request)
        await registrar.answer(request, transaction)  # the 401 goes to the peer
        response = transaction.last_response
        _expect(response and (response.status, len(response.get_all("WWW-Authenticate"))),
                (401, 2), "the answer to a REGISTER without credentials, and its challenges")

    async def use_auth(auth: Authenticator, kit: Kit) -> None:
        await (await kit.users()).add("alice", DOMAIN, PASSWORD)
        request = kit.request("INVITE")
        refusal = (await auth.authenticate(request, proxy=True)).refusal
        if refusal is None or refusal.status != 407:
            raise AssertionError(f"the answer to an INVITE without credentials is {refusal!r}, "
                                 f"expected a 407")
        challenge = select_challenge(refusal.get_all("Proxy-Authenticate"))
        request.add("Proxy-Authorization", build_authorization(
            challenge, method="INVITE", uri=request.uri, username="alice", password=PASSWORD))
        outcome = await auth.authenticate(request, proxy=True)
        _expect((outcome.username, outcome.refusal), ("alice", None), "the answer, checked")

    def use_destination(destination: Destination, kit: Kit) -> None:
        destination.routes.append("<sip:192.0.2.10;lr>")
        _expect((destination.transport, destination.side), ("udp", "plain"), "transport, side")

    def use_local_addresses(addresses: LocalAddresses, kit: Kit) -> None:
        addresses.add_listener("udp", "0.0.0.0", 5060)
        _expect(addresses.record_route("udp", "a84b4c76e66710@pc33"),
                "<sip:203.0.113.7:5060;transport=udp;lr>",
                "its Record-Route toward UDP")
        _expect(addresses.is_local_uri(SipUri.parse("sip:203.0.113.7")), True,
                "whether its public address is local")

    def use_dialog(dialog: Dialog, kit: Kit) -> None:
        dialog.confirmed = True
        dialog.flow_ids.add("ws:1")
        dialog.ack_answer_pending = True
        dialog.trunk_cseq_offset = 1
        _expect((dialog.confirmed, dialog.flow_ids, dialog.media), (True, {"ws:1"}, None),
                "confirmed, flows, media")

    async def make_party(kit: Kit) -> Party:
        return Party(await kit.flow())

    async def use_party(party: Party, kit: Kit) -> None:
        flow = await kit.flow()
        _expect((party.sent(flow), party.is_at(flow)), (True, True), "its own flow")

    def use_replaces(replaces: Replaces, kit: Kit) -> None:
        _expect(Replaces.in_uri_headers("Replaces=a84b%3Bto-tag%3D1%3Bfrom-tag%3D2"),
                replaces, "the Replaces of a Refer-To URI")
        _expect(Replaces.parse("a84b;from-tag=2;to-tag=1;early-only"), replaces,
                "a Replaces header")

    def use_replaced_party(replaced: ReplacedParty, kit: Kit) -> None:
        _expect((replaced.side, replaced.aor), ("webrtc", ALICE), "side and user")

    async def make_replaced_party(kit: Kit) -> ReplacedParty:
        dialog = Dialog("a84b4c76e66710@pc33", "INVITE", caller=ALICE)
        return ReplacedParty(dialog, Party(await kit.flow()), "webrtc", ALICE)

    async def use_trunk_trust(trust: TrunkTrust, kit: Kit) -> None:
        trunk = trust.trunk_of(await kit.flow())  # a UDP flow from 127.0.0.1
        _expect(trunk and trunk.name, "pbx", "the trunk a loopback UDP flow speaks for")

    def use_dialog_table(table: DialogTable, kit: Kit) -> None:
        dialog = Dialog("a84b4c76e66710@pc33", "INVITE", caller=ALICE)
        _expect(table.add(dialog, 60.0), dialog, "the dialog added")
        table.attach_flow(dialog, "ws:1")
        _expect((len(table), table.calls_of_user(ALICE), table.on_flow("ws:1")),
                (1, 1, [dialog]), "dialogs, alice's calls, the flow's dialogs")
        table.release(dialog.call_id)
        _expect(len(table), 0, "the dialogs once released")

    def use_flow_tokens(tokens: FlowTokens, kit: Kit) -> None:
        ref = FlowRef(NODE_ID, "ws:7")
        call_id = "a84b4c76e66710@pc33"
        token = tokens.encode(ref, call_id)
        _expect(tokens.decode(token, call_id), ref, "the token decoded")
        _expect(tokens.decode(token, "another call"), None, "the token, for another dialog")
        _expect(FlowTokens(os.urandom(32)).decode(token, call_id), None,
                "the token, decoded elsewhere")

    def make_task_set(kit: Kit) -> TaskSet:
        tasks = TaskSet(logging.getLogger(f"ws2sip.{__name__}"), "selfcheck task")
        return kit.closing(tasks, tasks.cancel_all)

    async def use_task_set(tasks: TaskSet, kit: Kit) -> None:
        done: list[str] = []

        async def job(name: str) -> None:
            await asyncio.sleep(0)
            done.append(name)

        tasks.spawn(job("spawned"))
        tasks.run_eagerly(job("eager"))
        await _until(lambda: len(done) == 2, "end of both tasks")

    def use_counts(counts: RequestCounts, kit: Kit) -> None:
        for method in ("INVITE", "BYE", "INVITE"):
            counts.count(method)
        _expect(counts.by_method, {"INVITE": 2, "BYE": 1}, "the counts")

    async def make_dispatch(kit: Kit) -> RequestDispatch:
        return RequestDispatch(
            domain=DOMAIN, registrar=await kit.registrar(), proxy=await kit.proxy(),
            addresses=(await kit.signalling()).addresses, tasks=make_task_set(kit),
            answer_register_eagerly=True, counts=RequestCounts(),
        )

    async def use_dispatch(dispatch: RequestDispatch, kit: Kit) -> None:
        request = kit.request("OPTIONS", f"sip:{DOMAIN}")
        transaction = await kit.server_transaction(request)
        dispatch(request, transaction)  # answered at once, to the peer
        response = transaction.last_response
        _expect(response and (response.status, response.get("Allow")), (200, ALLOWED_METHODS),
                "the answer to an OPTIONS for the domain")

    def use_exchange(exchange: Exchange, kit: Kit) -> None:
        exchange.rewritten_answer = b"v=0\r\n"
        _expect((exchange.offerer, exchange.rewritten_answer), ("webrtc", b"v=0\r\n"),
                "offerer, rewritten answer")

    async def use_anchor(anchor: MediaAnchor, kit: Kit) -> None:
        dialog = Dialog("anchor@selfcheck", "INVITE")
        invite = kit.request("INVITE")  # no SDP: a late offer
        _expect(await anchor.offer(dialog, invite, "plain", "plain"), None,
                "the exchange between two plain ends")
        exchange, body = await anchor.offer(dialog, invite, "webrtc", "plain") or (None, b"")
        _expect((exchange and exchange.offerer, body, dialog.media), (None, None, None),
                "a late offer's exchange, body and session")
        await anchor.release(dialog)

    def use_register_change(change: RegisterChange, kit: Kit) -> None:
        bindings = apply_register([], change)
        _expect([(b.aor, b.reg_id) for b in bindings], [(ALICE, 1)], "the bindings made")
        try:
            apply_register(bindings, change)
        except OutOfOrderRegister:
            return
        raise AssertionError("the same REGISTER applied twice was not refused")

    def make_location(kit: Kit) -> MemoryLocationService:
        location = MemoryLocationService()
        return kit.closing(location, location.close)

    async def use_location(location: MemoryLocationService, kit: Kit) -> None:
        bindings = await location.register(register_change(time.time()))  # look-ups use now
        _expect(await location.lookup(ALICE), bindings, "the bindings looked up")
        _expect(await location.remove_connection(NODE_ID, "udp:selfcheck"), bindings,
                "the bindings of the connection removed")

    return {
        # gateway/proxy.py
        "gateway.proxy.ProxyPolicy": new(
            lambda k: ProxyPolicy(domain=DOMAIN, node_id=NODE_ID, public_address="203.0.113.7",
                                  invite_timeout=180.0, max_calls_per_user=2,
                                  trunks=(Trunk("pbx", "192.0.2.10:5060"),)),
            lambda p, k: _expect((replace(p, max_calls_per_user=3).max_calls_per_user,
                                  p.trunks[0].name), (3, "pbx"), "a copy's limit, the trunk")),
        "gateway.proxy.Proxy": new(lambda k: k.proxy(), use_proxy),
        "gateway.proxy.ProxiedRequest": new(make_hooks, use_hooks),
        # gateway/forking.py
        "gateway.forking.Branch": new(lambda k: Branch(destination(), k.request("INVITE")),
                                      use_branch),
        "gateway.forking.Forwarding": new(make_forwarding, use_forwarding),
        "gateway.forking.ForwardingEngine": new(make_engine, use_engine),
        "gateway.forking.BranchHooks": conforming(make_hooks, use_hooks),
        # gateway/targets.py
        "gateway.targets.Targets": new(make_targets, use_targets),
        # gateway/registrar.py
        "gateway.registrar.RegistrarPolicy": new(
            lambda k: RegistrarPolicy(domain=DOMAIN, node_id=NODE_ID, min_expires=60,
                                      max_expires=7200, default_expires=3600, flow_timer=120),
            lambda p, k: _expect((p.min_expires, p.max_expires), (60, 7200), "the limits")),
        "gateway.registrar.Registrar": new(lambda k: k.registrar(), use_registrar),
        # gateway/auth.py
        "gateway.auth.AuthOutcome": new(
            lambda k: AuthOutcome("alice", None),
            lambda o, k: _expect((o.values(), o), (("alice", None), AuthOutcome("alice", None)),
                                 "values, equality")),
        "gateway.auth.Authenticator": new(lambda k: k.auth(), use_auth),
        # gateway/routing.py
        "gateway.routing.Destination": new(lambda k: destination(), use_destination),
        "gateway.routing.TrunkTrust": new(
            lambda k: TrunkTrust((Trunk("pbx", "192.0.2.10:5060",
                                        trusted_sources=("udp:127.0.0.0/8",)),)),
            use_trunk_trust),
        "gateway.routing.LocalAddresses": new(
            lambda k: LocalAddresses(DOMAIN, "203.0.113.7", FlowTokens(k.secret), NODE_ID),
            use_local_addresses),
        # gateway/dialogs.py
        "gateway.dialogs.Dialog": new(
            lambda k: Dialog("a84b4c76e66710@pc33", "INVITE", caller=ALICE,
                             callee=f"sip:bob@{DOMAIN}"),
            use_dialog),
        "gateway.dialogs.DialogTable": new(lambda k: DialogTable(), use_dialog_table),
        "gateway.dialogs.Party": new(make_party, use_party),
        "gateway.dialogs.Replaces": new(
            lambda k: Replaces("a84b", to_tag="1", from_tag="2"), use_replaces),
        "gateway.dialogs.ReplacedParty": new(make_replaced_party, use_replaced_party),
        # gateway/flowtoken.py
        "gateway.flowtoken.FlowRef": new(
            lambda k: FlowRef(NODE_ID, "ws:7"),
            lambda r, k: _expect({r: 1}.get(FlowRef(NODE_ID, "ws:7")), 1,
                                 "a look-up by an equal reference")),
        "gateway.flowtoken.FlowTokens": new(lambda k: FlowTokens(k.secret), use_flow_tokens),
        # sip/tasks.py
        "sip.tasks.TaskSet": new(make_task_set, use_task_set),
        # gateway/dispatch.py
        "gateway.dispatch.RequestCounts": new(lambda k: RequestCounts(), use_counts),
        "gateway.dispatch.RequestDispatch": new(make_dispatch, use_dispatch),
        # gateway/media.py
        "gateway.media.Exchange": new(lambda k: Exchange("webrtc", "plain"), use_exchange),
        "gateway.media.MediaAnchor": new(lambda k: MediaAnchor(k.relay()), use_anchor),
        # gateway/location/model.py, gateway/location/memory.py
        "gateway.location.model.OutOfOrderRegister": new(
            lambda k: OutOfOrderRegister("CSeq 1 is not higher than CSeq 1"),
            lambda e, k: _expect(str(e), "CSeq 1 is not higher than CSeq 1", "str")),
        "gateway.location.model.ContactChange": new(
            lambda k: ContactChange(contact, 3600, 0.5, None, None),
            lambda c, k: _expect(c.as_dict()["q"], 0.5, "q")),
        "gateway.location.model.RegisterChange": new(
            lambda k: register_change(), use_register_change),
        "gateway.location.model.NodeInfo": new(
            lambda k: NodeInfo(NODE_ID, "127.0.0.1:5060;transport=tcp", registered_at),
            lambda n, k: _expect(n, NodeInfo(NODE_ID, "127.0.0.1:5060;transport=tcp",
                                             registered_at), "an equal NodeInfo")),
        "gateway.location.model.Binding": new(
            lambda k: Binding(ALICE, contact, registered_at + 3600, 1.0, "843817637684230", 1,
                              instance, 1, NODE_ID, "udp:selfcheck", "udp", "192.0.2.4:5060", (),
                              "ws2sip selfcheck", registered_at),
            lambda b, k: _expect((b.key, b.expires_in(registered_at)),
                                 (f"instance {instance} 1", 3600), "key and expiry")),
        "gateway.location.memory.MemoryLocationService": new(make_location, use_location),
    }


def _webrtc_factories() -> dict[str, Check]:
    import pylibsrtp
    from aioice import Candidate, Connection, stun
    from aioice.ice import CandidatePair

    from webrtc.datagram import DatagramSocket, LoopLag, SocketPoller
    from webrtc.forwarding import DirectionStats, Forwarder, Route
    from webrtc.ice_media import COMPONENT, MediaFirstProtocol, NominatedRoute
    from webrtc.plain import LatchPolicy, PlainLeg, _Candidate, _Socket
    from webrtc.srtp import SrtpSessions, SrtpTransform
    from webrtc.webrtc_leg import WebRtcLeg

    def datagram_socket(kit: Kit, protocol: asyncio.DatagramProtocol,
                        poller: SocketPoller | None = None) -> DatagramSocket:
        datagrams = DatagramSocket(kit.udp_socket(), protocol, LoopLag(), poller)
        return kit.closing(datagrams, datagrams.close)

    async def reads(datagrams: DatagramSocket, kit: Kit) -> None:
        """A datagram from the peer reaches the socket's packet handler."""
        received: list[bytes] = []
        datagrams.on_packet = received.append
        _expect(datagrams.on_packet, received.append, "on_packet, written and read back")
        kit.peer.sendto(_rtp(1), datagrams.get_extra_info("sockname"))
        await _until(lambda: received, "datagram read from the socket")
        _expect(received, [_rtp(1)], "what the socket read")

    def connection(kit: Kit) -> Connection:
        ice = Connection(ice_controlling=True)
        return kit.closing(ice, ice.close)

    async def use_lag(lag: LoopLag, kit: Kit) -> None:
        lag.acquire(asyncio.get_running_loop())
        await asyncio.sleep(0)
        _expect(lag.behind, False, "behind, with an idle loop")
        lag.release()

    async def use_poller(poller: SocketPoller, kit: Kit) -> None:
        # Through the poller where the C relay path has one, through the loop where not.
        datagrams = datagram_socket(kit, asyncio.DatagramProtocol(), poller)
        await reads(datagrams, kit)
        datagrams.close()

    async def use_datagram_socket(datagrams: DatagramSocket, kit: Kit) -> None:
        await reads(datagrams, kit)
        datagrams.sendto(_rtp(2), kit.peer_address)
        datagrams.close()
        _expect(datagrams.is_closing(), True, "closing, once closed")

    def use_transform(transform: SrtpTransform, kit: Kit) -> None:
        outbound, inbound = kit.srtp_pair("transform")
        protected = transform.apply(_rtp(1))
        _expect(len(protected), len(_rtp(1)) + 10, "the length of a protected packet")
        unprotect = SrtpTransform(inbound, "srtp_unprotect", 0)
        _expect(unprotect.apply(protected), _rtp(1), "the packet unprotected")
        _expect(transform.native()[3] is outbound, True, "whether native() keeps the session")

    def use_sessions(sessions: SrtpSessions, kit: Kit) -> None:
        _expect(sessions.unprotect.apply(sessions.protect.apply(_rtp(1))), _rtp(1),
                "an RTP packet protected and unprotected")
        rtcp = sessions.unprotect_rtcp.apply(sessions.protect_rtcp.apply(RTCP_RECEIVER_REPORT))
        _expect(rtcp, RTCP_RECEIVER_REPORT, "an RTCP packet protected and unprotected")

    def use_media_first(protocol: MediaFirstProtocol, kit: Kit) -> None:
        media: list[bytes] = []
        protocol.on_media = media.append
        _expect(protocol.on_media, media.append, "on_media, written and read back")
        protocol.local_candidate = Candidate("1", COMPONENT, "udp", 1, "127.0.0.1", 9, "host")
        source = ("127.0.0.1", 9)
        protocol.datagram_received(_rtp(1), source)  # media: straight to on_media
        # STUN's first bytes: through aioice's StunProtocol, which reads what its __init__
        # wrote. A response to no transaction of ours is dropped; what does not parse goes to
        # the ICE connection.
        response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE)
        protocol.datagram_received(bytes(response), source)
        protocol.datagram_received(b"\x00\x01 not quite STUN", source)
        _expect((media, protocol.transactions, protocol.id >= 0), ([_rtp(1)], {}, True),
                "media handed on, STUN transactions, protocol id")

    async def use_route(route: NominatedRoute, kit: Kit) -> None:
        _expect(route.send(_rtp(1)), False, "a send with no nominated pair")
        protocol = MediaFirstProtocol(connection(kit), _ignore_packet)
        datagram_socket(kit, protocol)  # the protocol's transport from now on
        host, port = kit.peer_address
        kit.nominated[COMPONENT] = CandidatePair(
            protocol, Candidate("1", COMPONENT, "udp", 1, host, port, "host"))
        _expect(route.send(_rtp(2)), True, "a send on the nominated pair (to the peer)")

    def use_stats(stats: DirectionStats, kit: Kit) -> None:
        stats.packets += 1
        stats.bytes += 172
        _expect((stats.packets, stats.bytes, stats.lost), (1, 172, 0), "packets, bytes, lost")

    def use_forwarding_route(route: Route, kit: Kit) -> None:
        sent: list[bytes] = []
        route.send = sent.append
        route.send(b"rtp")
        _expect((route.payload_type, route.transform, sent), (8, None, [b"rtp"]),
                "payload type, transform, what it sent")

    def use_forwarder(forwarder: Forwarder, kit: Kit) -> None:
        sent: list[bytes] = []
        forwarder.routes[0] = Route(8, sent.append)  # PCMU in, PCMA's number out
        for packet in (_rtp(1), _rtp(3), b"short"):
            forwarder(packet)
        stats = forwarder.stats
        _expect((stats.packets, stats.lost, stats.dropped), (2, 1, 1), "packets, lost, dropped")
        _expect((sent[0][1], forwarder.known_ssrcs), (8, {SSRC}), "payload type sent, SSRCs")

    def use_plain_socket(protocol: _Socket, kit: Kit) -> None:
        received: list[tuple[bytes, Any]] = []
        protocol.on_datagram = lambda data, address: received.append((data, address))
        protocol.datagram_received(_rtp(1), ("192.0.2.4", 5004))
        protocol.error_received(ConnectionRefusedError())
        _expect(received, [(_rtp(1), ("192.0.2.4", 5004))], "the datagrams handed on")

    def use_candidate(candidate: _Candidate, kit: Kit) -> None:
        candidate.restart(SSRC, 7, 2.0)
        _expect((candidate.next_seq, candidate.count, candidate.since), (7, 1, 2.0),
                "its stream once restarted")

    def make_plain_leg(kit: Kit) -> PlainLeg:
        leg = PlainLeg(kit.pool())
        return kit.closing(leg, leg.close)

    async def use_plain_leg(leg: PlainLeg, kit: Kit) -> None:
        await leg.open()
        _expect(leg.port % 2, 0, "the parity of the RTP port")
        host, port = kit.peer_address
        leg.set_remote(host, port, None, False)
        _expect((leg.rtp_target, leg.rtp_latched), ((host, port), False), "target, latched")
        leg.send_rtp(_rtp(1))
        leg.send_rtcp(RTCP_RECEIVER_REPORT)
        received: list[bytes] = []
        leg.on_rtp = received.append
        kit.peer.sendto(_rtp(2), ("127.0.0.1", leg.port))
        await _until(lambda: received, "RTP from the peer")
        _expect((received, leg.rtp_latched), ([_rtp(2)], True), "RTP received, latched")
        leg.close()

    def make_webrtc_leg(kit: Kit) -> WebRtcLeg:
        leg = WebRtcLeg(pool=kit.pool(), public_host="127.0.0.1",
                        certificate=kit.certificate(), stun_server=None)
        return kit.closing(leg, leg.close)

    async def use_webrtc_leg(leg: WebRtcLeg, kit: Kit) -> None:
        await leg.prepare(ice_controlling=False)  # binds its ICE socket: a MediaFirstProtocol
        params = leg.local_params("actpass")
        _expect((params.fingerprint, len(params.candidates)), (kit.certificate().fingerprint, 1),
                "the fingerprint and ICE candidates it offers")
        _expect((leg.keyed, leg.send_rtp(_rtp(1)), len(leg.media_sockets())), (False, False, 1),
                "keyed, RTP sent before keys, sockets")
        await leg.close()
        _expect(leg.media_sockets(), [], "the sockets once closed")

    return {
        # webrtc/datagram.py
        "webrtc.datagram.LoopLag": new(lambda k: LoopLag(), use_lag),
        "webrtc.datagram.SocketPoller": new(lambda k: SocketPoller(LoopLag()), use_poller),
        "webrtc.datagram.DatagramSocket": new(
            lambda k: datagram_socket(k, asyncio.DatagramProtocol()), use_datagram_socket),
        # webrtc/srtp.py
        "webrtc.srtp.SrtpTransform": new(
            lambda k: SrtpTransform(k.srtp_pair("transform")[0], "srtp_protect",
                                    pylibsrtp.SRTP_MAX_TRAILER_LEN),
            use_transform),
        "webrtc.srtp.SrtpSessions": new(
            lambda k: SrtpSessions(*k.srtp_pair("sessions"), "SRTP_AES128_CM_SHA1_80"),
            use_sessions),
        # webrtc/ice_media.py: MediaFirstProtocol is the class that once broke (see the top)
        "webrtc.ice_media.MediaFirstProtocol": new(
            lambda k: MediaFirstProtocol(connection(k), _ignore_packet), use_media_first),
        "webrtc.ice_media.NominatedRoute": new(lambda k: NominatedRoute(k.nominated), use_route),
        # webrtc/forwarding.py
        "webrtc.forwarding.DirectionStats": new(lambda k: DirectionStats(), use_stats),
        "webrtc.forwarding.Route": new(lambda k: Route(8, _ignore_packet), use_forwarding_route),
        "webrtc.forwarding.Forwarder": new(lambda k: Forwarder(), use_forwarder),
        # webrtc/plain.py
        "webrtc.plain._Socket": new(lambda k: _Socket(_ignore_datagram), use_plain_socket),
        "webrtc.plain.PlainLeg": new(make_plain_leg, use_plain_leg),
        "webrtc.plain.LatchPolicy": new(
            lambda k: LatchPolicy(learn_seconds=2.0),
            lambda p, k: _expect((p.learn_seconds, p.probation_packets), (2.0, 4),
                                 "its learning window and probation")),
        "webrtc.plain._Candidate": new(lambda k: _Candidate(SSRC, 100, 1.0), use_candidate),
        # webrtc/webrtc_leg.py
        "webrtc.webrtc_leg.WebRtcLeg": new(make_webrtc_leg, use_webrtc_leg),
    }


def _relay_path_factories() -> dict[str, Check]:
    """webrtc/_relaypath.c's types (signatures in webrtc/_relaypath.pyi)."""
    from webrtc.datagram import LoopLag

    relay_path = importlib.import_module(compiled.RELAY_PATH_MODULE)
    expected_seq = {SSRC: 5}  # a Forwarder's, as webrtc.relay_pumps hands it to a table
    pump_sockets: list[socket.socket] = []

    def use_table(table: Any, kit: Kit) -> None:
        _expect(table.count(SSRC, 7), 2, "the packets lost before sequence number 7")
        _expect(table.count(SSRC + 1, 1), 0, "the packets lost on a new SSRC")
        table.write_back()
        _expect(expected_seq, {SSRC: 8, SSRC + 1: 2}, "the sequence numbers written back")

    def make_pump(kit: Kit) -> Any:
        sock = kit.udp_socket()
        pump_sockets.append(sock)
        pump = relay_path.RelayPump(sock.fileno(), LoopLag(), _ignore_datagram, _ignore_error)
        return kit.closing(pump, pump.close)

    async def serves(pump: Any, sock: socket.socket, serve: Callable[[], object],
                     kit: Kit) -> None:
        """A datagram from the peer reaches the pump's on_packet when serve() runs."""
        received: list[bytes] = []
        pump.on_packet = received.append
        _expect(pump.on_packet, received.append, "on_packet, written and read back")
        kit.peer.sendto(_rtp(1), sock.getsockname())
        await _until(lambda: serve() or received, "datagram read by the pump")
        _expect(received, [_rtp(1)], "what the pump read")

    async def use_pump(pump: Any, kit: Kit) -> None:
        _expect((pump.relaying, pump.closed, pump.relayed), (False, False, 0),
                "relaying, closed, relayed")
        await serves(pump, pump_sockets[-1], pump, kit)
        pump.close()
        _expect(pump.closed, True, "closed, once closed")

    def make_poller(kit: Kit) -> Any:
        poller = relay_path.RelayPoller(LoopLag())
        return kit.closing(poller, poller.close)

    async def use_poller(poller: Any, kit: Kit) -> None:
        sock = kit.udp_socket()
        pump = relay_path.RelayPump(sock.fileno(), LoopLag(), _ignore_datagram, _ignore_error)
        kit.closing(pump, pump.close)
        poller.add(pump)
        _expect(poller.fileno() >= 0, True, "whether it has an epoll fd")
        await serves(pump, sock, poller, kit)
        pump.close()  # leaves the epoll set, which must be empty before it closes
        poller.close()

    return {
        "webrtc._relaypath.RelayPump": new(make_pump, use_pump),
        "webrtc._relaypath.SequenceTable": new(
            lambda k: relay_path.SequenceTable(expected_seq, relay_path.MAX_SSRCS), use_table),
        "webrtc._relaypath.RelayPoller": new(make_poller, use_poller),
    }
