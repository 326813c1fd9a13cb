"""RFC 4733 events cross the relay both ways with payload types (and clocks) mapped.

aiortc has no DTMF sender and drops payload types it does not decode, so the "browser" side
injects and captures event packets at its own (real) SRTP transport, after the offer gained
the telephone-event lines Chrome would put there."""

from __future__ import annotations

import asyncio
import secrets
import struct

import pytest

from tests.webrtc.browser_peer import BrowserPeer
from tests.webrtc.rtp_peer import RtpPeer
from tests.webrtc.sdp_samples import asterisk_sdp
from tests.webrtc.test_media_relay import target_of, wait_for
from webrtc import MediaRelay

DIGITS = [1, 9, 11]  # "1", "9", "#"


def with_events(offer: str, payload_type: int, rate: int) -> str:
    head, _, rest = offer.partition("m=audio ")
    media_line, _, tail = rest.partition("\r\n")
    return (f"{head}m=audio {media_line} {payload_type}\r\n"
            f"a=rtpmap:{payload_type} telephone-event/{rate}\r\n"
            f"a=fmtp:{payload_type} 0-16\r\n{tail}")


class BrowserEvents:
    """Reads and writes RFC 4733 packets on the browser's DTLS-SRTP transport."""

    def __init__(self, browser: BrowserPeer) -> None:
        self.transport = browser.transceiver.receiver.transport
        self.received: list[tuple[int, int, int, int]] = []  # pt, event, end flag, duration
        original = self.transport._handle_rtp_data

        async def capture(data: bytes, arrival_time_ms: int) -> None:
            payload_type = data[1] & 0x7F
            if len(data) >= 16 and payload_type not in (0, 8, 9, 96, 111):
                event, flags, duration = struct.unpack_from("!BBH", data, 12)
                self.received.append((payload_type, event, flags >> 7, duration))
            await original(data, arrival_time_ms=arrival_time_ms)

        self.transport._handle_rtp_data = capture  # type: ignore[method-assign]  # a tap
        self.ssrc = secrets.randbits(32)
        self.sequence = 1000
        self.timestamp = 5000

    async def send(self, event: int, payload_type: int, step: int, packets: int = 4) -> None:
        start = self.timestamp
        for index in range(packets):
            end = index == packets - 1
            payload = struct.pack("!BBH", event, (0x80 if end else 0) | 10, (index + 1) * step)
            header = struct.pack("!BBHII", 0x80, (0x80 if index == 0 else 0) | payload_type,
                                 self.sequence, start, self.ssrc)
            self.sequence += 1
            await self.transport._send_rtp(header + payload)
            await asyncio.sleep(0.02)
        self.timestamp += packets * step


def events_seen(received: list[tuple[int, int, int, int]]) -> list[int]:
    """Distinct events in order (each is sent as several updates)."""
    seen: list[int] = []
    for _, event, _, _ in received:
        if not seen or seen[-1] != event:
            seen.append(event)
    return seen


@pytest.mark.parametrize(
    ("codecs", "browser_events", "events_rate", "step"),
    [
        (None, 126, 8000, 160),               # PCMU relayed, telephone-event/8000 126 <-> 101
        (["audio/opus"], 110, 48000, 960),    # Opus transcoded, telephone-event/48000 <-> /8000
    ],
)
async def test_dtmf_events_arrive_as_sent_both_ways(
    relay: MediaRelay, phone: RtpPeer, codecs: list[str] | None, browser_events: int,
    events_rate: int, step: int,
) -> None:
    browser = BrowserPeer(frequency=440.0, codecs=codecs)
    try:
        session = relay.create_session("dtmf")
        offer = with_events(await browser.offer(), browser_events, events_rate)
        plain_offer = await session.process_offer(offer, "webrtc")
        assert "telephone-event/8000" in plain_offer
        phone.target = target_of(plain_offer)
        answer = await session.process_answer(asterisk_sdp(phone.port, "0 101"), "plain")
        assert f"a=rtpmap:{browser_events} telephone-event/{events_rate}" in answer
        await browser.accept_answer(answer)
        events = BrowserEvents(browser)
        await wait_for(lambda: session.stats()["webrtc_to_plain_packets"] > 0)

        for digit in DIGITS:
            await events.send(digit, browser_events, step)
        for digit in DIGITS:
            await phone.send_dtmf(digit, payload_type=101)
        await wait_for(lambda: len(events_seen(events.received)) >= len(DIGITS))

        to_phone = [p for p in phone.packets if p.payload_type == 101]
        phone_events = [struct.unpack_from("!BBH", p.payload) for p in to_phone]
        assert events_seen([(101, e, f >> 7, d) for e, f, d in phone_events]) == DIGITS
        # Durations arrive in the phone's 8 kHz clock whatever the browser's clock was.
        assert max(d for _, _, d in phone_events) == 4 * 160
        assert events_seen(events.received) == DIGITS
        assert {pt for pt, _, _, _ in events.received} == {browser_events}
        assert max(d for _, _, _, d in events.received) == 5 * step
        assert any(end for _, _, end, _ in events.received)
    finally:
        await browser.close()
