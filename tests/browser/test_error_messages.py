"""Scenario 5: what the web phone tells a person when things go wrong — wrong password, a callee
that does not exist or is not signed in, a busy callee, and a blocked microphone."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.browser.webphone import WebPhone, launch_private_browser
from tests.fixtures.gateway import GatewayFactory, GatewayProcess
from tests.support.browser import BrowserSession, write_browser_tone
from tests.support.healthz import gateway_http_url

USERS = ("alice", "bob", "carol")


@pytest.fixture
async def three_users(gateway_factory: GatewayFactory) -> GatewayProcess:
    return await gateway_factory(
        users={name: secrets.token_urlsafe(12) for name in USERS}, transports=("udp", "ws")
    )


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserSession]:
    tone = write_browser_tone(tmp_path / "tone.wav", 440.0)
    async with launch_private_browser(tone, name="errors") as session:
        yield session


async def test_wrong_password_is_named_and_the_form_stays(
    three_users: GatewayProcess, browser: BrowserSession,
) -> None:
    alice = await WebPhone.open(browser, gateway_http_url(three_users), "alice")
    await alice.sign_in("alice", "not-" + three_users.users["alice"])
    assert await alice.wait_error() == "Sign-in refused: wrong user name or password."
    assert await alice.registration_text() == "Not registered"
    assert await alice.page.is_visible("#sign-in-form")
    assert await alice.page.is_hidden("#dialer")
    await alice.screenshot("10-wrong-password")

    # The right password afterwards signs in and clears the message.
    await alice.page.fill("#password", three_users.users["alice"])
    await alice.page.click("#sign-in")
    await alice.wait_registered()
    assert await alice.page.is_hidden("#error")


async def test_unknown_and_offline_callees_are_told_apart(
    three_users: GatewayProcess, browser: BrowserSession,
) -> None:
    alice = await WebPhone.open(browser, gateway_http_url(three_users), "alice")
    await alice.sign_in_and_wait("alice", three_users.users["alice"])

    await alice.call("nobody")
    assert await alice.wait_error() == "nobody does not exist."
    await alice.wait_call_state("idle")
    await alice.screenshot("11-unknown-callee")

    await alice.call("bob")  # bob exists but has not signed in
    await alice.page.wait_for_function(
        "document.getElementById('error').textContent.includes('bob')", timeout=15_000
    )
    assert await alice.wait_error() == "bob is offline (not signed in anywhere)."
    await alice.screenshot("12-offline-callee")


async def test_busy_callee(three_users: GatewayProcess, browser: BrowserSession) -> None:
    base_url = gateway_http_url(three_users)
    phones = {name: await WebPhone.open(browser, base_url, name) for name in USERS}
    for name, phone in phones.items():
        await phone.sign_in_and_wait(name, three_users.users[name])
    alice, bob, carol = phones["alice"], phones["bob"], phones["carol"]

    await carol.call("bob")
    await bob.wait_call_state("incoming")
    await bob.answer()
    await carol.wait_call_state("active")
    await bob.wait_call_state("active")

    await alice.call("bob")
    # bob is told of the second call (call waiting) and turns it down: 486 Busy Here.
    await bob.page.wait_for_selector("#second-call[data-state='waiting']", timeout=15_000)
    await bob.page.click("#reject-waiting")
    assert await alice.wait_error() == "bob is busy."
    assert await alice.wait_call_state("idle") == "Call failed"
    await alice.screenshot("13-busy-callee")
    # bob's call with carol goes on undisturbed.
    assert await bob.wait_call_state("active") == "In call with carol"
    await carol.hang_up()
    assert await bob.wait_call_state("idle") == "carol hung up"


async def test_declined_call(three_users: GatewayProcess, browser: BrowserSession) -> None:
    base_url = gateway_http_url(three_users)
    alice = await WebPhone.open(browser, base_url, "alice")
    bob = await WebPhone.open(browser, base_url, "bob")
    await alice.sign_in_and_wait("alice", three_users.users["alice"])
    await bob.sign_in_and_wait("bob", three_users.users["bob"])
    await alice.call("bob")
    await alice.wait_call_state("ringing")
    await bob.wait_call_state("incoming")
    await bob.hang_up()
    assert await alice.wait_error() == "bob declined the call."


async def test_blocked_microphone(three_users: GatewayProcess, tmp_path: Path) -> None:
    tone = write_browser_tone(tmp_path / "tone.wav", 440.0)
    async with launch_private_browser(tone, name="blocked", grant_media=False) as blocked:
        alice = await WebPhone.open(blocked, gateway_http_url(three_users), "alice")
        await alice.sign_in_and_wait("alice", three_users.users["alice"])
        await alice.call("bob")
        assert await alice.wait_error() == (
            "No access to the microphone (or camera): allow it in the browser's site settings."
        )
        assert await alice.wait_call_state("idle") == "Ready"
        await alice.screenshot("14-microphone-blocked")
