"""Fuzzing the whole request path of a real, in-process gateway: UDP transport → parser →
registrar or proxy (digest, GRUU, routing, dialogs) → SDP rewriting and media anchoring → the
response, and onward to a registered phone that answers.

Each case is a valid REGISTER, INVITE (browser or phone SDP), SUBSCRIBE or MESSAGE from alice,
mutated (bytes, numbers, lines, the SDP), then signed with valid digest credentials (one nonce,
a rising nonce count), so that the mutations reach the code behind authentication. The digest
covers the method and its uri= parameter only, which no mutation touches.

Used by tests/gateway/test_fuzz_full_path.py (a bounded run) and bench/fuzz_run.py (a long one).
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import random
import secrets
import time
import traceback
from collections.abc import Container
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.app import Gateway
from gateway.config import Config
from sip.digest import DigestChallenge, build_authorization, select_challenge
from sip.errors import SipError
from sip.message import Request, Response, parse_message
from sip.resolver import Resolver
from sip.timers import Timers

DOMAIN = "fuzz.test"
PASSWORDS = {"alice": "alice-fuzz-pw", "bob": "bob-fuzz-pw"}
# Short transaction timers (T1 = 50 ms: timers B, F, H, J, L at 3.2 s, D at 0.5 s), so that every
# transaction the run started has ended a few seconds after it.
FUZZ_TIMERS = Timers(t1=0.05, t2=0.4, t4=0.5, timer_d=0.5)
WINDOW = 8  # cases sent before the loop runs the gateway
PACE_DEADLINE = 0.05  # seconds a window waits for its answers at most
LOGGERS = ("ws2sip", "sip", "gateway", "webrtc", "asyncio", "aiohttp")

INTERESTING = [
    b"\xa4", b"\x00", b"\r", b"\n", b"\r\n", b'"', b"<", b">", b";", b",", b"=", b"%", b"%00",
    b"%zz", b" ", b"\t", b"-1", b"0", b"4294967296", b"99999999999999999999", b"sip:",
    b";tag=", b";branch=", b";expires=", b"\xff\xfe", b"\xc3\x28", b"A" * 300, b"::", b"[",
    b"]", b"@", b"*", b"/", b"\\", b"opus/abc", b"m=audio -1 RTP/AVP 0", b"a=rtpmap:0 PCMU",
    b"+sip.instance=\"<urn:uuid:\xa4>\"", b"1.5", b"0x10", b"\xef\xbb\xbf",
]


class TracebackRecorder(logging.Handler):
    """Every log record with a traceback or at ERROR and above, grouped by where it came from."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info is None and record.levelno < logging.ERROR:
            return
        if record.exc_info is not None and record.exc_info[1] is not None:
            error = record.exc_info[1]
            frames = traceback.extract_tb(error.__traceback__)
            last = frames[-1] if frames else None
            where = f"{Path(last.filename).name}:{last.lineno}" if last else "?"
            signature = f"{type(error).__name__} at {where}"
            text = "".join(traceback.format_exception(error))
        else:
            signature = f"{record.name}: {record.getMessage()[:120]}"
            text = record.getMessage()
        self.counts[signature] += 1
        self.examples.setdefault(signature, text)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class LoopbackOnlyResolver(Resolver):
    """DNS for a fuzzed gateway: IP literals only. Mutated Contacts and Request-URIs name random
    host names, whose lookups must not leave the machine."""

    async def _system_addresses(self, host: str) -> list[str]:
        return []

    async def _query(self, host: str, kind: str) -> list[Any]:
        return []


