"""Media relay under load: concurrent bridged G.711 calls, relay CPU per relayed packet, loss
and added one-way latency, with the relay in its own process (ws2sip's MediaRelay or
rtpengine) and a lean load generator in this one.

Each call: a "browser" that is ws2sip's own WebRtcLeg (real aioice ICE as the controlling
agent, a real DTLS handshake in the role the relay's answer leaves, libsrtp keys from it) and a
"phone" that is a plain UDP socket answering PCMU. The WebRtcLeg is used rather than aiortc's
RTCPeerConnection because it does the same ICE/DTLS-SRTP with no media pipeline behind it:
once keyed, the hot path here is one timer per 1/GROUPS of the 20 ms packet interval that,
for its share of the calls, SRTP-protects the browser's packet (libsrtp) and sends both
sides' packets with plain socket.sendto. Every packet carries a sequence number and its send
time (CLOCK_MONOTONIC, the same clock in both processes).

Receiving is measured on a fixed sample of calls (--measure, the calls set up first; their
sends are spread over every send slot): loss as sent vs received per direction and one-way
latency. The other calls' sockets drop RTP/RTCP in the kernel with a socket filter (the
relay still pays the full send), while STUN consent checks and DTLS still reach aioice.
All calls are covered by the relay's own counters (sequence gaps, drops, SRTP errors) where
the relay offers them. The "generator baseline" is the latency of packets this process sends
to itself in the same slots: what the generator's own scheduling adds to every figure.

Steps run with a growing set of calls (all of them active); --find-max keeps growing until
loss exceeds 0.1 % or the relay saturates (95 % of a core per relay process). Relay CPU is
utime+stime of its processes from /proc over each step's window, divided by the packets sent
to it in that window.

ws2sip's relay always runs as media worker processes driven by the very client the gateway uses
(webrtc.MediaWorkers, here in the generator's process), --workers N of them; relay CPU is
summed over the workers. --workers 0 (the default) or 1 is one relay on one event loop, the
per-packet work of a gateway without workers. With one relay process it gets one CPU and the
generator the other; with several nothing is pinned (the 2-core machine then shares its cores
between workers and generator: the "gen core" column shows the generator's share).

    python bench/media_load.py --relay ws2sip --calls 10,100,1000 --seconds 10 [--find-max]
    python bench/media_load.py --relay ws2sip --workers 2 --calls 100,500,1000

--transcode (ws2sip only): the browser offers Opus only (opus/48000/2, pt 111) and the phone
answers PCMU only, so the relay transcodes every call Opus <-> PCMU. The browser sends real
Opus frames of a 1 kHz tone, encoded once at start (libopus through PyAV) and looped; the
phone sends PCMU frames of a 400 Hz tone. The relay's transcoder is the sender of its output
(its own SSRC, sequence numbers and timestamps) and a decode/encode keeps no payload bytes, so
transcoded directions are measured by position instead: the transcoder emits one packet per
frame it was sent, after a fixed hold of frames (measured at start on a local AudioTranscoder,
and printed; 0 since the transcoder's own encoders hold no frame back). The n-th packet a
receiver gets from a call's transcoder is the call's n-th sent frame; loss is frames sent in
the window (less the held ones at its end) against packets received for them, latency is the
n-th packet's arrival minus the n-th frame's send time, so it includes the hold (20 ms per held
frame). A lost packet shifts the numbering: later packets then count against the frame before,
overstating their latency by 20 ms per loss. Once per run, one call's received audio (about
1 s on each side) is decoded and its tone found by FFT.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import fractions
import functools
import os
import random
import resource
import socket
import statistics
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "bench" / "compare")]

from processes import CLOCK_TICKS, MachineSample  # noqa: E402

from tests.support.audio import dominant_frequency  # noqa: E402
from webrtc.codecs import OPUS, PCMU, Codec  # noqa: E402
from webrtc.dtls import DtlsCertificate  # noqa: E402
from webrtc.ports import PortPool  # noqa: E402
from webrtc.sdp import MediaSection, SdpOrigin, parse, write_webrtc  # noqa: E402
from webrtc.webrtc_leg import WebRtcLeg  # noqa: E402

MAX_CALLS = 2000
MAX_SECONDS = 120.0
PACKET_INTERVAL = 0.02
GROUPS = 20  # send slots per packet interval: calls' packets spread like real calls' phases
PAYLOAD_BYTES = 160  # 20 ms of PCMU; the first 8 bytes carry the send time
SETUP_CONCURRENCY = 32
SETUP_SECONDS_PER_CALL = 0.5
SETUP_SECONDS_MIN = 60.0
KEYING_SECONDS = 30.0
DRAIN_SECONDS = 0.5
WARMUP_SECONDS = 1.0
LOSS_LIMIT = 0.001
SATURATED_CORE = 0.95
GENERATOR_PACE = 0.98  # share of the nominal packet rate a valid step must reach
HOST = "127.0.0.1"
# header (seq, timestamp, SSRC) and send time in one pack; byte 0 (V=2) and PT 0 are fixed
_STAMP = struct.Struct("!HIIQ")
_SENT_AT = struct.Struct("!Q")
_HEADER = struct.Struct("!HII")  # seq, timestamp, SSRC, packed at offset 2
_SEQUENCE = struct.Struct("!H")
BROWSER_TONE_HZ = 1000.0  # 1 ms period: the looped second of Opus is seamless
PHONE_TONE_HZ = 400.0  # 8 periods in 20 ms: one PCMU frame loops seamlessly
TONE_TOLERANCE_HZ = 15.0
OPUS_RATE = 48000
OPUS_FRAME_SAMPLES = 960
OPUS_LOOP_FRAMES = 50
TONE_CHECK_PACKETS = 50  # 1 s of 20 ms packets
SEND_TIME_RING = 4096  # per measured call: 82 s of send times, far beyond any latency


class RelayUnderTest(Protocol):
    name: str

    @property
    def pids(self) -> list[int]:
        """The processes whose CPU is the relay's."""
        ...

    async def start(self) -> None: ...

    async def bridge(self, call_id: str, browser_offer_sdp: str, phone: tuple[str, int]
                     ) -> tuple[str, tuple[str, int]]:
        """Set up one call: the browser's WebRTC offer (ICE, DTLS fingerprint, actpass,
        rtcp-mux, PCMU pt 0) and the phone's plain RTP address (it answers PCMU only).
        Returns the answer SDP for the browser and the address the phone sends RTP to."""
        ...

    async def stop(self) -> None: ...


