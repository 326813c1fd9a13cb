"""rtpengine (Debian's rtpengine-daemon, userspace only) as a media relay under test, beside
ws2sip's: the same load generator bridges a WebRTC browser leg (ICE + DTLS-SRTP + rtcp-mux,
UDP/TLS/RTP/SAVPF) to a plain RTP/AVP PCMU phone through it, so the two relays' CPU per packet
can be compared as a ratio within one run.

rtpengine runs in the foreground on loopback without its kernel module (--table=-1), without a
config file (--config-file=none: the Debian package ships /etc/rtpengine/rtpengine.conf) and
with every file it writes in a temporary directory. It is driven over its ng control protocol:
bencoded dictionaries over UDP, each prefixed by a cookie and a space.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import bencodepy
import sdp_transform

# bench/ on sys.path (run.py and the bench scripts put it there): the helpers the register
# bench and the Kamailio driver use.
from register_bench import raise_open_file_limit

READY_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
NG_REPLY_TIMEOUT = 0.5
NG_ATTEMPTS = 6  # UDP: a request or reply may be lost; rtpengine spots the resent cookie
PORTS_PER_CALL = 4  # an RTP+RTCP pair on each of the two legs
EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")
FROM_TAG = "browser"
TO_TAG = "phone"

# Toward the phone: plain RTP/AVP (a non-SRTP profile: no DTLS or SDES), no ICE, RTP and RTCP
# on separate ports.
OFFER_OPTIONS: dict[str, Any] = {
    "transport-protocol": "RTP/AVP",
    "ICE": "remove",
    "rtcp-mux": ["demux"],
    "flags": ["trust-address"],
    "replace": ["origin", "session-connection"],
}
# Toward the browser: the WebRTC profile it offered, with rtpengine's own ICE candidates and
# DTLS fingerprint and rtcp-mux accepted. rtpengine remembers the offerer's profile and would
# answer so without these options too; they are spelled out so the answer does not hinge on it.
ANSWER_OPTIONS: dict[str, Any] = {
    "transport-protocol": "UDP/TLS/RTP/SAVPF",
    "ICE": "force",
    "rtcp-mux": ["accept"],
    "flags": ["trust-address"],
    "replace": ["origin", "session-connection"],
}


def phone_answer_sdp(phone: tuple[str, int]) -> str:
    host, port = phone
    return (f"v=0\r\no=- 1 1 IN IP4 {host}\r\ns=phone\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\n"
            "a=sendrecv\r\n")


def media_address(sdp: str) -> tuple[str, int]:
    """Where the first audio stream of `sdp` receives RTP: its c= address (media level first)
    and m= port."""
    description = sdp_transform.parse(sdp)
    audio = next((m for m in description.get("media", []) if m.get("type") == "audio"), None)
    connection = (audio or {}).get("connection") or description.get("connection")
    if audio is None or connection is None:
        raise ValueError(f"no audio stream with an address in SDP:\n{sdp}")
    return connection["ip"], int(audio["port"])


def free_udp_port() -> int:
    """register_bench.free_port probes TCP; ng listens on UDP."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def media_port_window(size: int) -> tuple[int, int]:
    """A random window of `size` ports inside the kernel's ephemeral range.

    The window need not be free: rtpengine skips ports already bound when it allocates, and the
    kernel never hands a port rtpengine holds to another port-0 socket, so it shares the range
    with concurrent test runs; the random offset keeps two rtpengines mostly apart."""
    low, high = map(int, EPHEMERAL_PORTS.read_text().split())
    if high - low + 1 < size:
        raise ValueError(f"{size} media ports do not fit the ephemeral range {low}-{high}")
    first = random.randrange(low, high - size + 2)
    return first, first + size - 1


class NgError(RuntimeError):
    pass


class _NgProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.pending: dict[bytes, asyncio.Future[dict[bytes, Any]]] = {}

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        cookie, _, body = data.partition(b" ")
        waiter = self.pending.get(cookie)
        if waiter is not None and not waiter.done():
            waiter.set_result(bencodepy.decode(body))


class NgClient:
    """Requests over UDP to rtpengine's ng port; replies matched by cookie."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self._cookies = (f"{os.getpid()}_{n}".encode() for n in itertools.count())
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol = _NgProtocol()

    async def open(self) -> None:
        self._transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: self._protocol, remote_addr=self.address)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def request(self, command: str, **options: Any) -> dict[str, Any]:
        """The reply dictionary (keys and byte-string values decoded) of an `ok` or `pong`;
        NgError with rtpengine's reason otherwise."""
        if self._transport is None:
            raise NgError("ng client not opened")
        cookie = next(self._cookies)
        message = cookie + b" " + bencodepy.encode({"command": command, **options})
        waiter = asyncio.get_running_loop().create_future()
        self._protocol.pending[cookie] = waiter
        try:
            for _ in range(NG_ATTEMPTS):
                self._transport.sendto(message)
                try:
                    reply = _text(await asyncio.wait_for(asyncio.shield(waiter),
                                                         NG_REPLY_TIMEOUT))
                    break
                except TimeoutError:
                    continue
            else:
                raise NgError(f"no reply to {command!r} from rtpengine at {self.address} "
                              f"after {NG_ATTEMPTS} attempts")
        finally:
            del self._protocol.pending[cookie]
            waiter.cancel()
        if reply.get("result") not in ("ok", "pong"):
            raise NgError(f"rtpengine refused {command!r} ({options.get('call-id', '')}): "
                          f"{reply.get('error-reason', reply)}")
        return reply


