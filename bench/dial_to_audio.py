"""Dial-to-audio: how long from clicking Call on the web phone until its AnalyserNode first hears
the far end's tone, and which part of that the gateway takes.

A real gateway, a pjsua2 phone (UDP, answers at once, plays PHONE_TONE) and headless Chromium
with the web phone (mDNS host candidates on). Per call the page records, on one clock:

    click      the Call button is clicked
    invite     JsSIP sends the INVITE (after getUserMedia, createOffer and ICE gathering)
    answered   JsSIP receives the 200 OK
    heard      an AnalyserNode on the remote stream first finds PHONE_TONE

The phone's pjsip log gives when the INVITE reached it and when its 200 OK left, so
gateway share = (answered - invite) - (phone 200 out - phone INVITE in): the gateway's INVITE
in → 200 OK out, digest challenge round trip and SDP rewriting/media anchoring included.

    python bench/dial_to_audio.py --calls 7
    python bench/dial_to_audio.py --calls 7 --path turn-tcp

--path picks the media path between the browser and the gateway: `udp` (default: direct, host
candidates) or `turn-udp` / `turn-tcp` / `turn-tls`, where a real coturn (started from
deploy/coturn/turnserver.conf, tests/support/coturn.py) relays it and the browser is relay-only
(iceTransportPolicy "relay"). `no-udp` runs Chromium in a network namespace that drops all UDP
(tests/support/blocked_udp.py, needs root) with the gateway handing out TURN over UDP and TCP,
as a deployment would: the browser must find out that only TURN/TCP works. `ice-tcp` blocks UDP
the same way with no TURN server at all: the gateway offers a passive TCP candidate
(--ice-tcp-listen) and the media runs over the browser's TCP connection to it. Each call's
selected candidate pair is checked to be that path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import secrets
import socket
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.browser.webphone import (  # noqa: E402 - needs the repository on sys.path
    WebPhone,
    launch_private_browser,
)
from tests.fixtures.gateway import GatewayProcess, start_gateway  # noqa: E402
from tests.support.blocked_udp import blocked_udp_network, secure_origin_flag  # noqa: E402
from tests.support.browser import CHROMIUM, write_browser_tone  # noqa: E402
from tests.support.coturn import RELAY_ONLY_POLICY, running_coturn  # noqa: E402
from tests.support.healthz import gateway_http_url  # noqa: E402
from tests.support.pjsua_phone import PjsuaPhone  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

PHONE_TONE = 1000.0
BROWSER_TONE = 440.0
CALL_TIMEOUT_S = 20.0
MAX_CALLS = 50
# tests/support/pjsua_agent.py replaces the Python Call object when pjsua reuses a call id (after
# 4 calls); the old object's destructor then hangs up the new call with 603. A fresh phone per
# 4 calls keeps clear of that.
CALLS_PER_PHONE = 4
# --path: the browser's selected candidate (type, relayProtocol) each path must show.
PATHS = {
    "udp": ("host", None), "turn-udp": ("relay", "udp"), "turn-tcp": ("relay", "tcp"),
    "turn-tls": ("relay", "tls"), "no-udp": ("relay", "tcp"),
    # The browser's active TCP candidate, or the peer-reflexive one the gateway's check answer
    # taught it: either way "host or prflx", over TCP, no relay (checked in one_call).
    "ice-tcp": ("prflx", None),
}
PJSIP_RX_INVITE = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) .*\.RX \d+ bytes Request msg INVITE/")
PJSIP_TX_200 = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) .*\.TX \d+ bytes Response msg 200/INVITE/")

# Installed before the click: hooks JsSIP's new session (newRTCSession fires synchronously in
# ua.call, before the INVITE is built) and polls a small-FFT AnalyserNode every 5 ms once the
# remote track arrives. Date.now() so the times compare with the phone's log.
ARM_PROBE = """([toneHz]) => {
  const marks = {};
  window.dialMarks = marks;
  document.getElementById('call').addEventListener('click', () => { marks.click = Date.now(); },
                                                   { capture: true, once: true });
  const phone = window.ws2sipPhone;
  phone.ua.once('newRTCSession', ({ session }) => {
    session.once('sending', () => { marks.invite = Date.now(); });
    session.once('accepted', () => { marks.answered = Date.now(); });
    session.connection.addEventListener('track', ({ track }) => {
      if (track.kind !== 'audio') return;
      const stream = new MediaStream([track]);
      window.ws2sipMedia.keepFlowing(stream);
      const context = new AudioContext();
      const analyser = context.createAnalyser();
      analyser.fftSize = 2048;
      analyser.smoothingTimeConstant = 0;
      context.createMediaStreamSource(stream).connect(analyser);
      const bins = new Float32Array(analyser.frequencyBinCount);
      const hzPerBin = context.sampleRate / analyser.fftSize;
      const poll = setInterval(() => {
        analyser.getFloatFrequencyData(bins);
        let peak = -Infinity, peakBin = 0, sum = 0;
        bins.forEach((db, bin) => {
          const power = 10 ** (db / 10);
          sum += power;
          if (bin * hzPerBin >= 50 && db > peak) { peak = db; peakBin = bin; }
        });
        const clear = 10 ** (peak / 10) > 100 * (sum / bins.length);
        if (clear && Math.abs(peakBin * hzPerBin - toneHz) <= 2 * hzPerBin) {
          marks.heard = Date.now();
          clearInterval(poll);
          context.close();
        }
      }, 5);
    });
  });
}"""


def pjsip_times(log: Path) -> list[tuple[float, float]]:
    """(INVITE in, 200 OK out) per call, in seconds since midnight, from the phone's log."""
    received, answered = [], []
    for line in log.read_text(errors="replace").splitlines():
        if match := PJSIP_RX_INVITE.match(line):
            received.append(_seconds(match[1]))
        elif match := PJSIP_TX_200.match(line):
            answered.append(_seconds(match[1]))
    return list(zip(received, answered, strict=False))