# -- ws2sip's relay in a child process ------------------------------------------------------

def phone_answer(host: str, port: int) -> str:
    return (f"v=0\r\no=- 1 1 IN IP4 {host}\r\ns=phone\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\n"
            "a=sendrecv\r\n")


class Ws2sipWorkers:
    """ws2sip's relay as media worker processes, through the gateway's own client (one worker
    stands for the gateway's in-process relay: the same MediaRelay on its own loop and core)."""

    name = "ws2sip"

    def __init__(self, port_range: tuple[int, int], count: int) -> None:
        from gateway.app import GC_YOUNG_THRESHOLD
        from webrtc import MediaWorkers

        self._workers = MediaWorkers(count, bind_host=HOST, port_min=port_range[0],
                                     port_max=port_range[1],
                                     gc_threshold=(GC_YOUNG_THRESHOLD, 20, 100))

    @property
    def pids(self) -> list[int]:
        return self._workers.pids

    async def start(self) -> None:
        await self._workers.start()
        for pid in self.pids:
            raise_file_limit_of(pid)

    async def bridge(self, call_id: str, browser_offer_sdp: str, phone: tuple[str, int]
                     ) -> tuple[str, tuple[str, int]]:
        session = self._workers.create_session(call_id)
        towards_phone = parse(await session.process_offer(browser_offer_sdp, "webrtc")
                              ).first("audio")
        if towards_phone is None or towards_phone.address is None:
            raise RuntimeError(f"{call_id}: relay offered no audio to the phone")
        answer = await session.process_answer(phone_answer(*phone), "plain")
        return answer, (towards_phone.address, towards_phone.port)

    async def counters(self) -> dict[str, int]:
        return await self._workers.stats()

    async def stop(self) -> None:
        await self._workers.close()


# -- the load generator ---------------------------------------------------------------------

_SO_ATTACH_FILTER = 26
_BPF_LOAD_BYTE = 0x30  # ldb [k]
_BPF_JUMP_GE = 0x35  # jge #k
_BPF_RETURN = 0x06  # ret #k
_UDP_HEADER = 8  # a UDP socket's filter sees the datagram from its UDP header on


def drop_in_kernel(sock: socket.socket, *, keep_below: int | None) -> None:
    """Attach a classic BPF filter: drop datagrams whose first payload byte is >= keep_below
    (RTP/RTCP start at 128, STUN and DTLS below), or every datagram when keep_below is None.
    A socket no one reads then costs the generator nothing per packet."""
    if keep_below is None:
        program = [(_BPF_RETURN, 0, 0, 0)]
    else:
        program = [(_BPF_LOAD_BYTE, 0, 0, _UDP_HEADER), (_BPF_JUMP_GE, 0, 1, keep_below),
                   (_BPF_RETURN, 0, 0, 0), (_BPF_RETURN, 0, 0, 0xFFFF)]
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in program))
    # The kernel copies the program during setsockopt, so `code` may go after this call.
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER,
                    struct.pack("HL", len(program), ctypes.addressof(code)))


@dataclass
class Direction:
    """One direction over the measured calls (or the generator's baseline) in one step."""

    sent: int = 0
    received: int = 0
    duplicates: int = 0
    latencies_us: list[float] = field(default_factory=list)
    seen: set[bytes] = field(default_factory=set)  # SSRC + send time: one packet's identity


@dataclass
class Call:
    index: int
    leg: WebRtcLeg
    phone: socket.socket
    measured: bool
    browser_socket: socket.socket | None = None  # a dup of the leg's nominated ICE socket
    relay_ice: tuple[str, int] | None = None
    relay_plain: tuple[str, int] | None = None
    protect: Callable[[bytes], bytes] | None = None
    browser_packet: bytearray = field(default_factory=lambda: _packet_template())
    phone_packet: bytearray = field(default_factory=lambda: _packet_template())
    # transcoding only
    first_tick: int = 0
    browser_sent_ns: list[int] = field(default_factory=list)
    phone_sent_ns: list[int] = field(default_factory=list)
    to_phone_numbering: OutputNumbering = field(default_factory=lambda: OutputNumbering())
    to_browser_numbering: OutputNumbering = field(default_factory=lambda: OutputNumbering())


@dataclass
class OutputNumbering:
    """Numbers a transcoder's output packets 0, 1, 2... from their sequence numbers (wrap and
    reordering included): the n-th packet it emits is for the n-th frame it was sent."""

    last_sequence: int | None = None
    last_index: int = 0

    def index(self, sequence: int) -> int:
        if self.last_sequence is None:
            self.last_sequence = sequence
            return 0
        step = ((sequence - self.last_sequence + 0x8000) & 0xFFFF) - 0x8000
        index = self.last_index + step
        if step > 0:
            self.last_sequence, self.last_index = sequence, index
        return index