def _text(value: Any) -> Any:
    """bencode carries byte strings only: decode them (recursively) to str."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, dict):
        return {_text(key): _text(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_text(item) for item in value]
    return value


class Rtpengine:
    """The RelayUnderTest of bench/media_load.py backed by an rtpengine child process."""

    name = "rtpengine"

    def __init__(self, max_calls: int = 2000, port_range: tuple[int, int] | None = None,
                 threads: int = 2, log_level: int = 5, workdir: Path | None = None) -> None:
        """`port_range`: rtpengine's media ports (first, last); by default a window of the
        ephemeral range sized for `max_calls` (see media_port_window)."""
        self.port_range = port_range or media_port_window(max_calls * PORTS_PER_CALL)
        self.threads = threads
        self.log_level = log_level
        self._workdir = workdir
        self._own_tempdir: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._ng: NgClient | None = None
        self.log_path: Path | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("rtpengine not started")
        return self._process.pid

    def command(self, rundir: Path, ng_port: int) -> list[str]:
        executable = shutil.which("rtpengine") or "/usr/bin/rtpengine"
        port_min, port_max = self.port_range
        return [
            executable, "--config-file=none", "--foreground", "--log-stderr",
            f"--log-level={self.log_level}", "--table=-1", "--interface=127.0.0.1",
            f"--listen-ng=127.0.0.1:{ng_port}",
            f"--port-min={port_min}", f"--port-max={port_max}",
            f"--num-threads={self.threads}", "--media-num-threads=1", "--delete-delay=0",
            f"--pidfile={rundir / 'rtpengine.pid'}",
        ]

    async def start(self) -> None:
        if self._workdir is None:
            self._own_tempdir = tempfile.TemporaryDirectory(prefix="rtpengine-")
            self._workdir = Path(self._own_tempdir.name)
        ng_port = free_udp_port()
        rundir = self._workdir / f"rtpengine-{ng_port}"
        rundir.mkdir()
        self.log_path = rundir / "rtpengine.log"
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self.command(rundir, ng_port), cwd=rundir, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=raise_open_file_limit)
        self._ng = NgClient(("127.0.0.1", ng_port))
        await self._ng.open()
        try:
            await self._wait_until_ready()
        except BaseException:
            await self.stop()
            raise

    async def _wait_until_ready(self) -> None:
        """A `ping` answered over ng: the control socket is bound and the daemon set up."""
        assert self._process is not None and self._ng is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        while self._process.poll() is None and loop.time() < deadline:
            try:
                await self._ng.request("ping")
                return
            except NgError:
                continue
        raise RuntimeError(f"rtpengine did not answer ng ping on {self._ng.address} "
                           f"(exit {self._process.poll()}); log {self.log_path}:\n"
                           f"{self._log_tail()}")

    def _log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path else ""

    async def bridge(self, call_id: str, browser_offer_sdp: str, phone: tuple[str, int]
                     ) -> tuple[str, tuple[str, int]]:
        if self._ng is None:
            raise RuntimeError("rtpengine not started")
        offer = await self._ng.request("offer", sdp=browser_offer_sdp, **{
            "call-id": call_id, "from-tag": FROM_TAG}, **OFFER_OPTIONS)
        relay_for_phone = media_address(offer["sdp"])
        answer = await self._ng.request("answer", sdp=phone_answer_sdp(phone), **{
            "call-id": call_id, "from-tag": FROM_TAG, "to-tag": TO_TAG}, **ANSWER_OPTIONS)
        return answer["sdp"], relay_for_phone

    async def counters(self) -> dict[str, int]:
        """rtpengine's totals since start, named as bench/media_load.py reads relay counters:
        packets relayed, and packets it counted as relay errors (its `relayedpacketerrors`,
        e.g. an unknown payload type or a packet it failed to handle) as `dropped`."""
        if self._ng is None:
            raise RuntimeError("rtpengine not started")
        totals = (await self._ng.request("statistics"))["statistics"]["totalstatistics"]
        return {"packets": int(totals["relayedpackets"]),
                "dropped": int(totals["relayedpacketerrors"])}

    async def stop(self) -> None:
        if self._ng is not None:
            self._ng.close()
            self._ng = None
        if self._process is not None:
            self._process.terminate()
            try:
                await asyncio.to_thread(self._process.wait, STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._process.kill()
                await asyncio.to_thread(self._process.wait)
        if self._own_tempdir is not None:
            self._own_tempdir.cleanup()
            self._own_tempdir = None
            self._workdir = None