class LoopbackSocket(asyncio.DatagramProtocol):
    """A UDP socket of the fuzz run that knows its transport and its own address."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.address: tuple[str, int] = ("", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sockname = transport.get_extra_info("sockname")
        self.address = (sockname[0], sockname[1])


class AnsweringPhone(LoopbackSocket):
    """bob's phone over UDP: answers every request at once (INVITE 486, SUBSCRIBE 489, others
    200), so that no call or subscription outlives its case."""

    def __init__(self) -> None:
        super().__init__()
        self.responses: asyncio.Queue[Response] = asyncio.Queue()
        self.requests = 0

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        try:
            message = parse_message(data)
            if isinstance(message, Response):
                self.responses.put_nowait(message)
                return
            self.requests += 1
            if message.method == "ACK":
                return
            status = {"INVITE": 486, "SUBSCRIBE": 489}.get(message.method, 200)
            answer = message.response(status, to_tag="bob" + secrets.token_hex(3))
            assert self.transport is not None
            self.transport.sendto(answer.to_bytes(), addr)
        except (SipError, ValueError, UnicodeError):
            pass  # the gateway relayed something this phone cannot read: a phone ignores it


class Collector(LoopbackSocket):
    """alice's socket: counts the gateway's answers by status."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses: collections.Counter[int] = collections.Counter()
        self.challenges: asyncio.Queue[Response] = asyncio.Queue()  # 407s to challenge_for()
        self.answered = 0  # requests (Call-IDs) answered at least once: the pace of the run
        self._recent_calls: collections.OrderedDict[str, None] = collections.OrderedDict()

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        try:
            message = parse_message(data)
            self._count(message, addr)
        except (SipError, IndexError, ValueError):
            self.statuses[0] += 1  # an answer this client cannot read (its Call-ID was mangled)

    def _count(self, message: Request | Response, addr: tuple[str, int]) -> None:
        if isinstance(message, Response):
            self.statuses[message.status] += 1
            call_id = message.get("call-id") or ""
            if call_id not in self._recent_calls:
                self.answered += 1
                self._recent_calls[call_id] = None
                if len(self._recent_calls) > 4096:
                    self._recent_calls.popitem(last=False)
            if message.status == 407 and call_id.startswith("challenge-"):
                self.challenges.put_nowait(message)
            if message.status >= 300 and message.cseq.method == "INVITE":
                self._ack(message, addr)

    def _ack(self, final: Response, gateway: tuple[str, int]) -> None:
        """§17.1.1.3: a non-2xx final to an INVITE is ACKed (hop by hop, the same branch)."""
        ack = (
            f"ACK sip:bob@{DOMAIN} SIP/2.0\r\nVia: {final.get_all('via')[0]}\r\n"
            f"Max-Forwards: 70\r\nFrom: {final.get('from')}\r\nTo: {final.get('to')}\r\n"
            f"Call-ID: {final.call_id}\r\nCSeq: {final.cseq.number} ACK\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        assert self.transport is not None
        self.transport.sendto(ack.encode("utf-8", "surrogateescape"), gateway)


@dataclass
class FuzzGateway:
    """The gateway as `ws2sip run` builds it, in this process, on loopback ports."""

    workdir: Path
    gateway: Gateway | None = None
    udp: tuple[str, int] = ("127.0.0.1", 0)
    recorder: TracebackRecorder = field(default_factory=TracebackRecorder)
    alice: Collector | None = None  # the fuzzing client's socket
    phone: AnsweringPhone | None = None  # bob's registered phone
    _gc_threshold: tuple[int, int, int] = (700, 10, 10)

    async def start(self, rtp_ports: str = "46000-47999") -> None:
        config = Config(
            domain=DOMAIN, udp=("127.0.0.1:0",), users_file=str(self.workdir / "users.json"),
            public_address="127.0.0.1", rtp_ports=rtp_ports, demo_users=False,
            invite_timeout=5.0, log_level="warning",
            # Every case comes from 127.0.0.1 and many carry mangled credentials: the per-IP
            # limits and bans (gateway/edge_guard.py) would stop the run, not test the path.
            max_requests_per_ip=0, max_connections_per_ip=0, auth_failures_before_ban=0,
        )
        for name in LOGGERS:
            logging.getLogger(name).addHandler(self.recorder)
        self._gc_threshold = gc.get_threshold()
        gateway = self.gateway = Gateway(config)
        gateway.transactions.timers = FUZZ_TIMERS
        gateway.transport.resolver = LoopbackOnlyResolver(nameservers=["127.0.0.1"], port=9,
                                                          timeout=0.2)
        for name, password in PASSWORDS.items():
            await gateway.users.add(name, DOMAIN, password)
        await gateway.start()
        bound = gateway.transport.listening("udp")
        assert bound is not None
        self.udp = bound
        self.alice = await open_socket(Collector)
        self.phone = await open_socket(AnsweringPhone)
        await register_phone(self.phone, self.udp)

    async def stop(self) -> None:
        for endpoint in (self.alice, self.phone):
            if endpoint is not None and endpoint.transport is not None:
                endpoint.transport.close()
        if self.gateway is not None:
            await self.gateway.stop()
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(self.recorder)
        gc.unfreeze()  # Gateway.start froze the heap and raised the threshold for a server
        gc.set_threshold(*self._gc_threshold)

    def counts(self) -> dict[str, int]:
        gateway = self.gateway
        assert gateway is not None
        return {
            "dialogs": len(gateway.signalling.dialogs),
            "transactions": gateway.transactions.transaction_count,
            "media_sessions": gateway.media.relay.active_sessions,
        }

    async def drained(self, timeout: float) -> dict[str, int]:
        """Wait until no dialog, transaction or media session is left (or the timeout)."""
        deadline = time.monotonic() + timeout
        counts = self.counts()
        while any(counts.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            counts = self.counts()
        return counts


def cyclic_garbage(existing: Container[int] = ()) -> collections.Counter[str]:
    """What a full collection finds unreachable now, by type: objects in reference cycles,
    which the gateway's collector settings (gateway/app.py) free only in rare full collections.
    Collected with the objects saved, so that they can be counted; then let go. Objects whose
    id is in `existing` (gc.get_objects() before the code under test ran) are not counted."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = collections.Counter(
            f"{type(thing).__module__}.{type(thing).__qualname__}" for thing in gc.garbage
            if id(thing) not in existing)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    return found


WEBRTC_SDP = (
    "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "a=group:BUNDLE 0\r\na=msid-semantic: WMS s1\r\n"
    "m=audio 54402 UDP/TLS/RTP/SAVPF 111 0 8 126\r\nc=IN IP4 127.0.0.1\r\n"
    "a=rtcp:9 IN IP4 0.0.0.0\r\n"
    "a=candidate:2999745851 1 udp 2122260223 127.0.0.1 54402 typ host generation 0\r\n"
    "a=ice-ufrag:Qb7x\r\na=ice-pwd:V0Zl3Y2p8kH9fJq1mN4rT6wX\r\na=ice-options:trickle\r\n"
    "a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:"
    "C2:43:F0:A1:58:D0:A1:2C:19:08\r\na=setup:actpass\r\na=mid:0\r\na=sendrecv\r\n"
    "a=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 transport-cc\r\n"
    "a=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:126 telephone-event/8000\r\na=ssrc:1001 cname:abc\r\n"
)
PHONE_SDP = (
    "v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=call\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0 8 9 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:9 G722/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"
    "a=ptime:20\r\na=sendrecv\r\n"
)
METHODS = ("REGISTER", "INVITE", "INVITE", "SUBSCRIBE", "MESSAGE")


@dataclass
class Case:
    method: str
    data: bytes


class Fuzzer:
    """Mutated, digest-signed requests from alice's socket."""

    def __init__(self, seed: int, alice: tuple[str, int]) -> None:
        self.rng = random.Random(seed)
        self.alice = alice
        self.challenge: DigestChallenge | None = None
        self.nc = 0
        self.count = 0

    def template(self, method: str) -> tuple[str, list[str], bytes]:
        """(Request-URI, header lines, body) of a valid request; ids unique per case."""
        rng = self.rng
        host, port = self.alice
        case = self.count
        ruri = f"sip:{DOMAIN}" if method == "REGISTER" else f"sip:bob@{DOMAIN}"
        to_user = "alice" if method == "REGISTER" else "bob"
        lines = [
            f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{case}x{rng.getrandbits(32):x};rport",
            "Max-Forwards: 70",
            f"From: \"Alice\" <sip:alice@{DOMAIN}>;tag=f{case}",
            f"To: <sip:{to_user}@{DOMAIN}>",
            f"Call-ID: fuzz{case}-{rng.getrandbits(48):x}@{host}",
            f"CSeq: {rng.randint(1, 9999)} {method}",
            f"Contact: <sip:alice@{host}:{port};transport=udp>"
            + (f";+sip.instance=\"<urn:uuid:00000000-0000-4000-8000-{case:012d}>\";reg-id=1"
               if method == "REGISTER" else ""),
            "User-Agent: ws2sip-fuzz",
        ]
        body = b""
        if method == "REGISTER":
            lines += ["Supported: gruu, outbound, path", "Expires: 300"]
        elif method == "INVITE":
            lines += ["Allow: INVITE, ACK, CANCEL, BYE, UPDATE", "Supported: timer",
                      "Content-Type: application/sdp"]
            body = (WEBRTC_SDP if rng.random() < 0.6 else PHONE_SDP).encode()
        elif method == "SUBSCRIBE":
            lines += ["Event: presence", "Expires: 600", "Accept: application/pidf+xml"]
        else:
            lines += ["Content-Type: text/plain"]
            body = b"hello bob"
        return ruri, lines, body

    def next_case(self) -> Case:
        assert self.challenge is not None, "call use_challenge() first"
        self.count += 1
        method = self.rng.choice(METHODS)
        ruri, lines, body = self.template(method)
        encoded = [line.encode() for line in lines]
        start = f"{method} {ruri} SIP/2.0".encode()
        for _ in range(self.rng.choice((1, 1, 1, 2, 3))):
            if body and self.rng.random() < 0.4:
                body = self._mutate_lines(body, b"\r\n")
            elif self.rng.random() < 0.08:
                start = self._mutate_bytes(start)
            else:
                encoded = self._mutate_header_lines(encoded)
        self.nc += 1
        header = "Authorization" if method == "REGISTER" else "Proxy-Authorization"
        credentials = build_authorization(
            self.challenge, method=method, uri=ruri, username="alice",
            password=PASSWORDS["alice"], nc=self.nc, cnonce=f"{self.rng.getrandbits(32):08x}",
        )
        encoded.insert(self.rng.randrange(len(encoded) + 1), f"{header}: {credentials}".encode())
        length = len(body) if self.rng.random() < 0.95 else self.rng.choice((0, len(body) + 7))
        head = b"\r\n".join([start, *encoded, f"Content-Length: {length}".encode()])
        return Case(method, head + b"\r\n\r\n" + body)

    # --- mutations -------------------------------------------------------------------------
    def _mutate_bytes(self, data: bytes) -> bytes:
        rng = self.rng
        if not data:
            return rng.choice(INTERESTING)
        at = rng.randrange(len(data))
        span = rng.choice((1, 1, 2, 4, 8))
        operation = rng.randrange(4)
        if operation == 0:  # replace a span with an interesting token
            return data[:at] + rng.choice(INTERESTING) + data[at + span:]
        if operation == 1:  # insert one
            return data[:at] + rng.choice(INTERESTING) + data[at:]
        if operation == 2:  # delete a span
            return data[:at] + data[at + span:]
        # a digit run becomes an extreme number
        digits = bytes(c for c in data if 48 <= c <= 57)
        if not digits:
            return data[:at] + bytes([rng.randrange(256)]) + data[at + 1:]
        return data.replace(digits[:1], rng.choice((b"-1", b"0", b"65536", b"4294967296")), 1)

    def _mutate_header_lines(self, lines: list[bytes]) -> list[bytes]:
        rng = self.rng
        lines = list(lines)
        index = rng.randrange(len(lines))
        operation = rng.randrange(6)
        if operation <= 2:
            lines[index] = self._mutate_bytes(lines[index])
        elif operation == 3:
            del lines[index]
        elif operation == 4:
            lines.insert(index, lines[rng.randrange(len(lines))])
        else:
            other = rng.randrange(len(lines))
            lines[index], lines[other] = lines[other], lines[index]
        return lines

    def _mutate_lines(self, body: bytes, separator: bytes) -> bytes:
        lines = body.split(separator)
        index = self.rng.randrange(len(lines))
        if self.rng.random() < 0.2:
            del lines[index]
        else:
            lines[index] = self._mutate_bytes(lines[index])
        return separator.join(lines)


@dataclass
class FuzzRun:
    cases: int = 0
    seconds: float = 0.0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)


async def challenge_for(sock: Collector, gateway: tuple[str, int]) -> DigestChallenge:
    """A nonce for alice: the 407 to a plain MESSAGE."""
    host, port = sock.address
    call_id = f"challenge-{secrets.token_hex(6)}"
    request = (
        f"MESSAGE sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {host}:{port};branch=z9hG4bKch"
        f"{secrets.token_hex(4)};rport\r\nMax-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=c\r\n"
        f"To: <sip:bob@{DOMAIN}>\r\nCall-ID: {call_id}\r\n"
        "CSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
    )
    assert sock.transport is not None
    sock.transport.sendto(request.encode(), gateway)
    while True:  # challenges to mutated cases may be queued before ours
        challenge = await asyncio.wait_for(sock.challenges.get(), 5.0)
        if challenge.call_id == call_id:
            return select_challenge(challenge.get_all("proxy-authenticate"))


async def register_phone(phone: AnsweringPhone, gateway: tuple[str, int]) -> None:
    """bob registers his answering phone (401, then with credentials)."""
    host, port = phone.address
    assert phone.transport is not None

    def register(cseq: int, extra: str = "") -> bytes:
        return (
            f"REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {host}:{port};branch=z9hG4bKreg"
            f"{cseq}{secrets.token_hex(4)};rport\r\nMax-Forwards: 70\r\n"
            f"From: <sip:bob@{DOMAIN}>;tag=b\r\nTo: <sip:bob@{DOMAIN}>\r\n"
            f"Call-ID: bob-registration\r\nCSeq: {cseq} REGISTER\r\n"
            f"Contact: <sip:bob@{host}:{port}>\r\nExpires: 3600\r\n{extra}"
            "Content-Length: 0\r\n\r\n"
        ).encode()

    phone.transport.sendto(register(1), gateway)
    challenged = await asyncio.wait_for(phone.responses.get(), 5.0)
    assert challenged.status == 401, challenged.start_line()
    credentials = build_authorization(
        select_challenge(challenged.get_all("www-authenticate")), method="REGISTER",
        uri=f"sip:{DOMAIN}", username="bob", password=PASSWORDS["bob"])
    phone.transport.sendto(register(2, f"Authorization: {credentials}\r\n"), gateway)
    registered = await asyncio.wait_for(phone.responses.get(), 5.0)
    assert registered.status == 200, registered.start_line()


async def open_socket(protocol: type[Any]) -> Any:
    loop = asyncio.get_running_loop()
    _, endpoint = await loop.create_datagram_endpoint(protocol, local_addr=("127.0.0.1", 0))
    return endpoint


async def fuzz(gateway: FuzzGateway, *, seed: int, cases: int | None = None,
               seconds: float | None = None, nonce_refresh: float = 120.0) -> FuzzRun:
    """Send mutated cases until `cases` were sent or `seconds` passed, paced in windows."""
    alice = gateway.alice
    assert alice is not None and alice.transport is not None, "start() the gateway first"
    statuses_before = collections.Counter(alice.statuses)
    fuzzer = Fuzzer(seed, alice.address)
    fuzzer.challenge = await challenge_for(alice, gateway.udp)
    run = FuzzRun()
    started = refreshed = time.monotonic()
    while (cases is None or run.cases < cases) and \
            (seconds is None or time.monotonic() - started < seconds):
        if time.monotonic() - refreshed > nonce_refresh:
            fuzzer.challenge = await challenge_for(alice, gateway.udp)
            refreshed = time.monotonic()
        answered = alice.answered
        for _ in range(WINDOW):
            alice.transport.sendto(fuzzer.next_case().data, gateway.udp)
            run.cases += 1
        # The gateway and the phone run here. Sending faster than they read would only
        # overflow the UDP socket buffers: wait for most of the window's answers (a case the
        # parser drops without a reply is never answered, hence the deadline).
        deadline = time.monotonic() + PACE_DEADLINE
        while alice.answered - answered < WINDOW * 3 // 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.0005)
    await asyncio.sleep(0.5)  # the last answers
    run.seconds = time.monotonic() - started
    run.statuses = alice.statuses - statuses_before
    return run

