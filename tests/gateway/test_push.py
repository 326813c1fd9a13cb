"""RFC 8599 push pieces on their own: push bindings in both location backends, their stored
form, the APNs provider against the APNs stand-in over real HTTP/2, and registrations announced
across the cluster through Redis. End to end with apps and browsers: test_push_wake.py (interop).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.config import PushSettings
from gateway.location import ContactChange, LocationService, apply_register
from gateway.location.codec import decode_binding, encode_binding
from gateway.push.apns import TOKEN_RENEW, ApnsProvider, topic_of
from gateway.push.provider import PushKind, PushOutcome, PushRequest, PushTarget
from gateway.push.service import push_ssl_context
from gateway.push.wakeup import Wakeups
from tests.gateway.test_location import ALICE, INSTANCE, change
from tests.support.push_services.apns import ApnsStandIn
from tests.support.push_services.server import serve_http2

TOKEN = "ab" * 32
TEAM_ID = "TEAM000001"
KEY_ID = "KEY0000001"
BUNDLE_ID = "org.example.phone"


def push_contact(uri: str, prid: str = TOKEN, instance: str | None = INSTANCE) -> ContactChange:
    return ContactChange(uri, 600, 1.0, instance, 1 if instance else None, "apns", prid,
                         f"{TEAM_ID}.{BUNDLE_ID}.voip")


# --- location ------------------------------------------------------------------------------------
async def test_a_push_binding_falls_asleep_when_its_flow_closes_and_wakes_on_a_new_one(
    location_backend: LocationService,
) -> None:
    await location_backend.register(change(push_contact("sip:a@192.0.2.1;transport=tcp"),
                                           connection="tcp-1"))
    await location_backend.register(change(
        ContactChange("sip:a@192.0.2.2;transport=tcp", 600, 1.0, None, None),
        call_id="call-2", connection="tcp-1"))
    removed = await location_backend.remove_connection("node-a", "tcp-1")
    assert [b.contact for b in removed] == ["sip:a@192.0.2.2;transport=tcp"]  # the plain one
    (asleep,) = await location_backend.lookup(ALICE)
    assert (asleep.asleep, asleep.pushable, asleep.pn_prid) == (True, True, TOKEN)
    assert await location_backend.count() == 1
    # The app comes back on another flow (another node even), with the same instance.
    await location_backend.register(change(push_contact("sip:a@192.0.2.9;transport=tcp"),
                                           call_id="call-3", node="node-b", connection="tcp-7"))
    (awake,) = await location_backend.lookup(ALICE)
    assert (awake.asleep, awake.node_id, awake.connection_id) == (False, "node-b", "tcp-7")
    # A later close of the old flow changes nothing.
    assert await location_backend.remove_connection("node-a", "tcp-1") == []
    assert await location_backend.lookup(ALICE) == [awake]


async def test_a_dead_token_drops_a_sleeping_binding_and_unpushes_a_live_one(
    location_backend: LocationService,
) -> None:
    other = "cd" * 32
    await location_backend.register(change(
        push_contact("sip:a@192.0.2.1;transport=tcp"),
        push_contact("sip:a@192.0.2.3;transport=tcp", prid=other, instance=None),
        connection="tcp-1"))
    await location_backend.remove_connection("node-a", "tcp-1")  # both asleep
    await location_backend.register(change(push_contact("sip:a@192.0.2.4;transport=tcp"),
                                           call_id="call-2", connection="tcp-2"))  # TOKEN awake
    assert await location_backend.forget_push(ALICE, other)
    assert await location_backend.forget_push(ALICE, TOKEN)
    assert not await location_backend.forget_push(ALICE, TOKEN)  # already gone: logged once
    (live,) = await location_backend.lookup(ALICE)
    assert (live.contact, live.pushable, live.asleep) == ("sip:a@192.0.2.4;transport=tcp",
                                                          False, False)


def test_stored_bindings_keep_their_push_parameters_and_old_ones_read_without() -> None:
    (binding,) = apply_register([], change(push_contact("sip:a@192.0.2.1;transport=tcp")))
    assert decode_binding(encode_binding(binding)) == binding
    _, *values = json.loads(encode_binding(binding))
    written_before_push = json.dumps([1, *values[:-3]])  # format 1: no push parameters
    old = decode_binding(written_before_push)
    assert (old.pushable, old.contact, old.instance_id) == (False, binding.contact, INSTANCE)


# --- APNs ----------------------------------------------------------------------------------------
@dataclass
class Apns:
    app: ApnsStandIn
    provider: ApnsProvider


@pytest.fixture
async def apns(tmp_path: Path) -> AsyncIterator[Apns]:
    key = ec.generate_private_key(ec.SECP256R1())
    app = ApnsStandIn(key.public_key(), KEY_ID, TEAM_ID, BUNDLE_ID)
    async with serve_http2(app, tmp_path) as server:
        provider = ApnsProvider(url=server.url, key=key, key_id=KEY_ID, team_id=TEAM_ID,
                                verify=push_ssl_context(PushSettings(ca_file=str(server.ca_file))))
        try:
            yield Apns(app, provider)
        finally:
            await provider.close()


CALL = PushRequest(PushKind.INCOMING_CALL, "a84b4c76e66710", "Alice", "sip:bob@example.com")
TARGET = PushTarget("apns", TOKEN, f"{TEAM_ID}.{BUNDLE_ID}.voip")


async def test_apns_push_is_what_apns_accepts(apns: Apns) -> None:
    assert (await apns.provider.send(TARGET, CALL)).outcome is PushOutcome.SENT
    (push,) = apns.app.pushes
    assert (push.device_token, push.topic, push.push_type, push.priority) == (
        TOKEN, f"{BUNDLE_ID}.voip", "voip", "10")
    assert 0 < int(push.expiration) - time.time() <= 31
    assert push.payload == {"aps": {}, "ws2sip": {
        "type": "call", "call-id": "a84b4c76e66710", "from": "Alice",
        "to": "sip:bob@example.com"}}


async def test_apns_token_is_reused_then_renewed_before_an_hour(apns: Apns) -> None:
    first = apns.provider.provider_token()
    assert apns.provider.provider_token() == first
    claims = jwt.decode(first, options={"verify_signature": False})
    assert claims["iss"] == TEAM_ID and jwt.get_unverified_header(first)["kid"] == KEY_ID
    # An hour-old token would be refused; past TOKEN_RENEW a new one is signed.
    apns.provider._token_issued -= TOKEN_RENEW  # noqa: SLF001 - the clock, moved on
    assert apns.provider.provider_token() != first
    assert (await apns.provider.send(TARGET, CALL)).outcome is PushOutcome.SENT


async def test_apns_errors_map_to_outcomes(apns: Apns) -> None:
    apns.app.unregistered.add(TOKEN)
    gone = await apns.provider.send(TARGET, CALL)
    assert (gone.outcome, gone.reason) == (PushOutcome.INVALID_TOKEN, "APNs 410 Unregistered")
    wrong_app = PushTarget("apns", TOKEN, f"{TEAM_ID}.org.example.other.voip")
    refused = await apns.provider.send(wrong_app, CALL)
    assert (refused.outcome, refused.reason) == (PushOutcome.FAILED,
                                                 "APNs 400 DeviceTokenNotForTopic")
    not_hex = await apns.provider.send(PushTarget("apns", "../../x", TARGET.param), CALL)
    assert not_hex.outcome is PushOutcome.INVALID_TOKEN
    assert (await apns.provider.send(PushTarget("apns", TOKEN, "no-voip"), CALL)).outcome \
        is PushOutcome.FAILED
    assert apns.app.pushes == []


def test_apns_topic_is_the_pn_param_without_the_team_id() -> None:
    assert topic_of("TEAM1.org.example.app.voip") == "org.example.app.voip"
    assert topic_of("org.example.app") is None and topic_of("TEAM1.voip") is None


# --- the cluster ---------------------------------------------------------------------------------
async def test_a_registration_on_one_node_wakes_a_waiter_on_another(redis_url: str) -> None:
    node_a = Wakeups("node-a", redis_url)
    node_b = Wakeups("node-b", redis_url)
    await node_a.start()
    await node_b.start()
    try:
        watch = node_a.watch(ALICE)
        waiting = asyncio.create_task(watch.wait(10.0))
        node_b.registered(ALICE)
        started = time.monotonic()
        await asyncio.wait_for(waiting, 10.0)
        assert time.monotonic() - started < 5.0
        watch.close()
        assert node_a.waiting == 0
    finally:
        await node_a.close()
        await node_b.close()
