"""The FCM HTTP v1 provider against a local stand-in for FCM and Google's OAuth token endpoint
(tests/support/push_services/fcm.py), over loopback HTTP/2 with TLS: the gateway's real client,
service-account assertion and message, checked the way Google checks them."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.config import ConfigError, PushSettings, load_config
from gateway.push.fcm import SCOPE, FcmProvider, ServiceAccount
from gateway.push.provider import PushKind, PushOutcome, PushRequest, PushTarget
from gateway.push.service import push_ssl_context
from tests.fixtures.gateway import GatewayFactory
from tests.support.push_services.fcm import FcmStandIn
from tests.support.push_services.server import serve_http2
from tests.support.ws_sip import WsSipUa

PROJECT = "ws2sip-test"
CALL = PushRequest(PushKind.INCOMING_CALL, "a84b4c76e66710@pc33", '"Alice" <sip:alice@example.com>',
                   "sip:bob@example.com")
DEVICE = PushTarget("fcm", "dGVzdC1yZWdpc3RyYXRpb24tdG9rZW4:APA91bH-device-1", PROJECT)


@dataclass
class Fcm:
    standin: FcmStandIn
    url: str
    ca_file: Path
    account_file: Path


@pytest.fixture
async def fcm(tmp_path: Path) -> AsyncIterator[Fcm]:
    standin, key = FcmStandIn.create(PROJECT)
    async with serve_http2(standin, tmp_path, "fcm") as server:
        standin.token_uri = f"{server.url}/token"
        account_file = tmp_path / "service-account.json"
        account_file.write_text(json.dumps(standin.service_account(key)))
        yield Fcm(standin, server.url, server.ca_file, account_file)


def trusting(ca_file: Path) -> ssl.SSLContext:
    return push_ssl_context(PushSettings(ca_file=str(ca_file)))


@pytest.fixture
async def provider(fcm: Fcm) -> AsyncIterator[FcmProvider]:
    sender = FcmProvider(ServiceAccount.load(str(fcm.account_file)), fcm_url=fcm.url,
                         verify=trusting(fcm.ca_file))
    yield sender
    await sender.close()


async def test_a_call_is_a_high_priority_data_message_sent_with_an_oauth_token(
        fcm: Fcm, provider: FcmProvider) -> None:
    result = await provider.send(DEVICE, CALL)

    assert result.outcome is PushOutcome.SENT, result.reason
    [message] = fcm.standin.messages
    assert message.http_version == "2"
    assert message.project == PROJECT and message.token == DEVICE.prid
    assert message.data == {"kind": "call", "call_id": CALL.call_id, "caller": CALL.caller,
                            "callee": CALL.callee}
    assert message.android["priority"] == "HIGH" and message.android["ttl"] == "30s"
    [claims] = fcm.standin.assertions  # the stand-in verified its RS256 signature
    assert claims["iss"] == f"firebase-adminsdk@{PROJECT}.iam.gserviceaccount.com"
    assert claims["scope"] == SCOPE and claims["aud"] == f"{fcm.url}/token"
    assert claims["exp"] - claims["iat"] == 3600


async def test_one_token_serves_concurrent_pushes_and_is_renewed_before_it_expires(
        fcm: Fcm, provider: FcmProvider) -> None:
    fcm.standin.token_lifetime = 2  # renewed halfway: after 1 s
    cancel = PushRequest(PushKind.CALL_CANCELLED, CALL.call_id, CALL.caller, CALL.callee)

    results = await asyncio.gather(*(provider.send(DEVICE, cancel) for _ in range(8)))

    assert [r.outcome for r in results] == [PushOutcome.SENT] * 8
    assert len(fcm.standin.assertions) == 1, "one token exchange for eight pushes"
    assert len({m.access_token for m in fcm.standin.messages}) == 1
    assert {m.data["kind"] for m in fcm.standin.messages} == {"cancel"}

    await asyncio.sleep(1.2)
    assert (await provider.send(DEVICE, CALL)).outcome is PushOutcome.SENT
    assert len(fcm.standin.assertions) == 2
    assert fcm.standin.messages[-1].access_token != fcm.standin.messages[0].access_token


async def test_a_calls_pushes_and_its_cancel_share_a_collapse_key(
        fcm: Fcm, provider: FcmProvider) -> None:
    cancel = PushRequest(PushKind.CALL_CANCELLED, CALL.call_id, CALL.caller, CALL.callee)
    other_call = PushRequest(PushKind.INCOMING_CALL, "another-call", CALL.caller, CALL.callee)

    for request in (CALL, cancel, other_call):
        assert (await provider.send(DEVICE, request)).outcome is PushOutcome.SENT

    call, cancelled, other = (m.android["collapse_key"] for m in fcm.standin.messages)
    assert call == cancelled != other and CALL.call_id not in call


async def test_a_revoked_token_is_replaced_once(fcm: Fcm, provider: FcmProvider) -> None:
    assert (await provider.send(DEVICE, CALL)).outcome is PushOutcome.SENT
    fcm.standin.revoke_tokens()

    result = await provider.send(DEVICE, CALL)

    assert result.outcome is PushOutcome.SENT, result.reason
    assert fcm.standin.refusals == [(401, "Request had invalid authentication credentials. "
                                          "Expected OAuth 2 access token.")]
    assert len(fcm.standin.assertions) == 2 and len(fcm.standin.messages) == 2


async def test_pn_param_names_the_project_and_defaults_to_the_service_accounts(
        fcm: Fcm, provider: FcmProvider) -> None:
    without_param = PushTarget("fcm", DEVICE.prid)
    assert (await provider.send(without_param, CALL)).outcome is PushOutcome.SENT
    assert fcm.standin.messages[-1].project == PROJECT

    result = await provider.send(PushTarget("fcm", DEVICE.prid, "someone-elses-app"), CALL)

    assert result.outcome is PushOutcome.FAILED
    assert "403 SENDER_ID_MISMATCH" in result.reason
    # pn-param goes into the URL's path: only a project id's characters may.
    escape = await provider.send(PushTarget("fcm", DEVICE.prid, "../../v1/other"), CALL)
    assert escape.outcome is PushOutcome.INVALID_TOKEN
    assert "is not a Firebase project id" in escape.reason
    assert len(fcm.standin.messages) == 1 and len(fcm.standin.refusals) == 1


async def test_an_unregistered_or_malformed_registration_token_is_invalid(
        fcm: Fcm, provider: FcmProvider) -> None:
    fcm.standin.unregistered.add(DEVICE.prid)

    gone = await provider.send(DEVICE, CALL)
    malformed = await provider.send(PushTarget("fcm", "not a token", PROJECT), CALL)

    assert gone.outcome is PushOutcome.INVALID_TOKEN
    assert gone.reason.startswith("FCM 404 UNREGISTERED")
    assert malformed.outcome is PushOutcome.INVALID_TOKEN
    assert malformed.reason.startswith("FCM 400 INVALID_ARGUMENT")
    assert not fcm.standin.messages


async def test_a_server_error_fails_the_push_and_the_next_one_goes_through(
        fcm: Fcm, provider: FcmProvider) -> None:
    fcm.standin.fail_next = [503, 500]

    unavailable = await provider.send(DEVICE, CALL)
    internal = await provider.send(DEVICE, CALL)
    recovered = await provider.send(DEVICE, CALL)

    assert unavailable.outcome is PushOutcome.FAILED
    assert unavailable.reason.startswith("FCM 503 UNAVAILABLE")
    assert internal.outcome is PushOutcome.FAILED and internal.reason.startswith("FCM 500")
    assert recovered.outcome is PushOutcome.SENT


async def test_an_assertion_signed_by_another_key_gets_no_token(fcm: Fcm) -> None:
    _, other_key = FcmStandIn.create(PROJECT)
    path = fcm.account_file.with_name("impostor.json")
    path.write_text(json.dumps(fcm.standin.service_account(other_key)))
    sender = FcmProvider(ServiceAccount.load(str(path)), fcm_url=fcm.url,
                         verify=trusting(fcm.ca_file))
    try:
        results = await asyncio.gather(*(sender.send(DEVICE, CALL) for _ in range(5)))
        later = await sender.send(DEVICE, CALL)
    finally:
        await sender.close()

    for result in (*results, later):
        assert result.outcome is PushOutcome.FAILED
        assert result.reason.startswith("FCM OAuth token: 400 Invalid JWT")
    assert not fcm.standin.assertions and not fcm.standin.messages
    # Pushes that queued behind the refused exchange fail with it; a later push tries again.
    assert fcm.standin.token_requests == 2


async def test_an_unreachable_service_fails_the_push(fcm: Fcm) -> None:
    account = ServiceAccount.load(str(fcm.account_file))
    nowhere = "https://127.0.0.1:9"  # discard: nothing listens
    sender = FcmProvider(dataclasses.replace(account, token_uri=f"{nowhere}/token"),
                         fcm_url=nowhere, verify=trusting(fcm.ca_file))
    try:
        result = await sender.send(DEVICE, CALL)
    finally:
        await sender.close()

    assert result.outcome is PushOutcome.FAILED
    assert "unreachable: ConnectError" in result.reason


async def test_the_push_table_configures_the_provider(fcm: Fcm, tmp_path: Path) -> None:
    config_file = tmp_path / "ws2sip.toml"
    config_file.write_text(
        f'[push]\nfcm_service_account = "{fcm.account_file}"\nfcm_url = "{fcm.url}"\n'
        f'ca_file = "{fcm.ca_file}"\nwait = 12\n')
    settings = load_config(str(config_file), {}).push
    sender = FcmProvider.from_settings(settings, push_ssl_context(settings))
    assert sender is not None
    try:
        assert (await sender.send(DEVICE, CALL)).outcome is PushOutcome.SENT
    finally:
        await sender.close()
    assert fcm.standin.messages[0].android["ttl"] == "12s"  # no use after the call's wait

    off = load_config(None, {}).push
    assert FcmProvider.from_settings(off, push_ssl_context(off)) is None  # FCM off by default
    not_an_account = tmp_path / "key.json"
    not_an_account.write_text('{"type": "authorized_user"}')
    settings = load_config(None, {"push_fcm_service_account": str(not_an_account)}).push
    with pytest.raises(SystemExit, match="ws2sip: push.fcm_service_account .*not a "
                       "service-account key file"):
        FcmProvider.from_settings(settings, push_ssl_context(settings))
    config_file.write_text('[push]\nfcm_token = "x"\n')
    with pytest.raises(ConfigError, match="unknown setting push.fcm_token"):
        load_config(str(config_file), {})


async def test_the_gateway_pushes_a_call_to_a_sleeping_android_app(
        fcm: Fcm, gateway_factory: GatewayFactory) -> None:
    users = {"alice": secrets.token_urlsafe(12), "bob": secrets.token_urlsafe(12)}
    gateway = await gateway_factory(users=users, transports=("ws",), extra_args=[
        "--push-fcm-service-account", str(fcm.account_file), "--push-fcm-url", fcm.url,
        "--push-ca-file", str(fcm.ca_file), "--push-wait", "2", "--push-repeat", "2",
    ])
    bob = await WsSipUa.connect(gateway.ws_url, "bob", users["bob"], domain=gateway.domain)
    contact = (f"<sip:bob@{bob.host};transport=ws;pn-provider=fcm;pn-prid={DEVICE.prid};"
               f"pn-param={PROJECT}>"
               f';+sip.instance="<urn:uuid:{secrets.token_hex(4)}-0000-4000-8000-000000000000>"')
    registered = await bob.register(contacts=[contact])
    assert registered.status == 200, registered
    assert 'sip.pns="fcm"' in (registered.get("feature-caps") or "")
    await bob.close()  # the app is suspended: its binding stays, with the push parameters

    alice = await WsSipUa.connect(gateway.ws_url, "alice", users["alice"], domain=gateway.domain)
    try:
        call = asyncio.create_task(alice.call("bob"))
        [push] = await fcm.standin.wait_for_messages(1, timeout=15)
        final, _ = await call
    finally:
        await alice.close()

    assert push.token == DEVICE.prid and push.project == PROJECT
    assert push.data["kind"] == "call" and push.data["callee"].startswith("sip:bob@")
    assert "alice" in push.data["caller"] and push.android["ttl"] == "2s"
    assert final.status == 480  # bob never came back within push.wait
