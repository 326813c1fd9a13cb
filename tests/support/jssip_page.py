"""A bare JsSIP phone in a Chromium tab (tests/js/jssip_phone.mjs): several calls, hold,
REFER out and in, INVITE with Replaces; what each call hears, by frequency.

    page = await JssipPage.open(browser, site, gateway, "alice")
    index = await page.call(f"sip:bob@{gateway.domain}")
    await page.wait_event("confirmed", index=index)
    number = await page.refer(index, f"sip:carol@{gateway.domain}")
    await page.wait_event("transferred", number=number)
"""

from __future__ import annotations

import json
from typing import Any

from playwright.async_api import Page
from playwright.async_api import TimeoutError as PlaywrightTimeout

from tests.support.browser import BrowserSession, StaticServer

PHONE_READY = "window.ws2sipJssip !== undefined"
EVENT_TIMEOUT_MS = 20_000


class JssipPage:
    def __init__(self, page: Page, browser: BrowserSession) -> None:
        self.page = page
        self.browser = browser

    @classmethod
    async def open(cls, browser: BrowserSession, site: StaticServer, ws_url: str, user: str,
                   password: str, domain: str, settings: dict[str, Any] | None = None
                   ) -> JssipPage:
        """A new tab whose JsSIP UA has registered; `settings` are more JsSIP UA settings
        (e.g. connection_recovery_max_interval)."""
        page = await browser.open(site.url("webrtc.html"))
        await page.add_script_tag(url=site.url("jssip_phone.mjs"), type="module")
        await page.wait_for_function(PHONE_READY, timeout=15_000)
        await page.evaluate("([u, n, p, d, s]) => window.ws2sipJssip.start(u, n, p, d, s)",
                            [ws_url, user, password, domain, settings or {}])
        return cls(page, browser)

    async def call(self, target: str) -> int:
        index: int = await self.page.evaluate("(t) => window.ws2sipJssip.call(t)", target)
        return index

    async def answer(self, index: int) -> None:
        await self.page.evaluate("(i) => window.ws2sipJssip.answer(i)", index)

    async def hang_up(self, index: int) -> None:
        await self.page.evaluate("(i) => window.ws2sipJssip.hangUp(i)", index)

    async def hold(self, index: int) -> None:
        await self.page.evaluate("(i) => window.ws2sipJssip.hold(i)", index)

    async def unhold(self, index: int) -> None:
        await self.page.evaluate("(i) => window.ws2sipJssip.unhold(i)", index)

    async def refer(self, index: int, target: str | None, replaces: int | None = None) -> int:
        """REFER call `index`'s peer to `target` (with Replaces naming call `replaces`; None:
        to that call's peer's own Contact, as SIP.js does)."""
        number: int = await self.page.evaluate(
            "([i, t, r]) => window.ws2sipJssip.refer(i, t, r)", [index, target, replaces])
        return number

    async def notifies(self, number: int) -> list[str]:
        """The sipfrag status lines of the NOTIFYs received for referral `number`."""
        lines: list[str] = await self.page.evaluate(
            "(n) => window.ws2sipJssip.referrals[n]", number)
        return lines

    async def heard(self, index: int, listen_ms: int) -> float:
        frequency: float = await self.page.evaluate(
            "([i, ms]) => window.ws2sipJssip.heard(i, ms)", [index, listen_ms])
        return frequency

    async def set_auto_answer(self, on: bool) -> None:
        """Answer incoming calls at once (a bench's callee)."""
        await self.page.evaluate("(on) => window.ws2sipJssip.setAutoAnswer(on)", on)

    async def first_heard(self, index: int, tone: float, timeout_ms: int) -> float | None:
        """Date.now() (ms) when call `index`, perhaps not there yet, first carries `tone`."""
        moment: float | None = await self.page.evaluate(
            "([i, hz, ms]) => window.ws2sipJssip.firstHeard(i, hz, ms)", [index, tone, timeout_ms])
        return moment

    async def stats(self, index: int) -> dict[str, Any]:
        facts: dict[str, Any] = await self.page.evaluate(
            "(i) => window.ws2sipJssip.stats(i)", index)
        return facts

    async def wait_event(self, kind: str, timeout_ms: int = EVENT_TIMEOUT_MS,
                         **match: Any) -> dict[str, Any]:
        """The first not yet consumed event of `kind` whose fields equal `match`."""
        wanted = {"type": kind, **match}
        try:
            found = await self.page.wait_for_function(
                """(wanted) => {
              const events = window.ws2sipJssip.events;
              for (let i = 0; i < events.length; i++) {
                if (events[i].claimed) continue;
                if (Object.entries(wanted).every(([k, v]) => events[i][k] === v)) {
                  events[i].claimed = true;
                  return events[i];
                }
              }
              return null;
            }""", arg=wanted, timeout=timeout_ms)
        except PlaywrightTimeout:
            raise AssertionError(f"no {wanted} within {timeout_ms} ms; events: "
                                 f"{json.dumps(await self.events())}; console: "
                                 f"{self.browser.console[-20:]}") from None
        event: dict[str, Any] = await found.json_value()
        return event

    async def forget_events(self) -> None:
        """Mark every event so far as consumed (a page shared by several tests)."""
        await self.page.evaluate(
            "() => window.ws2sipJssip.events.forEach((e) => { e.claimed = true; })")

    async def count_events(self, kind: str) -> int:
        """How many events of `kind` so far, consumed or not (e.g. "registered")."""
        count: int = await self.page.evaluate(
            "(k) => window.ws2sipJssip.events.filter((e) => e.type === k).length", kind)
        return count

    async def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = await self.page.evaluate("() => window.ws2sipJssip.events")
        return events
