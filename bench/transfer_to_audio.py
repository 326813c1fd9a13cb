"""Transfer-to-audio: how long from a blind transfer's REFER until the new pair hears each
other, and which part of that the gateway takes (issue 17; measured as bench/dial_to_audio.py
measures dial → audio).

A real gateway, two headless Chromium tabs with a bare JsSIP phone (tests/js/jssip_phone.mjs):
alice, the transferor, and carol, the transfer target (answers at once), and a pjsua2 phone,
bob (UDP, answers at once, plays PHONE_TONE). Per run alice calls bob, then REFERs him to carol:

    refer      alice sends the REFER                         (alice's page, Date.now())
    bob REFER  the REFER reaches bob                         (bob's pjsip log)
    bob INVITE bob sends his INVITE to carol (the first, before the digest challenge)
    carol in   carol's JsSIP receives the INVITE             (carol's page)
    carol 200  carol's JsSIP sends its 200 OK
    bob 200    the 200 OK reaches bob
    heard      carol's AnalyserNode first finds bob's tone on the new call

gateway share = (bob REFER - refer) + (carol in - bob INVITE) + (bob 200 - carol 200): the
REFER relayed, the new INVITE's digest round trip, authentication, routing and media anchoring,
and the answer's SDP rewrite; the phone's and the browsers' own times are left out. After each
run bob's recording must hold carol's tone (both ways, not timed).

    python bench/transfer_to_audio.py --runs 6
"""

from __future__ import annotations

import argparse
import asyncio
import re
import secrets
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.fixtures.gateway import GatewayProcess, start_gateway  # noqa: E402
from tests.support.audio import assert_hears, read_wav_pcm  # noqa: E402
from tests.support.browser import (  # noqa: E402 - needs the repository on sys.path
    BrowserSession,
    StaticServer,
    launch_browser,
    write_browser_tone,
)
from tests.support.jssip_page import JssipPage  # noqa: E402
from tests.support.pjsua_phone import PjsuaPhone  # noqa: E402

DOMAIN = "bench.test"
PHONE_TONE = 1000.0
ALICE_TONE = 440.0
CAROL_TONE = 660.0
TIMEOUT_MS = 20_000
MAX_RUNS = 30
# A run takes two of bob's pjsua call slots (alice's call, the transferred one); pjsua reuses
# ids after 4 (see bench/dial_to_audio.py): a fresh phone every two runs.
RUNS_PER_PHONE = 2
CLOCK = r"^(\d\d:\d\d:\d\d\.\d{3}) .*\."
PJSIP_RX_REFER = re.compile(CLOCK + r"RX \d+ bytes Request msg REFER/")
PJSIP_TX_INVITE = re.compile(CLOCK + r"TX \d+ bytes Request msg INVITE/")
PJSIP_RX_200 = re.compile(CLOCK + r"RX \d+ bytes Response msg 200/INVITE/")


def pjsip_transfer_times(log: Path) -> list[tuple[float, float, float]]:
    """(REFER in, first INVITE out after it, 200 OK in) per transfer, seconds since midnight."""
    times: list[tuple[float, float, float]] = []
    refer_in = invite_out = None
    for line in log.read_text(errors="replace").splitlines():
        if match := PJSIP_RX_REFER.match(line):
            refer_in, invite_out = _seconds(match[1]), None
        elif (match := PJSIP_TX_INVITE.match(line)) and refer_in is not None and \
                invite_out is None:
            invite_out = _seconds(match[1])
        elif (match := PJSIP_RX_200.match(line)) and invite_out is not None and \
                refer_in is not None:
            times.append((refer_in, invite_out, _seconds(match[1])))
            refer_in = invite_out = None
    return times


def _seconds(clock: str) -> float:
    hours, minutes, seconds = clock.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _since_midnight(epoch_ms: float) -> float:
    moment = datetime.fromtimestamp(epoch_ms / 1000)
    return moment.hour * 3600 + moment.minute * 60 + moment.second + moment.microsecond / 1e6


