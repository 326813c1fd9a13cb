"""Issue 17: transfer and a second call, with bare JsSIP pages in Chromium and pjsua2 phones.

Blind transfer (REFER) and attended transfer (REFER with Replaces, RFC 3891) between browsers
and phones, through a trunk to a PBX (pjsua2 plays it), and call waiting with hold and swap.
Every new pair must hear each other's tone both ways; the transferor must receive the
NOTIFYs' sipfrag progress; and the gateway's anchored media sessions must come back to what
the calls still up need (an old anchor left behind is a leak).

One gateway, two browsers and three phones serve the whole module: starting them is most of
the cost of a media test.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.fixtures.gateway import GatewayProcess, start_gateway
from tests.support.audio import assert_hears, read_wav_pcm
from tests.support.browser import StaticServer, launch_browser, write_browser_tone
from tests.support.healthz import gateway_metrics_url, metric_value
from tests.support.jssip_page import JssipPage
from tests.support.pjsua_phone import PjsuaPhone
from tests.support.ports import free_port

pytestmark = pytest.mark.asyncio(loop_scope="module")

DOMAIN = "example.test"
ALICE_TONE = 440.0  # browser
CAROL_TONE = 660.0  # browser
BOB_TONE = 1000.0  # phone
DAVE_TONE = 1500.0  # phone
PBX_TONE = 1800.0  # the PBX's extension behind the trunk
TOLERANCE_HZ = 15.0
LISTEN_MS = 1500
SETTLE_SECONDS = 0.3  # a recording's first moments may be silent
PBX_NUMBER = "9200"  # dialled by users; the trunk strips the 9
STATE_TIMEOUT = 20.0
MEDIA_SESSIONS = "ws2sip_media_sessions"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site() -> AsyncIterator[StaticServer]:
    async with StaticServer() as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pbx_port() -> int:
    return free_port(socket.SOCK_DGRAM)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(
    tmp_path_factory: pytest.TempPathFactory, site: StaticServer, pbx_port: int,
) -> AsyncIterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("transfer-gateway")
    config = workdir / "trunk.toml"
    config.write_text(
        "[[trunks]]\n"
        'name = "pbx"\n'
        f'address = "127.0.0.1:{pbx_port}"\n'
        'match = "9[0-9]{3,}"\n'
        'strip_prefix = "9"\n'
        f'trusted_sources = ["udp:127.0.0.1:{pbx_port}"]\n'
    )
    users = {name: secrets.token_urlsafe(9) for name in ("alice", "bob", "carol", "dave")}
    gateway = await start_gateway(
        workdir, domain=DOMAIN, users=users, transports=("udp", "ws"),
        extra_args=["--allowed-origin", site.base_url, "--config", str(config)],
    )
    try:
        yield gateway
    finally:
        await gateway.stop()


async def _browser_page(name: str, tone: float, gateway: GatewayProcess, site: StaticServer,
                        workdir: Path) -> AsyncIterator[JssipPage]:
    wav = write_browser_tone(workdir / f"{name}.wav", tone)
    async with launch_browser(wav, name=f"transfer-{name}") as browser:
        yield await JssipPage.open(browser, site, gateway.ws_url, name, gateway.users[name],
                                   gateway.domain)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def alice(gateway: GatewayProcess, site: StaticServer,
                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[JssipPage]:
    async for page in _browser_page("alice", ALICE_TONE, gateway, site,
                                    tmp_path_factory.mktemp("alice")):
        yield page


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def carol(gateway: GatewayProcess, site: StaticServer,
                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[JssipPage]:
    async for page in _browser_page("carol", CAROL_TONE, gateway, site,
                                    tmp_path_factory.mktemp("carol")):
        yield page


async def _phone(name: str, tone: float, gateway: GatewayProcess) -> AsyncIterator[PjsuaPhone]:
    phone = await PjsuaPhone.start(f"transfer-{name}-{uuid.uuid4().hex[:6]}")
    try:
        registered = await phone.register("127.0.0.1", gateway.port("udp"), name,
                                          gateway.users[name], gateway.domain)
        assert registered["code"] == 200, registered
        await phone.play_tone(tone)
        await phone.set_auto_answer(200)
        yield phone
    finally:
        await phone.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bob(gateway: GatewayProcess) -> AsyncIterator[PjsuaPhone]:
    async for phone in _phone("bob", BOB_TONE, gateway):
        yield phone


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def dave(gateway: GatewayProcess) -> AsyncIterator[PjsuaPhone]:
    async for phone in _phone("dave", DAVE_TONE, gateway):
        yield phone


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pbx(gateway: GatewayProcess, pbx_port: int) -> AsyncIterator[PjsuaPhone]:
    """The PBX behind the trunk: answers any extension, and sends calls for the gateway's
    users (a transferred call) back through the gateway, from its trusted address."""
    phone = await PjsuaPhone.start(f"transfer-pbx-{uuid.uuid4().hex[:6]}", sip_port=pbx_port,
                                   auto_answer=200)
    try:
        await phone.route_via("127.0.0.1", gateway.port("udp"))
        await phone.play_tone(PBX_TONE)
        yield phone
    finally:
        await phone.stop()


@pytest_asyncio.fixture(autouse=True, loop_scope="module")
async def fresh_events(alice: JssipPage, carol: JssipPage, bob: PjsuaPhone, dave: PjsuaPhone,
                       pbx: PjsuaPhone) -> None:
    """Each test waits only for what happens in it, not for a shared peer's older events."""
    for page in (alice, carol):
        await page.forget_events()
    for phone in (bob, dave, pbx):
        phone.forget_events()