@dataclass
class TranscodingMedia:
    """What the generator sends in --transcode mode, built once at start."""

    opus_packets: list[bytearray]  # RTP header room + one Opus frame each
    pcmu_packet: bytearray  # RTP header room + one PCMU frame of the phone's tone
    hold_frames: int  # frames a transcoder keeps before emitting the first one


def _encode_opus_tone() -> list[bytes]:
    """OPUS_LOOP_FRAMES frames of the browser's tone, taken after as many frames of warm-up so
    that the loop point joins two frames of an encoder in steady state."""
    import av

    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate = OPUS_RATE
    encoder.layout = "stereo"
    encoder.format = "s16"
    encoder.bit_rate = 32000
    encoder.time_base = fractions.Fraction(1, OPUS_RATE)
    # Unconstrained VBR spends 68 kbit/s on a pure tone; browsers send voice at about 32.
    encoder.options = {"application": "voip", "vbr": "constrained"}
    seconds = 2 * OPUS_LOOP_FRAMES * PACKET_INTERVAL
    mono = np.frombuffer(tone_pcm(BROWSER_TONE_HZ, seconds, OPUS_RATE), dtype="<i2")
    frames: list[bytes] = []
    for index in range(2 * OPUS_LOOP_FRAMES):
        chunk = mono[index * OPUS_FRAME_SAMPLES:(index + 1) * OPUS_FRAME_SAMPLES]
        frame = av.AudioFrame.from_ndarray(np.repeat(chunk, 2).reshape(1, -1), format="s16",
                                           layout="stereo")
        frame.sample_rate = OPUS_RATE
        frame.pts = index * OPUS_FRAME_SAMPLES
        frames.extend(bytes(packet) for packet in encoder.encode(frame))
    if len(frames) < 2 * OPUS_LOOP_FRAMES:
        raise RuntimeError(f"libopus gave {len(frames)} packets for {2 * OPUS_LOOP_FRAMES} "
                           f"frames of 20 ms")
    return frames[-OPUS_LOOP_FRAMES:]


def _encode_pcmu_tone() -> bytes:
    import av

    encoder = av.CodecContext.create("pcm_mulaw", "w")
    encoder.sample_rate = 8000
    encoder.layout = "mono"
    encoder.format = "s16"
    samples = np.frombuffer(tone_pcm(PHONE_TONE_HZ, PACKET_INTERVAL, 8000), dtype="<i2")
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 8000
    payload = b"".join(bytes(packet) for packet in encoder.encode(frame))
    if len(payload) != PAYLOAD_BYTES:
        raise RuntimeError(f"pcm_mulaw gave {len(payload)} bytes for 20 ms at 8 kHz")
    return payload


def tone_pcm(frequency: float, seconds: float, rate: int) -> bytes:
    t = np.arange(round(seconds * rate)) / rate
    return (0.5 * 32767 * np.sin(2 * np.pi * frequency * t)).astype("<i2").tobytes()


def _transcoder_hold(opus_frames: list[bytes]) -> int:
    """Frames a transcoder holds, both ways, found by feeding the relay's own AudioTranscoder
    (the figure depends on aiortc's jitter buffer and libswresample, not on this bench)."""
    from webrtc.transcoding import AudioTranscoder

    holds = []
    for source, target, payloads in ((OPUS, PCMU, opus_frames),
                                     (PCMU, OPUS, [bytes(PAYLOAD_BYTES)] * len(opus_frames))):
        transcoder = AudioTranscoder(source, target)
        samples = source.clock_rate * 20 // 1000
        emitted = sum(len(transcoder(bytes(_rtp(source.payload_type, n, n * samples) + p)))
                      for n, p in enumerate(payloads))
        holds.append(len(payloads) - emitted)
    if holds[0] != holds[1] or not 0 <= holds[0] < 8:
        raise RuntimeError(f"transcoder holds {holds} frames (Opus>PCMU, PCMU>Opus): the "
                           f"numbering of transcoded packets assumes one steady hold")
    return holds[0]


def _rtp(payload_type: int, sequence: int, timestamp: int, ssrc: int = 1) -> bytearray:
    packet = bytearray(b"\x80" + bytes([payload_type]) + bytes(10))
    _HEADER.pack_into(packet, 2, sequence & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc)
    return packet


def transcoding_media() -> TranscodingMedia:
    opus_frames = _encode_opus_tone()
    return TranscodingMedia(
        opus_packets=[_rtp(OPUS.payload_type, 0, 0) + frame for frame in opus_frames],
        pcmu_packet=_rtp(PCMU.payload_type, 0, 0) + _encode_pcmu_tone(),
        hold_frames=_transcoder_hold(opus_frames))


def decoded_tone(codec: Codec, payloads: list[bytes]) -> float:
    """The dominant frequency of what a list of RTP payloads sounds like (first channel)."""
    import av

    decoder = av.CodecContext.create("libopus" if codec.name == "opus" else "pcm_mulaw", "r")
    decoder.sample_rate = codec.clock_rate
    decoder.layout = "stereo" if codec.channels == 2 else "mono"
    decoder.format = "s16"
    chunks = [frame.to_ndarray()[0, ::codec.channels]
              for payload in payloads for frame in decoder.decode(av.Packet(payload))]
    if not chunks:
        return 0.0
    return dominant_frequency(np.concatenate(chunks).astype(np.float64), codec.clock_rate)