async def one_transfer(alice: JssipPage, carol: JssipPage, bob: PjsuaPhone,
                       workdir: Path) -> dict[str, float]:
    """One call alice → bob, transferred to carol; the page marks (epoch ms)."""
    first = await alice.call(f"sip:bob@{DOMAIN}")
    await alice.wait_event("confirmed", index=first)
    target = await carol.page.evaluate("() => window.ws2sipJssip.calls.length")
    hearing = asyncio.create_task(carol.first_heard(target, PHONE_TONE, TIMEOUT_MS))
    number = await alice.refer(first, f"sip:carol@{DOMAIN}")
    heard = await hearing
    if heard is None:
        raise RuntimeError(f"carol never heard bob's tone; events {await carol.events()}")
    marks = {
        "refer": (await alice.wait_event("referSent", number=number))["at"],
        "carol_in": (await carol.wait_event("call", index=target))["at"],
        "carol_200": (await carol.wait_event("accepted", index=target))["at"],
        "heard": heard,
    }
    await alice.wait_event("transferred", number=number)
    await alice.hang_up(first)
    recording = workdir / f"bob-{secrets.token_hex(3)}.wav"
    await bob.record(recording)
    await asyncio.sleep(1.0)
    await bob.stop_recording()
    samples, rate = read_wav_pcm(recording)
    assert_hears(samples[rate // 4:], rate, CAROL_TONE)
    await carol.hang_up(target)
    await carol.wait_event("ended", index=target)
    return marks


async def start_bob(gateway: GatewayProcess) -> PjsuaPhone:
    phone = await PjsuaPhone.start(f"transfer-bench-bob-{secrets.token_hex(3)}")
    await phone.register("127.0.0.1", gateway.port("udp"), "bob", gateway.users["bob"], DOMAIN)
    await phone.play_tone(PHONE_TONE)
    await phone.set_auto_answer(200)
    return phone


def report(name: str, values_ms: list[float]) -> None:
    values = sorted(values_ms)
    print(f"{name:<40} p50 {statistics.median(values):7.1f} ms   "
          f"min {values[0]:7.1f}   max {values[-1]:7.1f}")


async def page(browser: BrowserSession, site: StaticServer, gateway: GatewayProcess,
               user: str) -> JssipPage:
    return await JssipPage.open(browser, site, gateway.ws_url, user, gateway.users[user], DOMAIN)


async def main(runs: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="ws2sip-transfer-bench-"))
    users = {name: secrets.token_urlsafe(12) for name in ("alice", "bob", "carol")}
    results: list[tuple[dict[str, float], tuple[float, float, float] | None]] = []
    async with StaticServer() as site:
        gateway = await start_gateway(workdir, users=users, domain=DOMAIN,
                                      transports=("udp", "ws"),
                                      extra_args=["--allowed-origin", site.base_url])
        try:
            async with (
                launch_browser(write_browser_tone(workdir / "a.wav", ALICE_TONE),
                               name="transfer-bench-alice") as alice_browser,
                launch_browser(write_browser_tone(workdir / "c.wav", CAROL_TONE),
                               name="transfer-bench-carol") as carol_browser,
            ):
                alice = await page(alice_browser, site, gateway, "alice")
                carol = await page(carol_browser, site, gateway, "carol")
                await carol.set_auto_answer(True)
                while len(results) < runs:
                    batch = min(RUNS_PER_PHONE, runs - len(results))
                    bob = await start_bob(gateway)
                    try:
                        marks = [await one_transfer(alice, carol, bob, workdir)
                                 for _ in range(batch)]
                    finally:
                        await bob.stop()
                    phone: list[tuple[float, float, float] | None] = list(
                        pjsip_transfer_times(bob.pjsip_log_path))
                    if len(phone) != batch:
                        phone = [None] * batch
                    results.extend(zip(marks, phone, strict=True))
        finally:
            await gateway.stop()
    print(f"{runs} blind transfers: JsSIP alice REFERs pjsua2 bob to JsSIP carol, "
          "media anchored, loopback")
    report("REFER sent → carol hears bob", [m["heard"] - m["refer"] for m, _ in results])
    report("REFER sent → carol's INVITE in", [m["carol_in"] - m["refer"] for m, _ in results])
    report("carol's 200 OK → carol hears bob", [m["heard"] - m["carol_200"] for m, _ in results])
    timed = [(marks, phone) for marks, phone in results if phone is not None]
    if not timed:
        print("no REFER/INVITE/200 triples in the phone logs: no gateway share computed")
        return
    refer_leg = [(refer_in - _since_midnight(m["refer"])) * 1000 for m, (refer_in, _, _) in timed]
    invite_leg = [(_since_midnight(m["carol_in"]) - invite_out) * 1000
                  for m, (_, invite_out, _) in timed]
    answer_leg = [(ok_in - _since_midnight(m["carol_200"])) * 1000 for m, (_, _, ok_in) in timed]
    report("gateway: REFER in → REFER at bob", refer_leg)
    report("gateway: bob's INVITE → at carol (407)", invite_leg)
    report("gateway: carol's 200 → at bob", answer_leg)
    report("gateway share (sum of the three)",
           [a + b + c for a, b, c in zip(refer_leg, invite_leg, answer_leg, strict=True)])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6, help=f"transfers to time (≤ {MAX_RUNS})")
    arguments = parser.parse_args()
    asyncio.run(main(min(max(arguments.runs, 1), MAX_RUNS)))