def _seconds(clock: str) -> float:
    hours, minutes, seconds = clock.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _since_midnight(epoch_ms: float) -> float:
    moment = datetime.fromtimestamp(epoch_ms / 1000)
    return moment.hour * 3600 + moment.minute * 60 + moment.second + moment.microsecond / 1e6


async def one_call(web: WebPhone, path: str) -> dict[str, float]:
    await web.page.evaluate(ARM_PROBE, [PHONE_TONE])
    await web.call("bob")
    await web.page.wait_for_function("window.dialMarks.heard !== undefined",
                                     timeout=CALL_TIMEOUT_S * 1000)
    marks = await web.page.evaluate("window.dialMarks")
    pair = (await web.stats())["selectedPair"] or {}
    observed = (pair.get("localType"), pair.get("relayProtocol"))
    if path == "ice-tcp" and str(pair.get("local")).endswith("/tcp"):
        observed = ("prflx", None) if observed == ("host", None) else observed
    if observed != PATHS[path]:
        raise RuntimeError(f"--path {path}, but the call's selected candidate pair is {pair}")
    await web.hang_up()
    await web.wait_call_state("idle")
    return marks


def report(name: str, values_ms: list[float]) -> None:
    values = sorted(values_ms)
    print(f"{name:<38} p50 {statistics.median(values):7.1f} ms   "
          f"min {values[0]:7.1f}   max {values[-1]:7.1f}")


async def start_phone(gateway: GatewayProcess, password: str) -> PjsuaPhone:
    phone = await PjsuaPhone.start(f"dial-bench-bob-{secrets.token_hex(3)}")
    await phone.register("127.0.0.1", gateway.udp_port, "bob", password, gateway.domain)
    await phone.play_tone(PHONE_TONE)
    await phone.set_auto_answer(200)
    return phone


async def timed_calls(web: WebPhone, gateway: GatewayProcess, password: str, calls: int,
                      path: str) -> list[tuple[dict[str, float], tuple[float, float] | None]]:
    """Browser marks and the phone's (INVITE in, 200 out) per call."""
    results: list[tuple[dict[str, float], tuple[float, float] | None]] = []
    while len(results) < calls:
        batch = min(CALLS_PER_PHONE, calls - len(results))
        phone = await start_phone(gateway, password)
        try:
            marks = [await one_call(web, path) for _ in range(batch)]
        finally:
            await phone.stop()
        phone_times: list[tuple[float, float] | None] = list(pjsip_times(phone.pjsip_log_path))
        if len(phone_times) != batch:
            phone_times = [None] * batch
        results.extend(zip(marks, phone_times, strict=True))
    return results