@dataclass
class ToneCheck:
    """One call's received payloads on each side, for an FFT of what each side hears."""

    call_index: int
    to_phone: list[bytes] = field(default_factory=list)
    to_browser: list[bytes] = field(default_factory=list)
    capturing: bool = False

    def report(self) -> tuple[str, bool]:
        heard_by_phone = decoded_tone(PCMU, self.to_phone)
        heard_by_browser = decoded_tone(OPUS, self.to_browser)
        phone_ok = abs(heard_by_phone - BROWSER_TONE_HZ) <= TONE_TOLERANCE_HZ
        browser_ok = abs(heard_by_browser - PHONE_TONE_HZ) <= TONE_TOLERANCE_HZ
        verdict = ("tone heard both ways" if phone_ok and browser_ok
                   else "TONE NOT HEARD: the transcoded audio is wrong")
        return (f"  tone check, call {self.call_index}: the phone hears {heard_by_phone:.0f} Hz "
                f"in {len(self.to_phone)} PCMU packets (browser sent Opus "
                f"{BROWSER_TONE_HZ:.0f} Hz){'' if phone_ok else ' NOT HEARD'}, the browser "
                f"hears {heard_by_browser:.0f} Hz in {len(self.to_browser)} Opus packets "
                f"(phone sent PCMU {PHONE_TONE_HZ:.0f} Hz){'' if browser_ok else ' NOT HEARD'}"
                f": {verdict}", phone_ok and browser_ok)


def _packet_template() -> bytearray:
    return bytearray(b"\x80\x00" + bytes(10 + PAYLOAD_BYTES))


@dataclass
class StepResult:
    calls: int
    measured_calls: int
    window_seconds: float
    packets_sent: int
    relay_user: float
    relay_system: float
    generator_cpu: float
    to_phone: Direction
    to_browser: Direction
    baseline: Direction
    relay_counters: dict[str, int] | None
    busy_cores: float
    load_average: str
    late_slots: int
    relay_processes: int = 1  # each can use at most one core

    @property
    def relay_core(self) -> float:
        return (self.relay_user + self.relay_system) / self.window_seconds

    @property
    def end_to_end_loss(self) -> float:
        sent = self.to_phone.sent + self.to_browser.sent
        received = self.to_phone.received + self.to_browser.received
        return 1 - received / sent if sent else 0.0

    @property
    def relay_loss(self) -> float | None:
        if self.relay_counters is None or not self.packets_sent:
            return None
        missing = sum(self.relay_counters.get(key, 0)
                      for key in ("lost", "dropped", "srtp_errors"))
        return missing / self.packets_sent

    @property
    def generator_kept_pace(self) -> bool:
        """The generator sent at the nominal rate: otherwise the load was burstier and lighter
        than the call count says, and the step shows the generator's limit, not the relay's."""
        nominal = 2 * self.calls / PACKET_INTERVAL
        return self.packets_sent / self.window_seconds >= GENERATOR_PACE * nominal

    @property
    def sustainable(self) -> bool:
        return (self.end_to_end_loss <= LOSS_LIMIT and (self.relay_loss or 0.0) <= LOSS_LIMIT
                and self.relay_core < SATURATED_CORE * self.relay_processes
                and self.generator_kept_pace)


