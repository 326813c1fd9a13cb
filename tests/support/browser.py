"""Real Chromium (Debian's /usr/bin/chromium) driven by Playwright, with a fake microphone
playing a known tone, and the static server for the test pages.

    async with StaticServer() as site, launch_browser(tone_wav, name="alice") as alice:
        page = await alice.open(site.url("webrtc.html"))
        heard = await dominant_frequency(page, "window.remoteStream")

Chromium's fake audio device plays one file per browser process: every party that must sound
different needs its own launch_browser().
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web
from playwright.async_api import (
    BrowserContext,
    ConsoleMessage,
    Page,
    ViewportSize,
    async_playwright,
)

from tests.support.audio import write_tone_wav

JS_DIR = Path(__file__).resolve().parent.parent / "js"
BUNDLE_DIR = JS_DIR / "node_modules" / ".ws2sip-bundles"
CHROMIUM = "/usr/bin/chromium"
SERVED_SUFFIXES = (".html", ".mjs")
LOOPBACK_ADDRESSES = ("127.0.0.1", "::1")
PAGE_READY = "window.ws2sipMedia !== undefined"
CHROMIUM_ARGS = (
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--autoplay-policy=no-user-gesture-required",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
# Host candidates as plain loopback addresses, not mDNS names nobody here can resolve.
MDNS_HOST_CANDIDATES_OFF = "--disable-features=WebRtcHideLocalIpsWithMdns"
GRANT_MEDIA = "--use-fake-ui-for-media-stream"


def write_browser_tone(path: Path, frequency: float) -> Path:
    """A tone WAV for Chromium's fake microphone (it loops the file)."""
    return write_tone_wav(path, frequency, seconds=2.0, rate=48000)


class StaticServer:
    """Serves tests/js/*.html and *.mjs at / and the JsSIP/SIP.js bundles at /bundles/."""

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    def url(self, page: str) -> str:
        return f"{self.base_url}/{page}"

    async def start(self) -> StaticServer:
        if not BUNDLE_DIR.is_dir():
            raise RuntimeError(f"{BUNDLE_DIR} is missing: run tests/bootstrap.sh")
        app = web.Application()
        app.router.add_static("/bundles/", BUNDLE_DIR)
        app.router.add_get("/{name}", self._page)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> StaticServer:
        return await self.start()

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await self.stop()

    @staticmethod
    async def _page(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = JS_DIR / name
        # Only the pages and their modules: never package.json, node_modules or anything above.
        if "/" in name or not name.endswith(SERVED_SUFFIXES) or not path.is_file():
            raise web.HTTPNotFound(text=f"not a test page: {name}")
        content_type = "text/html" if name.endswith(".html") else "text/javascript"
        return web.Response(body=path.read_bytes(), content_type=content_type)


@dataclass
class BrowserSession:
    """One Chromium process (its own profile and fake microphone) and its pages."""

    name: str
    context: BrowserContext
    console: list[str] = field(default_factory=list)

    async def open(self, url: str) -> Page:
        """A new tab on url, once the in-page helpers (window.ws2sipMedia) are loaded."""
        page = await self.context.new_page()
        page.on("console", self._keep_console)
        page.on("pageerror", lambda error: self.console.append(f"[pageerror] {error}"))
        await page.goto(url)
        await page.wait_for_function(PAGE_READY, timeout=15_000)
        return page

    def _keep_console(self, message: ConsoleMessage) -> None:
        self.console.append(f"[{message.type}] {message.text}")


@asynccontextmanager
async def launch_browser(
    tone_wav: Path, *, name: str = "browser", extra_args: tuple[str, ...] = (),
    mdns_host_candidates: bool = False, grant_media: bool = True,
    viewport: ViewportSize | None = None, executable: str = CHROMIUM,
) -> AsyncIterator[BrowserSession]:
    """Chromium whose microphone plays tone_wav, in a temporary profile removed afterwards.

    mdns_host_candidates=True keeps Chromium's WebRTC privacy default (host candidates as
    `<uuid>.local` names, as in every browser people run); by default they are plain addresses.
    grant_media=False leaves the permission prompt in: headless Chromium then denies
    getUserMedia, as when a person clicks "Block".
    executable: a wrapper that starts Chromium elsewhere, e.g. in a network namespace
    (tests/support/blocked_udp.py).
    """
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} not found: install the Debian package chromium "
                           "(tests/bootstrap.sh)")
    args = [*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={tone_wav}", *extra_args]
    if not mdns_host_candidates:
        args.append(MDNS_HOST_CANDIDATES_OFF)
    if grant_media:
        args.append(GRANT_MEDIA)
    profile = Path(tempfile.mkdtemp(prefix=f"ws2sip-chromium-{name}-"))
    try:
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                str(profile), executable_path=executable, headless=True, args=args,
                viewport=viewport,
            )
            try:
                yield BrowserSession(name, context)
            finally:
                await context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def loopback_only(sdp: str) -> str:
    """The SDP without ICE candidates on non-loopback addresses: Chromium gathers on every
    interface, and the tests keep their traffic on 127.0.0.1 / ::1."""
    kept = []
    for line in sdp.split("\r\n"):
        if line.startswith("a=candidate:"):
            address = line.split()[4]
            if address not in LOOPBACK_ADDRESSES:
                continue
        kept.append(line)
    return "\r\n".join(kept)


async def dominant_frequency(page: Page, stream_expression: str, listen_ms: int = 1500
                             ) -> float:
    """Frequency (Hz) the page hears on the MediaStream that stream_expression evaluates to."""
    return await page.evaluate(
        f"([ms]) => window.ws2sipMedia.dominantFrequency({stream_expression}, ms)", [listen_ms]
    )


async def peer_connection_stats(page: Page, pc_expression: str) -> dict[str, Any]:
    """iceConnectionState, connectionState, dtlsState, selectedPair, packetsReceived,
    packetsSent, bytesReceived, inboundCodec of the RTCPeerConnection pc_expression names."""
    return await page.evaluate(f"() => window.ws2sipMedia.stats({pc_expression})")
