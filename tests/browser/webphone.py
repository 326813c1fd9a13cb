"""The gateway's web phone in real Chromium, driven through its own buttons like a person would.

    async with launch_private_browser(tone_wav, name="alice") as browser:
        alice = await WebPhone.open(browser, gateway_http_url(gateway), "alice")
        await alice.sign_in("alice", password)
        await alice.call("bob")

Unlike the other browser tests, Chromium keeps its WebRTC privacy defaults: host candidates are
mDNS names (`<uuid>.local`), as in every browser people run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from playwright.async_api import Page, ViewportSize

from tests.fixtures.gateway import ARTIFACTS_DIR
from tests.support.browser import (
    CHROMIUM,
    JS_DIR,
    BrowserSession,
    dominant_frequency,
    launch_browser,
    peer_connection_stats,
)

SCREENSHOTS_DIR = ARTIFACTS_DIR / "screenshots"
VIEWPORT: ViewportSize = {"width": 760, "height": 980}
UI_TIMEOUT_MS = 15_000
MEDIA_HELPERS = JS_DIR / "media_helpers.mjs"


@asynccontextmanager
async def launch_private_browser(
    tone_wav: Path, *, name: str, grant_media: bool = True, extra_args: tuple[str, ...] = (),
    executable: str = CHROMIUM,
) -> AsyncIterator[BrowserSession]:
    """Chromium with mDNS host candidates on, its microphone playing tone_wav.

    grant_media=False: headless Chromium denies getUserMedia (see launch_browser).
    """
    async with launch_browser(tone_wav, name=name, mdns_host_candidates=True,
                              grant_media=grant_media, viewport=VIEWPORT,
                              extra_args=extra_args, executable=executable) as browser:
        yield browser


class WebPhone:
    """One tab of the web phone. Every action clicks or types in the page."""

    def __init__(self, page: Page, name: str, browser: BrowserSession) -> None:
        self.page = page
        self.name = name
        self.browser = browser

    @classmethod
    async def open(cls, browser: BrowserSession, base_url: str, name: str) -> WebPhone:
        page = await browser.context.new_page()
        page.on("console", browser._keep_console)
        page.on("pageerror", lambda error: browser.console.append(f"[pageerror] {error}"))
        await page.goto(f"{base_url}/")
        # The tests' AnalyserNode and getStats probes; the phone itself does not need them.
        await page.add_script_tag(path=str(MEDIA_HELPERS), type="module")
        await page.wait_for_function(
            "window.ws2sipMedia !== undefined && document.getElementById('server').value !== ''",
            timeout=UI_TIMEOUT_MS,
        )
        return cls(page, name, browser)

    # --- actions -----------------------------------------------------------------------------
    async def sign_in(self, user: str, password: str) -> None:
        await self.page.fill("#user", user)
        await self.page.fill("#password", password)
        await self.page.click("#sign-in")

    async def sign_in_and_wait(self, user: str, password: str) -> None:
        await self.sign_in(user, password)
        await self.wait_registered()

    async def call(self, target: str, *, video: bool = False) -> None:
        await self.page.fill("#target", target)
        await self.page.set_checked("#with-video", video)
        await self.page.click("#call")

    async def answer(self, *, video: bool = False) -> None:
        await self.page.set_checked("#with-video", video)
        await self.page.click("#answer")

    async def hang_up(self) -> None:
        await self.page.click("#hangup")

    async def press_keys(self, digits: str) -> None:
        for digit in digits:
            await self.page.click(f"#keypad button[data-digit='{digit}']")

    # --- observations ------------------------------------------------------------------------
    async def wait_registered(self) -> None:
        await self.page.wait_for_selector(
            "#registration[data-state='registered']", timeout=UI_TIMEOUT_MS
        )

    async def wait_call_state(self, state: str, timeout_ms: int = UI_TIMEOUT_MS) -> str:
        """Waits for the call state (idle|calling|ringing|incoming|active|held); its text."""
        await self.page.wait_for_selector(
            f"#call-status[data-state='{state}']", timeout=timeout_ms
        )
        return await self.page.inner_text("#call-status")

    async def wait_error(self) -> str:
        await self.page.wait_for_selector("#error:not([hidden])", timeout=UI_TIMEOUT_MS)
        return await self.page.inner_text("#error")

    async def registration_text(self) -> str:
        return await self.page.inner_text("#registration")

    async def heard_frequency(self, listen_ms: int = 1500) -> float:
        """What the AnalyserNode finds on the call's remote stream."""
        return await dominant_frequency(self.page, "window.ws2sipPhone.remoteStream", listen_ms)

    async def stats(self) -> dict[str, Any]:
        return await peer_connection_stats(self.page, "window.ws2sipPhone.peerConnection")

    async def wait_quality_line(self) -> dict[str, str]:
        """The quality line once it reports received packets: its text and data values."""
        await self.page.wait_for_function(
            "Number(document.getElementById('quality').dataset.packetsReceived) > 0",
            timeout=UI_TIMEOUT_MS,
        )
        return await self.page.evaluate("""() => {
          const line = document.getElementById('quality');
          return { text: line.textContent, ...line.dataset };
        }""")

    async def screenshot(self, label: str) -> Path:
        SCREENSHOTS_DIR.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS_DIR / f"{label}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        return path

    def console(self) -> str:
        return "\n".join(self.browser.console[-60:])