class LoadGenerator:
    def __init__(self, relay: RelayUnderTest, browser_ports: tuple[int, int],
                 measure: int, transcoding: TranscodingMedia | None = None) -> None:
        self._relay = relay
        self._transcoding = transcoding
        # Ticks whose frames count in transcoded directions: set for each step's window.
        self._counted_ticks = range(0)
        self.tone_check = ToneCheck(call_index=0) if transcoding is not None else None
        self._pool = PortPool(HOST, *browser_ports)
        self._certificate = DtlsCertificate()
        self._measure = measure
        self.calls: list[Call] = []
        self._failures: list[str] = []
        self._tick = 0  # continues across steps: SRTP replay windows and relay gap counters
        self._to_phone = Direction()
        self._to_browser = Direction()
        self._baseline = Direction()
        self._window_start_ns = 0
        self._baseline_pairs: list[tuple[socket.socket, socket.socket]] = []
        self._baseline_packet = _packet_template()

    # -- set-up -----------------------------------------------------------------------

    async def grow(self, total: int) -> None:
        """Set up calls until `total` exist, SETUP_CONCURRENCY at a time, time-bounded."""
        if not self._baseline_pairs:
            self._open_baseline()
        start = len(self.calls)
        if total <= start:
            return
        limit = asyncio.Semaphore(SETUP_CONCURRENCY)
        seconds = max(SETUP_SECONDS_MIN, SETUP_SECONDS_PER_CALL * (total - start))

        async def one(index: int) -> Call:
            async with limit:
                return await self._set_up(index)

        began = time.monotonic()
        try:
            calls = await asyncio.wait_for(
                asyncio.gather(*(one(i) for i in range(start, total))), seconds)
        except TimeoutError as exc:
            raise SystemExit(f"setting up calls {start}..{total} took over {seconds:.0f} s; "
                             f"failures so far: {self._failures[:3]}") from exc
        self.calls.extend(calls)
        print(f"  set up calls {start + 1}..{total} in {time.monotonic() - began:.1f} s "
              f"(ICE + DTLS + SRTP keys, {SETUP_CONCURRENCY} at a time)", flush=True)

    async def _set_up(self, index: int) -> Call:
        loop = asyncio.get_running_loop()
        leg = WebRtcLeg(pool=self._pool, public_host=HOST, certificate=self._certificate,
                        stun_server=None)
        leg.on_failure = lambda reason: self._failures.append(f"call {index}: {reason}")
        await leg.prepare(ice_controlling=True)
        offer = write_webrtc(
            SdpOrigin(HOST), HOST,
            [MediaSection(kind="audio", port=leg.local_port,
                          codecs=[PCMU if self._transcoding is None else OPUS], mid="0")],
            leg.local_params("actpass"))
        phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        phone.bind((HOST, 0))
        phone.setblocking(False)
        call = Call(index=index, leg=leg, phone=phone, measured=index < self._measure,
                    first_tick=self._tick)
        answer_sdp, call.relay_plain = await self._relay.bridge(
            f"load-{index}", offer, phone.getsockname())
        answer = parse(answer_sdp).first("audio")
        if answer is None:
            raise SystemExit(f"call {index}: the relay's answer has no audio: {answer_sdp}")
        # RFC 5763: an answer of "active" leaves this side the DTLS server.
        leg.start(answer, "server" if answer.setup == "active" else "client")
        deadline = loop.time() + KEYING_SECONDS
        while not leg.keyed:
            if loop.time() > deadline:
                ice, dtls = leg._ice, leg._dtls
                raise SystemExit(
                    f"call {index}: no SRTP keys within {KEYING_SECONDS:.0f} s (ICE "
                    f"{'connected' if ice is not None and ice.connected else 'not connected'}"
                    f", DTLS {dtls.state if dtls is not None else 'none'}): "
                    f"{self._failures[-3:]}")
            await asyncio.sleep(0.02)
        self._bind_hot_path(call)
        return call

    def _bind_hot_path(self, call: Call) -> None:
        """Take the keyed leg's libsrtp session and nominated socket for plain sendto."""
        leg = call.leg
        srtp, ice = leg._srtp, leg._ice  # the bench reaches inside its own project's leg
        assert srtp is not None and ice is not None
        pair = ice._nominated[1]
        call.protect = srtp.outbound.protect
        call.relay_ice = pair.remote_addr
        call.browser_socket = socket.socket(fileno=os.dup(
            pair.protocol.transport.get_extra_info("socket").fileno()))
        loop = asyncio.get_running_loop()
        if call.measured and self._transcoding is not None:
            call.browser_sent_ns = [0] * SEND_TIME_RING
            call.phone_sent_ns = [0] * SEND_TIME_RING
            leg.on_rtp = functools.partial(self._heard_transcoded, True, call)
            loop.add_reader(call.phone.fileno(), self._drain, call.phone,
                            functools.partial(self._heard_transcoded, False, call))
        elif call.measured:
            leg.on_rtp = self._browser_heard
            loop.add_reader(call.phone.fileno(), self._drain, call.phone, self._phone_heard)
        else:
            drop_in_kernel(call.browser_socket, keep_below=128)
            drop_in_kernel(call.phone, keep_below=None)

    def _open_baseline(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(GROUPS):
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            receiver.bind((HOST, 0))
            sender.setblocking(False)
            receiver.setblocking(False)
            sender.connect(receiver.getsockname())
            loop.add_reader(receiver.fileno(), self._drain, receiver, self._baseline_heard)
            self._baseline_pairs.append((sender, receiver))

    # -- receive side -----------------------------------------------------------------

    def _heard(self, direction: Direction, packet: bytes) -> None:
        if len(packet) < 20:  # not one of ours: RTP header + send time
            return
        (sent_at,) = _SENT_AT.unpack_from(packet, 12)
        if sent_at >= self._window_start_ns:
            identity = packet[8:20]
            if identity in direction.seen:
                direction.duplicates += 1
                return
            direction.seen.add(identity)
            direction.received += 1
            direction.latencies_us.append((time.monotonic_ns() - sent_at) / 1000)

    # Directions are looked up per packet: each step starts with fresh ones.
    def _browser_heard(self, packet: bytes) -> None:
        self._heard(self._to_browser, packet)

    def _phone_heard(self, packet: bytes) -> None:
        self._heard(self._to_phone, packet)

    def _baseline_heard(self, packet: bytes) -> None:
        self._heard(self._baseline, packet)

    def _heard_transcoded(self, toward_browser: bool, call: Call, packet: bytes) -> None:
        """Counts a transcoder's packet against the frame it is for (see the module doc), and
        keeps the tone-check call's counted payloads for the FFT."""
        arrived = time.monotonic_ns()
        if len(packet) < 12:
            return
        if toward_browser:
            direction, numbering, sent_ns = (self._to_browser, call.to_browser_numbering,
                                             call.phone_sent_ns)
        else:
            direction, numbering, sent_ns = (self._to_phone, call.to_phone_numbering,
                                             call.browser_sent_ns)
        (sequence,) = _SEQUENCE.unpack_from(packet, 2)
        index = numbering.index(sequence)
        tick = call.first_tick + index
        if tick not in self._counted_ticks:
            return
        identity = struct.pack("!II", call.index, index)
        if identity in direction.seen:
            direction.duplicates += 1
            return
        direction.seen.add(identity)
        direction.received += 1
        direction.latencies_us.append((arrived - sent_ns[tick % SEND_TIME_RING]) / 1000)
        check = self.tone_check
        if check is not None and check.capturing and call.index == check.call_index:
            captured = check.to_browser if toward_browser else check.to_phone
            if len(captured) < TONE_CHECK_PACKETS:
                captured.append(packet[12:])

    @staticmethod
    def _drain(sock: socket.socket, on_packet: Callable[[bytes], None]) -> None:
        while True:
            try:
                packet = sock.recv(2048)
            except BlockingIOError:
                return
            on_packet(packet)

    # -- send side --------------------------------------------------------------------

    def _send_slot(self, calls: list[Call], tick: int, baseline: socket.socket,
                   counting: bool) -> None:
        """One slot's packets: each call's browser (SRTP) and phone packet, one baseline."""
        now = time.monotonic_ns
        pack = _STAMP.pack_into
        seq = tick & 0xFFFF
        timestamp = (tick * PAYLOAD_BYTES) & 0xFFFFFFFF
        measured = 0
        for call in calls:
            assert call.browser_socket is not None and call.protect is not None
            pack(call.browser_packet, 2, seq, timestamp, 1_000_000 + call.index, now())
            call.browser_socket.sendto(call.protect(bytes(call.browser_packet)),
                                       call.relay_ice)
            pack(call.phone_packet, 2, seq, timestamp, 2_000_000 + call.index, now())
            call.phone.sendto(call.phone_packet, call.relay_plain)
            measured += call.measured
        _SENT_AT.pack_into(self._baseline_packet, 12, now())
        baseline.send(self._baseline_packet)
        if counting:
            self._to_phone.sent += measured
            self._to_browser.sent += measured
            self._baseline.sent += 1

    def _send_slot_transcoding(self, calls: list[Call], tick: int, baseline: socket.socket,
                               counting: bool) -> None:
        """As _send_slot, with the looped Opus frames and the phone's PCMU tone; send times
        are kept per measured call, since the transcoded packets cannot carry them."""
        media = self._transcoding
        assert media is not None
        now = time.monotonic_ns
        pack = _HEADER.pack_into
        seq = tick & 0xFFFF
        opus = media.opus_packets[tick % OPUS_LOOP_FRAMES]
        opus_timestamp = (tick * OPUS_FRAME_SAMPLES) & 0xFFFFFFFF
        pcmu = media.pcmu_packet
        pcmu_timestamp = (tick * PAYLOAD_BYTES) & 0xFFFFFFFF
        ring = tick % SEND_TIME_RING
        for call in calls:
            assert call.browser_socket is not None and call.protect is not None
            pack(opus, 2, seq, opus_timestamp, 1_000_000 + call.index)
            browser_sent = now()
            call.browser_socket.sendto(call.protect(bytes(opus)), call.relay_ice)
            pack(pcmu, 2, seq, pcmu_timestamp, 2_000_000 + call.index)
            phone_sent = now()
            call.phone.sendto(pcmu, call.relay_plain)
            if call.measured:
                call.browser_sent_ns[ring] = browser_sent
                call.phone_sent_ns[ring] = phone_sent
        _SENT_AT.pack_into(self._baseline_packet, 12, now())
        baseline.send(self._baseline_packet)
        if counting:
            self._baseline.sent += 1

    async def run_step(self, seconds: float, cpu_of: Callable[[], tuple[float, float]],
                       counters: Callable[[], Awaitable[dict[str, int]]] | None
                       ) -> StepResult:
        loop = asyncio.get_running_loop()
        slots = [self.calls[group::GROUPS] for group in range(GROUPS)]
        ticks_warmup = int(WARMUP_SECONDS / PACKET_INTERVAL)
        ticks = ticks_warmup + int(seconds / PACKET_INTERVAL)
        slot_interval = PACKET_INTERVAL / GROUPS
        self._window_start_ns = time.monotonic_ns() + 10**15  # nothing counts in warm-up
        send_slot = self._send_slot if self._transcoding is None else self._send_slot_transcoding
        first_counted = self._tick + ticks_warmup
        hold = self._transcoding.hold_frames if self._transcoding is not None else 0
        # The last `hold` frames of the window leave the relay only with the next step's.
        counted_ticks = range(first_counted, self._tick + ticks - hold)
        begin = loop.time()
        late = 0
        window: dict[str, Any] = {}
        for step_tick in range(ticks):
            if step_tick == ticks_warmup:
                window = await self._open_window(cpu_of, counters)
                self._counted_ticks = counted_ticks
                if self.tone_check is not None and not self.tone_check.to_phone:
                    self.tone_check.capturing = True
            tick = self._tick
            self._tick += 1
            for group in range(GROUPS):
                due = begin + step_tick * PACKET_INTERVAL + group * slot_interval
                delay = due - loop.time()
                if delay < -PACKET_INTERVAL:
                    late += 1
                # Even when behind, yield once per slot: arrivals are read (and timed) between
                # slots rather than after a catch-up burst.
                await asyncio.sleep(max(delay, 0.0))
                send_slot(slots[group], tick, self._baseline_pairs[group][0],
                          step_tick >= ticks_warmup)
        wall = time.monotonic() - window["wall"]
        user, system = cpu_of()
        generator = _own_cpu() - window["generator"]
        packets = 2 * len(self.calls) * (ticks - ticks_warmup)
        await asyncio.sleep(DRAIN_SECONDS)  # the last packets are still on their way
        self._counted_ticks = range(0)
        if self._transcoding is not None:
            measured = sum(c.measured for c in self.calls)
            self._to_phone.sent = self._to_browser.sent = measured * len(counted_ticks)
        end_counters = await counters() if counters is not None else None
        machine = MachineSample.now()
        result = StepResult(
            calls=len(self.calls), measured_calls=sum(c.measured for c in self.calls),
            window_seconds=wall, packets_sent=packets,
            relay_user=user - window["user"], relay_system=system - window["system"],
            generator_cpu=generator / wall, to_phone=self._to_phone,
            to_browser=self._to_browser, baseline=self._baseline,
            relay_counters=_difference(end_counters, window["counters"]),
            busy_cores=machine.busy_cores_since(window["machine"]),
            load_average=machine.load_average, late_slots=late,
        )
        self._to_phone, self._to_browser, self._baseline = Direction(), Direction(), Direction()
        if self._failures:
            print(f"  call failures during the step: {self._failures[:5]}", flush=True)
            self._failures.clear()
        return result

    async def _open_window(self, cpu_of: Callable[[], tuple[float, float]],
                           counters: Callable[[], Awaitable[dict[str, int]]] | None
                           ) -> dict[str, Any]:
        start_counters = await counters() if counters is not None else None
        user, system = cpu_of()
        self._window_start_ns = time.monotonic_ns()
        return {"user": user, "system": system, "counters": start_counters,
                "wall": time.monotonic(), "generator": _own_cpu(),
                "machine": MachineSample.now()}

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for call in self.calls:
            if call.measured:
                loop.remove_reader(call.phone.fileno())
            call.phone.close()
            if call.browser_socket is not None:
                call.browser_socket.close()
        await asyncio.gather(*(call.leg.close() for call in self.calls),
                             return_exceptions=True)
        for sender, receiver in self._baseline_pairs:
            loop.remove_reader(receiver.fileno())
            sender.close()
            receiver.close()


def _difference(end: dict[str, int] | None, start: dict[str, int] | None
                ) -> dict[str, int] | None:
    if end is None or start is None:
        return None
    return {key: value - start.get(key, 0) for key, value in end.items()}


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> tuple[float, float]:
    """User and system seconds of a process (all its threads) so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def pin(pid: int, cpu: int) -> None:
    """Every thread of the process onto one CPU (a multi-threaded relay has several)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), {cpu})


