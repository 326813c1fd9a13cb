"""The relay in worker processes (webrtc.MediaWorkers): a real aiortc browser and a real RTP
phone hear each other through it, errors and failures cross the process boundary, and dead,
stuck or stopped workers leave neither hangs nor processes nor ports behind."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import webrtc.workers
from tests.support.audio import assert_hears
from tests.webrtc.browser_peer import BrowserPeer
from tests.webrtc.conftest import assert_ports_free
from tests.webrtc.rtp_peer import RtpPeer
from tests.webrtc.sdp_samples import asterisk_sdp
from tests.webrtc.test_media_relay import target_of, wait_for
from webrtc import MediaError, MediaRelay, MediaWorkers, RemoteSession
from webrtc.sdp import parse

PHONE_TONE = 1000.0
BROWSER_TONE = 440.0
WORKERS = 2


@pytest.fixture
async def workers() -> AsyncIterator[MediaWorkers]:
    base = random.randrange(30000, 60000, 2)
    relay = MediaWorkers(WORKERS, bind_host="127.0.0.1", port_min=base, port_max=base + 400)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.close()


def process_exists(pid: int) -> bool:
    """Running, not a zombie awaiting its parent's wait()."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


answer_of: dict[str, str] = {}  # session id -> the WebRTC answer it gave the browser


async def connect(session: RemoteSession, browser: BrowserPeer, phone: RtpPeer) -> None:
    plain_offer = await session.process_offer(await browser.offer(), "webrtc")
    phone.target = target_of(plain_offer)
    answer = await session.process_answer(asterisk_sdp(phone.port, "0 101"), "plain")
    assert "a=setup:active" in answer
    answer_of[session.session_id] = answer
    await browser.accept_answer(answer)


async def relayed_from_browser(session: RemoteSession, seconds: float = 10.0) -> None:
    """ICE and DTLS are up: the worker relays the browser's packets."""
    for _ in range(int(seconds / 0.05)):
        if (await session.stats())["webrtc_to_plain_packets"] > 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no packet relayed from the browser in {seconds} s")


async def test_browser_and_phone_hear_each_other_through_a_worker(
    workers: MediaWorkers, browser: BrowserPeer, phone: RtpPeer
) -> None:
    session = workers.create_session("call-1")
    await connect(session, browser, phone)
    await relayed_from_browser(session)
    await phone.play_tone(PHONE_TONE, 2.0)
    assert_hears(phone.heard(0), 8000, BROWSER_TONE)
    assert_hears(browser.heard(), browser.rate, PHONE_TONE)
    stats = await session.stats()
    assert stats["plain_to_webrtc_packets"] >= 90 and stats["webrtc_to_plain_packets"] > 0
    totals = await workers.stats()
    assert totals["plain_to_webrtc_packets"] >= stats["plain_to_webrtc_packets"]

    # Forged and oversized "SRTP" at the ICE port: refused by libsrtp, counted, not relayed.
    ice_port = parse(answer_of[session.session_id]).first("audio").port  # type: ignore[union-attr]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as forger:
        for packet in (b"\x80\x00" + bytes(170), b"\x80\x00" + bytes(1600)):
            forger.sendto(packet, ("127.0.0.1", ice_port))
    for _ in range(100):
        after = await session.stats()
        if after["srtp_errors"] == 2:
            break
        await asyncio.sleep(0.02)
    assert after["srtp_errors"] == 2

    ports = await workers.open_ports()
    assert len(ports) == 3  # ICE, RTP, RTCP, all held by the worker, none by this process
    await session.close()
    assert workers.active_sessions == 0 and await workers.open_ports() == frozenset()
    assert_ports_free(set(ports))


async def test_phone_offers_browser_answers_through_a_worker(
    workers: MediaWorkers, browser: BrowserPeer, phone: RtpPeer
) -> None:
    session = workers.create_session("call-2")
    webrtc_offer = await session.process_offer(asterisk_sdp(phone.port, "0 8 101"), "plain")
    assert "UDP/TLS/RTP/SAVPF" in webrtc_offer and "a=setup:actpass" in webrtc_offer
    phone.target = target_of(await session.process_answer(await browser.answer(webrtc_offer),
                                                          "webrtc"))
    await relayed_from_browser(session)
    await phone.play_tone(PHONE_TONE, 2.0)
    assert_hears(phone.heard(0), 8000, BROWSER_TONE)
    assert_hears(browser.heard(), browser.rate, PHONE_TONE)


async def test_sessions_are_spread_over_the_workers_and_their_port_slices(
    workers: MediaWorkers, phone: RtpPeer
) -> None:
    sessions = [workers.create_session(f"spread-{n}") for n in range(4)]
    offers = await asyncio.gather(*(s.process_offer(asterisk_sdp(phone.port, "0"), "plain")
                                    for s in sessions))
    pids = [s.worker_pid for s in sessions]
    assert set(pids) == set(workers.pids) and len(set(pids)) == WORKERS
    assert pids.count(pids[0]) == len(sessions) // WORKERS  # least loaded: two each
    ports_by_worker: dict[int | None, set[int]] = {}
    for session, offer in zip(sessions, offers, strict=True):
        media = parse(offer).first("audio")
        assert media is not None
        ports_by_worker.setdefault(session.worker_pid, set()).add(media.port)
    low, high = sorted(ports_by_worker.values(), key=min)
    assert max(low) < min(high)  # disjoint slices of the range
    for session in sessions:
        await session.close()
    assert await workers.open_ports() == frozenset()