# --- checks ------------------------------------------------------------------------------------

async def media_sessions(gateway: GatewayProcess) -> int:
    return int(await metric_value(gateway_metrics_url(gateway), MEDIA_SESSIONS))


async def wait_media_sessions(gateway: GatewayProcess, expected: int,
                              timeout: float = STATE_TIMEOUT) -> None:
    """The anchored calls settle to `expected` (a released anchor closes asynchronously)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (count := await media_sessions(gateway)) != expected:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{count} anchored media sessions, expected {expected}")
        await asyncio.sleep(0.2)


async def phone_hears(phone: PjsuaPhone, recording: Path, tone: float,
                      listening: asyncio.Future[object] | None = None) -> None:
    """Record while `listening` runs (or LISTEN_MS), then check the tone."""
    await phone.record(recording)
    if listening is not None:
        await listening
    else:
        await asyncio.sleep(LISTEN_MS / 1000)
    await phone.stop_recording()
    samples, rate = read_wav_pcm(recording)
    assert_hears(samples[int(rate * SETTLE_SECONDS):], rate, tone)


async def browser_and_phone_hear_each_other(
    page: JssipPage, index: int, page_tone: float, phone: PjsuaPhone, phone_tone: float,
    recording: Path,
) -> None:
    await phone.record(recording)
    heard = await page.heard(index, LISTEN_MS)
    await phone.stop_recording()
    assert heard == pytest.approx(phone_tone, abs=TOLERANCE_HZ), await page.stats(index)
    samples, rate = read_wav_pcm(recording)
    assert_hears(samples[int(rate * SETTLE_SECONDS):], rate, page_tone)


async def phones_hear_each_other(first: PjsuaPhone, first_tone: float, second: PjsuaPhone,
                                 second_tone: float, workdir: Path) -> None:
    await asyncio.gather(first.record(workdir / "first.wav"),
                         second.record(workdir / "second.wav"))
    await asyncio.sleep(LISTEN_MS / 1000)
    await asyncio.gather(first.stop_recording(), second.stop_recording())
    for path, tone in ((workdir / "first.wav", second_tone), (workdir / "second.wav", first_tone)):
        samples, rate = read_wav_pcm(path)
        assert_hears(samples[int(rate * SETTLE_SECONDS):], rate, tone)


async def browsers_hear_each_other(first: JssipPage, first_index: int, first_tone: float,
                                   second: JssipPage, second_index: int,
                                   second_tone: float) -> None:
    heard = await asyncio.gather(first.heard(first_index, LISTEN_MS),
                                 second.heard(second_index, LISTEN_MS))
    assert heard[0] == pytest.approx(second_tone, abs=TOLERANCE_HZ), heard
    assert heard[1] == pytest.approx(first_tone, abs=TOLERANCE_HZ), heard


async def wait_disconnected(phone: PjsuaPhone, call: int) -> None:
    await phone.wait_for("call_state", STATE_TIMEOUT, call=call, state="DISCONNECTED")


def sipfrag_progress(lines: list[str]) -> None:
    """Provisional lines first (if any), the final one last: 200 OK."""
    assert lines and lines[-1].startswith("SIP/2.0 200"), lines
    assert all(line.startswith("SIP/2.0 1") for line in lines[:-1]), lines


# --- blind transfer ----------------------------------------------------------------------------

async def test_browser_transfers_a_phone_to_another_browser(
    gateway: GatewayProcess, alice: JssipPage, carol: JssipPage, bob: PjsuaPhone,
    tmp_path: Path,
) -> None:
    first = await alice.call(f"sip:bob@{DOMAIN}")
    await alice.wait_event("confirmed", index=first)
    bob_first = (await bob.wait_for("call_state", STATE_TIMEOUT, state="CONFIRMED"))["call"]
    assert await media_sessions(gateway) == 1

    referral = await alice.refer(first, f"sip:carol@{DOMAIN}")
    request = await bob.wait_for("transfer_request", STATE_TIMEOUT)
    assert request["dst_uri"].startswith(f"<sip:carol@{DOMAIN}") or \
        request["dst_uri"].startswith(f"sip:carol@{DOMAIN}"), request
    incoming = await carol.wait_event("call", originator="remote")
    assert "bob" in incoming["from"], incoming
    await carol.answer(incoming["index"])
    await carol.wait_event("confirmed", index=incoming["index"])
    await alice.wait_event("transferred", number=referral)
    sipfrag_progress(await alice.notifies(referral))

    await alice.hang_up(first)
    await wait_disconnected(bob, bob_first)
    await wait_media_sessions(gateway, 1)  # alice–bob's anchor gone, bob–carol's up
    await browser_and_phone_hear_each_other(carol, incoming["index"], CAROL_TONE, bob,
                                            BOB_TONE, tmp_path / "bob-hears-carol.wav")
    await carol.hang_up(incoming["index"])
    await wait_media_sessions(gateway, 0)


async def test_phone_transfers_a_browser_to_another_phone(
    gateway: GatewayProcess, alice: JssipPage, bob: PjsuaPhone, dave: PjsuaPhone,
    tmp_path: Path,
) -> None:
    bob_call = await bob.call(f"sip:alice@{DOMAIN}")
    incoming = await alice.wait_event("call", originator="remote")
    await alice.answer(incoming["index"])
    await bob.wait_for("call_state", STATE_TIMEOUT, call=bob_call, state="CONFIRMED")

    await bob.xfer(f"sip:dave@{DOMAIN}", call=bob_call)
    refer = await alice.wait_event("refer", index=incoming["index"])
    assert refer["target"] == f"sip:dave@{DOMAIN}", refer
    transferred = await alice.wait_event("confirmed", index=incoming["index"] + 1)
    statuses = []
    while True:
        status = await bob.wait_for("transfer_status", STATE_TIMEOUT, call=bob_call)
        statuses.append((status["code"], status["reason"]))
        if status["final"]:
            break
    assert statuses[-1] == (200, "OK"), statuses
    assert all(100 <= code < 200 for code, _ in statuses[:-1]), statuses

    await bob.hangup(bob_call)
    await alice.wait_event("ended", index=incoming["index"])
    await wait_media_sessions(gateway, 1)
    await browser_and_phone_hear_each_other(alice, transferred["index"], ALICE_TONE, dave,
                                            DAVE_TONE, tmp_path / "dave-hears-alice.wav")
    await alice.hang_up(transferred["index"])
    await wait_media_sessions(gateway, 0)


async def test_browser_transfers_a_pbx_call_to_another_browser_through_the_trunk(
    gateway: GatewayProcess, alice: JssipPage, carol: JssipPage, pbx: PjsuaPhone,
    tmp_path: Path,
) -> None:
    first = await alice.call(f"sip:{PBX_NUMBER}@{DOMAIN}")
    await alice.wait_event("confirmed", index=first)
    pbx_first = (await pbx.wait_for("call_state", STATE_TIMEOUT, state="CONFIRMED"))["call"]

    # Toll fraud by transfer: the PBX would dial a REFER's target with its own rights. One the
    # user could not call is refused before it reaches the PBX.
    abroad = await alice.refer(first, "sip:0044123456@elsewhere.example")
    refused = await alice.wait_event("referFailed", number=abroad)
    assert refused["status"] == 403, refused
    assert not pbx.unclaimed_events("transfer_request")

    referral = await alice.refer(first, f"sip:carol@{DOMAIN}")
    await pbx.wait_for("transfer_request", STATE_TIMEOUT, call=pbx_first)
    incoming = await carol.wait_event("call", originator="remote")
    await carol.answer(incoming["index"])
    await carol.wait_event("confirmed", index=incoming["index"])
    await alice.wait_event("transferred", number=referral)
    sipfrag_progress(await alice.notifies(referral))

    await alice.hang_up(first)
    await wait_disconnected(pbx, pbx_first)
    await wait_media_sessions(gateway, 1)
    await browser_and_phone_hear_each_other(carol, incoming["index"], CAROL_TONE, pbx,
                                            PBX_TONE, tmp_path / "pbx-hears-carol.wav")
    await carol.hang_up(incoming["index"])
    await wait_media_sessions(gateway, 0)


# --- attended transfer -------------------------------------------------------------------------

async def test_browser_consults_a_phone_then_transfers_the_first_phone_to_it(
    gateway: GatewayProcess, alice: JssipPage, bob: PjsuaPhone, dave: PjsuaPhone,
    tmp_path: Path,
) -> None:
    first = await alice.call(f"sip:bob@{DOMAIN}")
    await alice.wait_event("confirmed", index=first)
    bob_first = (await bob.wait_for("call_state", STATE_TIMEOUT, state="CONFIRMED"))["call"]
    await alice.hold(first)
    await alice.wait_event("hold", index=first, originator="local")
    consult = await alice.call(f"sip:dave@{DOMAIN}")
    await alice.wait_event("confirmed", index=consult)
    dave_consult = (await dave.wait_for("call_state", STATE_TIMEOUT, state="CONFIRMED"))["call"]
    assert await media_sessions(gateway) == 2

    # Refer-To names dave's phone by its own Contact (as SIP.js does), not by its user: only
    # the gateway's record of the consultation routes bob's INVITE with Replaces there.
    referral = await alice.refer(first, None, replaces=consult)
    request = await bob.wait_for("transfer_request", STATE_TIMEOUT, call=bob_first)
    assert f"sip:dave@127.0.0.1:{dave.sip_port}" in request["dst_uri"], request
    replaced = await dave.wait_for("call_replaced", STATE_TIMEOUT, call=dave_consult)
    await alice.wait_event("transferred", number=referral)
    sipfrag_progress(await alice.notifies(referral))
    # dave's phone ends the replaced consultation itself (BYE to alice).
    await alice.wait_event("ended", index=consult, originator="remote")
    await alice.hang_up(first)
    await wait_disconnected(bob, bob_first)

    await phones_hear_each_other(bob, BOB_TONE, dave, DAVE_TONE, tmp_path)
    # Phone to phone: nothing left to anchor, both of alice's anchors are gone.
    await wait_media_sessions(gateway, 0)
    await dave.hangup(replaced["new_call"])
    await bob.wait_for("call_state", STATE_TIMEOUT, state="DISCONNECTED")


async def test_phone_consults_a_browser_then_transfers_the_first_browser_to_it(
    gateway: GatewayProcess, alice: JssipPage, carol: JssipPage, bob: PjsuaPhone,
) -> None:
    bob_first = await bob.call(f"sip:alice@{DOMAIN}")
    alice_call = (await alice.wait_event("call", originator="remote"))["index"]
    await alice.answer(alice_call)
    await bob.wait_for("call_state", STATE_TIMEOUT, call=bob_first, state="CONFIRMED")
    await bob.hold(bob_first)
    await alice.wait_event("hold", index=alice_call, originator="remote")
    bob_consult = await bob.call(f"sip:carol@{DOMAIN}")
    carol_consult = (await carol.wait_event("call", originator="remote"))["index"]
    await carol.answer(carol_consult)
    await bob.wait_for("call_state", STATE_TIMEOUT, call=bob_consult, state="CONFIRMED")

    await bob.xfer_replaces(bob_first, bob_consult)
    refer = await alice.wait_event("refer", index=alice_call)
    assert refer["target"].startswith(f"sip:carol@{DOMAIN}?") and "Replaces=" in \
        refer["target"], refer
    replacing = await carol.wait_event("call", originator="remote", replacing=True)
    alice_new = alice_call + 1
    await alice.wait_event("confirmed", index=alice_new)
    await carol.wait_event("confirmed", index=replacing["index"])
    status = await bob.wait_for("transfer_status", STATE_TIMEOUT, call=bob_first, final=True)
    assert (status["code"], status["reason"]) == (200, "OK"), status
    # carol's JsSIP ends the replaced consultation (BYE to bob); bob ends the first call.
    await bob.wait_for("call_state", STATE_TIMEOUT, call=bob_consult, state="DISCONNECTED")
    await bob.hangup(bob_first)
    await alice.wait_event("ended", index=alice_call)

    await browsers_hear_each_other(alice, alice_new, ALICE_TONE, carol, replacing["index"],
                                   CAROL_TONE)
    await wait_media_sessions(gateway, 0)  # browser to browser: nothing anchored
    await alice.hang_up(alice_new)
    await carol.wait_event("ended", index=replacing["index"])


# --- two calls at once -------------------------------------------------------------------------

async def test_browser_holds_a_call_answers_a_second_and_swaps_back(
    gateway: GatewayProcess, alice: JssipPage, bob: PjsuaPhone, dave: PjsuaPhone,
    tmp_path: Path,
) -> None:
    bob_call = await bob.call(f"sip:alice@{DOMAIN}")
    with_bob = (await alice.wait_event("call", originator="remote"))["index"]
    await alice.answer(with_bob)
    await bob.wait_for("call_state", STATE_TIMEOUT, call=bob_call, state="CONFIRMED")

    dave_call = await dave.call(f"sip:alice@{DOMAIN}")
    with_dave = (await alice.wait_event("call", originator="remote"))["index"]  # waiting
    await alice.hold(with_bob)
    await alice.wait_event("hold", index=with_bob, originator="local")
    await alice.answer(with_dave)
    await dave.wait_for("call_state", STATE_TIMEOUT, call=dave_call, state="CONFIRMED")
    assert await media_sessions(gateway) == 2
    await browser_and_phone_hear_each_other(alice, with_dave, ALICE_TONE, dave, DAVE_TONE,
                                            tmp_path / "dave-1.wav")

    await alice.hold(with_dave)
    await alice.wait_event("hold", index=with_dave, originator="local")
    bob.forget_events()
    await alice.unhold(with_bob)
    await alice.wait_event("unhold", index=with_bob, originator="local")
    # JsSIP says "unhold" as it sends the re-INVITE; the phone's stream is back once answered.
    await bob.wait_for("media_active", STATE_TIMEOUT, call=bob_call)
    await browser_and_phone_hear_each_other(alice, with_bob, ALICE_TONE, bob, BOB_TONE,
                                            tmp_path / "bob.wav")

    await alice.hang_up(with_bob)
    await bob.wait_for("call_state", STATE_TIMEOUT, call=bob_call, state="DISCONNECTED")
    await wait_media_sessions(gateway, 1)
    dave.forget_events()
    await alice.unhold(with_dave)
    await alice.wait_event("unhold", index=with_dave, originator="local")
    await dave.wait_for("media_active", STATE_TIMEOUT, call=dave_call)
    await browser_and_phone_hear_each_other(alice, with_dave, ALICE_TONE, dave, DAVE_TONE,
                                            tmp_path / "dave-2.wav")
    await dave.hangup(dave_call)
    await alice.wait_event("ended", index=with_dave)
    await wait_media_sessions(gateway, 0)