def raise_file_limit() -> None:
    """Thousands of calls hold several sockets each."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def raise_file_limit_of(pid: int) -> None:
    """The same for a worker process, which the gateway's client starts with the default."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (hard, hard))


def relay_cpu(pids: list[int]) -> tuple[float, float]:
    """User and system seconds of all the relay's processes."""
    times = [process_cpu(pid) for pid in pids]
    return sum(user for user, _ in times), sum(system for _, system in times)


# -- driver ---------------------------------------------------------------------------------

def _port_ranges(max_calls: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Relay and browser port ranges below the ephemeral range (port-0 sockets live there),
    at a random offset so concurrent runs rarely probe the same ports."""
    relay_size = 6 * max_calls + 200  # ICE port + RTP/RTCP pair per call, with slack
    browser_size = 2 * max_calls + 100
    base = random.randrange(10000, 32000 - relay_size - browser_size, 2)
    return (base, base + relay_size), (base + relay_size, base + relay_size + browser_size)


class _SingleProcess:
    """A relay that reports one pid (rtpengine) as RelayUnderTest."""

    def __init__(self, relay: Any) -> None:
        self._relay = relay
        self.name = relay.name
        self.bridge = relay.bridge
        self.start = relay.start
        self.stop = relay.stop
        if hasattr(relay, "counters"):
            self.counters = relay.counters

    @property
    def pids(self) -> list[int]:
        return [self._relay.pid]


def make_relay(kind: str, relay_ports: tuple[int, int], max_calls: int,
               workers: int) -> RelayUnderTest:
    if kind == "ws2sip":
        return Ws2sipWorkers(relay_ports, max(1, workers))
    from bench.compare.rtpengine import Rtpengine  # only needed, and installed, for this

    return _SingleProcess(Rtpengine(max_calls=max_calls))


def _steps(listed: list[int], find_max: bool, transcode: bool = False) -> list[int]:
    steps = sorted({max(1, min(calls, MAX_CALLS)) for calls in listed})
    if find_max:
        calls = steps[-1]
        # A transcoded call costs tens of times a relayed one: its limit needs finer steps.
        smallest_growth = 10 if transcode else 100
        while calls < MAX_CALLS:
            calls = min(MAX_CALLS, calls + max(smallest_growth, calls // 4))
            steps.append(calls)
    return steps


async def run(args: argparse.Namespace) -> list[StepResult]:
    raise_file_limit()
    steps = _steps(args.calls, args.find_max, args.transcode)
    media = transcoding_media() if args.transcode else None
    if media is not None:
        print(f"  transcoding: {OPUS_LOOP_FRAMES} Opus frames of {BROWSER_TONE_HZ:.0f} Hz "
              f"looped ({min(map(len, media.opus_packets)) - 12}.."
              f"{max(map(len, media.opus_packets)) - 12} bytes), PCMU {PHONE_TONE_HZ:.0f} Hz; "
              f"the relay's transcoder holds {media.hold_frames} frames", flush=True)
    relay_ports, browser_ports = _port_ranges(steps[-1])
    relay = make_relay(args.relay, relay_ports, steps[-1], args.workers)
    await relay.start()
    cpus = sorted(os.sched_getaffinity(0))
    pinned = len(cpus) >= 2 and not args.no_pin and len(relay.pids) == 1
    if pinned:
        pin(relay.pids[0], cpus[0])
        os.sched_setaffinity(0, {cpus[1]})
    generator = LoadGenerator(relay, browser_ports, args.measure, media)
    counters = getattr(relay, "counters", None)
    results: list[StepResult] = []
    try:
        for calls in steps:
            await generator.grow(calls)
            if pinned:
                pin(relay.pids[0], cpus[0])  # threads a relay started since
            result = await generator.run_step(
                args.seconds, functools.partial(relay_cpu, relay.pids), counters)
            result.relay_processes = len(relay.pids)
            results.append(result)
            print(_row(result), flush=True)
            check = generator.tone_check
            if check is not None and check.capturing:
                check.capturing = False
                line, heard = check.report()
                print(line, flush=True)
                args.tone_heard = heard
            if args.find_max and not result.sustainable:
                break
    finally:
        await generator.close()
        await relay.stop()
    return results


def _percentiles(values: list[float]) -> str:
    if len(values) < 2:
        return "n/a"
    quantiles = statistics.quantiles(values, n=100)
    return f"{quantiles[49]:.0f}/{quantiles[98]:.0f}"


HEADER = (f"{'calls':>5} {'meas':>4} {'pkt/s':>7} {'relay core':>10} {'µs/pkt':>6} "
          f"{'user':>5} {'sys':>5} {'µs/s/call':>9} {'loss b>p':>8} {'loss p>b':>8} "
          f"{'relay gaps':>10} {'lat b>p µs':>11} {'lat p>b µs':>11} {'gen base':>9} "
          f"{'gen core':>8} {'machine':>7} {'load':>14}")


def _row(result: StepResult) -> str:
    per_packet = 1e6 / max(result.packets_sent, 1)
    user = result.relay_user * per_packet
    system = result.relay_system * per_packet
    per_call = (result.relay_user + result.relay_system) / result.window_seconds \
        / result.calls * 1e6
    to_phone_loss = 1 - result.to_phone.received / max(result.to_phone.sent, 1)
    to_browser_loss = 1 - result.to_browser.received / max(result.to_browser.sent, 1)
    relay_loss = result.relay_loss
    gaps = "n/a" if relay_loss is None else f"{relay_loss:.3%}"
    flag = "" if result.sustainable else "  <- over the limit"
    if not result.generator_kept_pace:
        flag += " (generator behind: burstier, lighter load than nominal)"
    duplicates = result.to_phone.duplicates + result.to_browser.duplicates
    if duplicates:
        flag += f" duplicates b>p {result.to_phone.duplicates} p>b {result.to_browser.duplicates}"
    late = f" late slots {result.late_slots}" if result.late_slots else ""
    return (f"{result.calls:>5} {result.measured_calls:>4} "
            f"{result.packets_sent / result.window_seconds:>7.0f} "
            f"{result.relay_core:>10.1%} {user + system:>6.1f} {user:>5.1f} {system:>5.1f} "
            f"{per_call:>9.0f} {to_phone_loss:>8.3%} {to_browser_loss:>8.3%} {gaps:>10} "
            f"{_percentiles(result.to_phone.latencies_us):>11} "
            f"{_percentiles(result.to_browser.latencies_us):>11} "
            f"{_percentiles(result.baseline.latencies_us):>9} "
            f"{result.generator_cpu:>8.1%} {result.busy_cores:>7.2f} "
            f"{result.load_average:>14}{flag}{late}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--relay", choices=["ws2sip", "rtpengine"], default="ws2sip")
    parser.add_argument("--calls", type=lambda text: [int(v) for v in text.split(",")],
                        default=[10, 100, 1000], help="comma-separated steps, e.g. 10,100,1000")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per step")
    parser.add_argument("--find-max", action="store_true",
                        help=f"after the steps, add calls until loss > {LOSS_LIMIT * 100:.1f} "
                             f"%% or the relay's cores saturate (at most {MAX_CALLS} calls)")
    parser.add_argument("--measure", type=int, default=100,
                        help="calls whose receive side is measured (the first set up)")
    parser.add_argument("--workers", type=int, default=0,
                        help="ws2sip: relay in N media worker processes (the gateway's "
                             "--media-workers); 0 or 1: one relay process")
    parser.add_argument("--no-pin", action="store_true",
                        help="let relay and generator share CPUs (default: one CPU each)")
    parser.add_argument("--transcode", action="store_true",
                        help="ws2sip only: the browser offers Opus only, the phone answers PCMU "
                             "only, the relay transcodes every call; transcoded directions are "
                             "measured by packet position against the send schedule (loss: "
                             "frames sent vs packets received; latency: n-th packet's arrival "
                             "minus n-th frame's send time, incl. the transcoder's measured "
                             "hold) and one call's audio is checked by FFT on both sides")
    args = parser.parse_args()
    if args.transcode and args.relay != "ws2sip":
        parser.error("--transcode needs --relay ws2sip: the rtpengine driver "
                     "(bench/compare/rtpengine.py) does not ask rtpengine to transcode")
    args.tone_heard = None
    args.seconds = max(1.0, min(args.seconds, MAX_SECONDS))
    workers = f", {args.workers} media workers" if args.relay == "ws2sip" and args.workers else ""
    print(f"relay {args.relay}{workers}, "
          f"{args.seconds:.0f} s per step after {WARMUP_SECONDS:.0f} s warm-up, "
          f"{'Opus<>PCMU transcoded' if args.transcode else 'PCMU'} 20 ms, "
          f"SRTP on the browser side; receive side measured on the first {args.measure} calls, "
          f"the others dropped by a socket filter; relay gaps = the relay's own sequence "
          f"gaps + drops + SRTP errors over all calls", flush=True)
    print("columns: relay core = relay CPU (all its processes) / wall; µs/pkt = relay CPU per "
          "packet sent to it (user, sys); µs/s/call = relay CPU per call per second; latency "
          "p50/p99 one-way incl. the generator's own delay (gen base = generator sending to "
          "itself); gen core = generator CPU / wall; machine = busy cores of the whole machine",
          flush=True)
    if args.transcode:
        print("transcoded directions: loss = frames sent in the window (less the transcoder's "
              "held ones at its end) vs packets received for them; latency = arrival of a "
              "call's n-th transcoded packet minus the send time of its n-th frame (includes "
              "the transcoder's hold, measured below: 20 ms per held frame)", flush=True)
    print(HEADER, flush=True)
    import uvloop

    uvloop.run(run(args))
    if args.tone_heard is False:
        raise SystemExit("the transcoded tone was not heard (see the tone check above)")


if __name__ == "__main__":
    main()