async def main(calls: int, path: str) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="ws2sip-dial-bench-"))
    users = {"alice": secrets.token_urlsafe(12), "bob": secrets.token_urlsafe(12)}
    with contextlib.ExitStack() as stack:
        gateway_args: list[str] = []
        browser_args: tuple[str, ...] = ()
        chromium = CHROMIUM
        page_url = ""
        if path == "no-udp":
            network = stack.enter_context(blocked_udp_network())
            coturn = stack.enter_context(running_coturn(
                workdir / "coturn", secret=secrets.token_hex(32),
                listen=("127.0.0.1", network.host_address)))
            ws_port = free_port(socket.SOCK_STREAM)
            page_url = f"http://{network.host_address}:{ws_port}"
            gateway_args = [*coturn.gateway_args("udp", "tcp", host=network.host_address),
                            "--ws", f"{network.host_address}:{ws_port}"]
            browser_args = (*coturn.chromium_args(), secure_origin_flag(page_url))
            chromium = str(network.chromium)
        elif path == "ice-tcp":
            network = stack.enter_context(blocked_udp_network())
            host = network.host_address
            ws_port = free_port(socket.SOCK_STREAM)
            page_url = f"http://{host}:{ws_port}"
            gateway_args = ["--ws", f"{host}:{ws_port}", "--public-address", host,
                            "--media-address", host, "--ice-tcp-listen", f"{host}:0"]
            browser_args = (secure_origin_flag(page_url),)
            chromium = str(network.chromium)
        elif path.startswith("turn-"):
            coturn = stack.enter_context(running_coturn(workdir / "coturn",
                                                        secret=secrets.token_hex(32)))
            gateway_args = coturn.gateway_args(path.removeprefix("turn-"))
            browser_args = coturn.chromium_args()
        gateway = await start_gateway(workdir, users=users, domain="bench.test",
                                      extra_args=gateway_args)
        try:
            tone = write_browser_tone(workdir / "browser.wav", BROWSER_TONE)
            async with launch_private_browser(tone, name="dial-bench", extra_args=browser_args,
                                              executable=chromium) as browser:
                if path.startswith("turn-"):
                    await browser.context.add_init_script(RELAY_ONLY_POLICY)
                web = await WebPhone.open(browser, page_url or gateway_http_url(gateway),
                                          "alice")
                await web.sign_in_and_wait("alice", users["alice"])
                results = await timed_calls(web, gateway, users["bob"], calls, path)
        finally:
            await gateway.stop()
    runs = [marks for marks, _ in results]
    print(f"{calls} calls web phone → gateway → pjsua2 phone (auto-answer), loopback, "
          f"media path {path}")
    report("click → far tone heard", [r["heard"] - r["click"] for r in runs])
    report("click → INVITE sent (gUM, offer, ICE)", [r["invite"] - r["click"] for r in runs])
    report("INVITE sent → 200 OK received", [r["answered"] - r["invite"] for r in runs])
    report("200 OK → far tone heard", [r["heard"] - r["answered"] for r in runs])
    timed = [(marks, phone) for marks, phone in results if phone is not None]
    if not timed:
        print("no INVITE/200 pairs in the phone logs: no gateway share computed")
        return
    phone_ms = [(answered - received) * 1000 for _, (received, answered) in timed]
    report("phone: INVITE in → 200 OK out", phone_ms)
    report("gateway share (INVITE in → 200 out)", [
        marks["answered"] - marks["invite"] - own for (marks, _), own in zip(timed, phone_ms,
                                                                           strict=True)
    ])
    # Where the INVITE spends its time before reaching the phone (auth, routing, anchoring).
    report("INVITE sent → INVITE at phone", [
        (received - _since_midnight(marks["invite"])) * 1000 for marks, (received, _) in timed
    ])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=7, help=f"calls to time (≤ {MAX_CALLS})")
    parser.add_argument("--path", choices=sorted(PATHS), default="udp",
                        help="media path: direct UDP, through coturn over UDP, TCP or TLS, "
                             "or from a browser whose UDP is blocked (root), through TURN/TCP "
                             "or the gateway's own ICE-TCP")
    arguments = parser.parse_args()
    asyncio.run(main(min(max(arguments.calls, 1), MAX_CALLS), arguments.path))