async def test_media_errors_keep_their_sip_status_across_the_process_boundary(
    workers: MediaWorkers, browser: BrowserPeer
) -> None:
    no_fingerprint = "\r\n".join(line for line in (await browser.offer()).split("\r\n")
                                 if not line.startswith("a=fingerprint"))
    in_process = MediaRelay(bind_host="127.0.0.1", port_min=40000, port_max=40100)
    with pytest.raises(MediaError) as local:
        await in_process.create_session("x").process_offer(no_fingerprint, "webrtc")
    await in_process.close()
    session = workers.create_session("bad")
    with pytest.raises(MediaError) as remote:
        await session.process_offer(no_fingerprint, "webrtc")
    assert (remote.value.status, remote.value.reason) == (local.value.status, local.value.reason)
    assert remote.value.status == 488
    with pytest.raises(MediaError) as unanswered:
        await session.process_answer(asterisk_sdp(4000, "0"), "plain")
    assert unanswered.value.status == 500 and "without an offer" in unanswered.value.reason


async def test_a_dtls_failure_in_the_worker_reaches_the_session(
    workers: MediaWorkers, browser: BrowserPeer, phone: RtpPeer
) -> None:
    offer = await browser.offer()
    real = parse(offer).first("audio").fingerprints[0].value  # type: ignore[union-attr]
    forged = ":".join(reversed(real.split(":")))
    session = workers.create_session("forged")
    phone.target = target_of(await session.process_offer(offer.replace(real, forged), "webrtc"))
    await browser.accept_answer(
        await session.process_answer(asterisk_sdp(phone.port, "0"), "plain"))
    await wait_for(lambda: session.failure is not None)
    assert "fingerprint mismatch" in session.failure  # type: ignore[operator]


async def test_a_killed_worker_fails_its_sessions_and_is_replaced(
    workers: MediaWorkers, browser: BrowserPeer, phone: RtpPeer
) -> None:
    doomed = workers.create_session("doomed")
    await doomed.process_offer(asterisk_sdp(phone.port, "0"), "plain")
    victim = doomed.worker_pid
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    await wait_for(lambda: doomed.failure is not None)
    assert "exited" in doomed.failure  # type: ignore[operator]
    with pytest.raises(MediaError) as gone:
        await doomed.process_answer(await browser.answer(
            await _offer_from(workers, phone)), "webrtc")
    assert gone.value.status == 503
    await doomed.close()  # no worker to ask: closes locally without waiting
    await wait_for(lambda: victim not in workers.pids and len(workers.pids) == WORKERS, 30.0)
    assert not process_exists(victim)
    # Every worker (the survivor and the replacement) takes calls that work.
    sessions = [workers.create_session(f"after-{n}") for n in range(WORKERS)]
    assert {s.worker_pid for s in sessions} == set(workers.pids)
    for session in sessions:
        await session.process_offer(asterisk_sdp(phone.port, "0"), "plain")
        await session.close()


async def _offer_from(workers: MediaWorkers, phone: RtpPeer) -> str:
    probe = workers.create_session(f"probe-{random.random()}")
    offer = await probe.process_offer(asterisk_sdp(phone.port, "0"), "plain")
    await probe.close()
    return offer


async def test_a_stuck_worker_times_out_instead_of_hanging_and_is_replaced(
    workers: MediaWorkers, phone: RtpPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webrtc.workers, "COMMAND_TIMEOUT", 1.0)
    session = workers.create_session("stuck")
    await session.process_offer(asterisk_sdp(phone.port, "0"), "plain")
    stuck = session.worker_pid
    assert stuck is not None
    os.kill(stuck, signal.SIGSTOP)
    with pytest.raises(MediaError) as stalled:
        await asyncio.wait_for(session.process_offer(asterisk_sdp(phone.port, "0"), "plain"),
                               5.0)
    assert stalled.value.status == 503 and "stalled" in stalled.value.reason
    await wait_for(lambda: stuck not in workers.pids and len(workers.pids) == WORKERS, 30.0)
    assert not process_exists(stuck)


async def test_close_stops_every_worker_process_and_frees_their_ports(phone: RtpPeer) -> None:
    base = random.randrange(30000, 60000, 2)
    relay = MediaWorkers(WORKERS, bind_host="127.0.0.1", port_min=base, port_max=base + 400)
    await relay.start()
    try:
        pids = relay.pids
        assert len(pids) == WORKERS and all(process_exists(pid) for pid in pids)
        for n in range(WORKERS):  # sessions left open at shutdown, as in a stop mid-call
            await relay.create_session(f"open-{n}").process_offer(
                asterisk_sdp(phone.port, "0"), "plain")
        ports = await relay.open_ports()
        assert len(ports) == 3 * WORKERS  # each: RTP/RTCP pair towards the phone, ICE port
    finally:
        await relay.close()
    assert not any(process_exists(pid) for pid in pids)
    assert_ports_free(set(ports))
