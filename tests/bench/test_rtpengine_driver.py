"""bench/compare/rtpengine.py bridges a real WebRTC peer (aiortc: ICE, DTLS-SRTP, rtcp-mux) to a
plain RTP/AVP PCMU phone through a real rtpengine, and each side hears the other's tone."""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.support.audio import assert_hears
from tests.webrtc.browser_peer import BrowserPeer
from tests.webrtc.rtp_peer import RtpPeer

pytest.importorskip("bencodepy", reason="bencode.py not installed: pip install bencode.py")
pytestmark = pytest.mark.skipif(
    shutil.which("rtpengine") is None,
    reason="rtpengine not installed: apt-get install rtpengine-daemon")

# rtpengine.py imports bench/ modules by bare name (register_bench), as the bench scripts it
# runs under do; appended, so nothing in bench/ shadows a module the other tests import.
sys.path.append(str(Path(__file__).resolve().parents[2] / "bench"))

from bench.compare.rtpengine import Rtpengine, media_address  # noqa: E402

BROWSER_TONE = 440.0
PHONE_TONE = 1000.0
TONE_SECONDS = 3.0
MEDIA_TIMEOUT = 10.0


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[Rtpengine]:
    relay = Rtpengine(max_calls=2, workdir=tmp_path)
    await relay.start()
    yield relay
    await relay.stop()


async def wait_for(condition: str, check: Callable[[], bool], relay: Rtpengine) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + MEDIA_TIMEOUT
    while not check() and loop.time() < deadline:
        await asyncio.sleep(0.05)
    log = relay.log_path.read_text()[-3000:] if relay.log_path else ""
    assert check(), f"{condition} within {MEDIA_TIMEOUT} s; rtpengine log {relay.log_path}:\n{log}"


async def test_browser_and_phone_hear_each_other_through_rtpengine(relay: Rtpengine) -> None:
    browser = BrowserPeer(frequency=BROWSER_TONE, codecs=["audio/pcmu"])
    phone = await RtpPeer().start()
    try:
        answer, relay_for_phone = await relay.bridge(
            "rtpengine-driver-call", await browser.offer(), ("127.0.0.1", phone.port))

        # The browser gets a WebRTC answer: SRTP keyed by DTLS, rtpengine's ICE, rtcp-mux.
        assert " UDP/TLS/RTP/SAVPF 0" in answer
        for attribute in ("a=ice-ufrag:", "a=ice-pwd:", "a=candidate:", "a=fingerprint:",
                          "a=rtcp-mux"):
            assert attribute in answer, f"{attribute} missing from the answer:\n{answer}"
        assert "a=setup:active" in answer or "a=setup:passive" in answer, answer
        assert media_address(answer)[0] == "127.0.0.1"
        assert relay_for_phone[0] == "127.0.0.1" and relay_for_phone != media_address(answer)

        await browser.accept_answer(answer)
        phone.target = relay_for_phone
        phone_playing = asyncio.create_task(phone.play_encoded_tone(
            PHONE_TONE, TONE_SECONDS, "PCMU", 0))
        await wait_for("the phone received 2 s of the browser's PCMU",
                       lambda: sum(p.payload_type == 0 for p in phone.packets) >= 100, relay)
        await phone_playing
        await wait_for("the browser received the phone's tone",
                       lambda: len(browser.heard()) >= browser.rate, relay)

        heard_by_phone, rate = phone.heard_decoded("PCMU", 0)
        assert_hears(heard_by_phone, rate, BROWSER_TONE)
        assert_hears(browser.heard(), browser.rate, PHONE_TONE)
        # Plain RTP from one rtpengine port: no DTLS or STUN reached the phone.
        assert phone.sources == {relay_for_phone}
        counters = await relay.counters()
        assert counters["packets"] >= len(phone.packets), counters
    finally:
        await browser.close()
        await phone.close()
