"""The Web Push provider against a local stand-in push service and browser
(tests/support/push_services/webpush.py), over loopback HTTP/2 with TLS: the stand-in checks
the VAPID signature, claims and headers, and decrypts the payload with the subscription's own
keys (RFC 8291 implemented there independently of the gateway's library)."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.config import ConfigError, PushSettings, load_config
from gateway.push.provider import PushKind, PushOutcome, PushRequest, PushTarget
from gateway.push.service import push_ssl_context
from gateway.push.webpush import (
    WebPushProvider,
    encrypt_payload,
    load_vapid_key,
    vapid_public_key,
)
from tests.fixtures.gateway import GatewayFactory
from tests.support.push_services.server import serve_http2
from tests.support.push_services.webpush import (
    Subscription,
    WebPushStandIn,
    b64url_decode,
    decrypt,
)
from tests.support.ws_sip import WsSipUa

SUBJECT = "mailto:ops@example.com"
CALL = PushRequest(PushKind.INCOMING_CALL, "a84b4c76e66710@pc33", '"Alice" <sip:alice@example.com>',
                   "sip:bob@example.com")


# RFC 8291 Appendix A: the user agent's keys, the application server's key and salt, the body.
RFC8291_UA_PRIVATE = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"
RFC8291_UA_PUBLIC = ("BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6S"
                     "RpkNtoIAiw4")
RFC8291_AUTH = "BTBZMqHH6r4Tts7J_aSIgg"
RFC8291_AS_PRIVATE = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"
RFC8291_SALT = "DGv6ra1nlYgDCS1FRnbzlw"
RFC8291_PLAINTEXT = b"When I grow up, I want to be a watermelon"
RFC8291_BODY = ("DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3"
                "vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXP"
                "XLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN")


def test_the_payload_encryption_reproduces_rfc_8291s_example() -> None:
    sender = ec.derive_private_key(int.from_bytes(b64url_decode(RFC8291_AS_PRIVATE)),
                                   ec.SECP256R1())

    body = encrypt_payload(RFC8291_PLAINTEXT, f"{RFC8291_UA_PUBLIC}.{RFC8291_AUTH}",
                           salt=b64url_decode(RFC8291_SALT), sender_key=sender)

    assert body == b64url_decode(RFC8291_BODY)


def test_the_stand_in_browser_decrypts_rfc_8291s_example() -> None:
    browser = ec.derive_private_key(int.from_bytes(b64url_decode(RFC8291_UA_PRIVATE)),
                                    ec.SECP256R1())

    assert decrypt(b64url_decode(RFC8291_BODY), browser, b64url_decode(RFC8291_AUTH)) == \
        RFC8291_PLAINTEXT


@dataclass
class PushService:
    standin: WebPushStandIn
    url: str
    ca_file: Path
    vapid_key_file: Path


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[PushService]:
    standin = WebPushStandIn()
    async with serve_http2(standin, tmp_path, "webpush") as server:
        standin.origin = server.url
        key_file = tmp_path / "vapid.pem"
        key_file.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()))
        yield PushService(standin, server.url, server.ca_file, key_file)


@pytest.fixture
async def provider(service: PushService) -> AsyncIterator[WebPushProvider]:
    sender = WebPushProvider(load_vapid_key(str(service.vapid_key_file)), SUBJECT,
                             verify=push_ssl_context(PushSettings(ca_file=str(service.ca_file))))
    yield sender
    await sender.close()


def with_keys(subscription: Subscription) -> PushTarget:
    """A binding whose Contact carried the subscription's keys (ws2sip's pn-param)."""
    return PushTarget("webpush", subscription.endpoint,
                      f"{subscription.p256dh}.{subscription.auth}")


async def test_a_call_is_pushed_encrypted_to_the_subscription_signed_with_vapid(
        service: PushService, provider: WebPushProvider) -> None:
    # The web app subscribed with the key the registrar announced in +sip.vapid.
    subscription = service.standin.subscribe(application_server_key=provider.vapid_public_key)

    result = await provider.send(with_keys(subscription), CALL)

    assert result.outcome is PushOutcome.SENT, result.reason
    [message] = service.standin.messages
    assert message.http_version == "2"
    assert json.loads(message.plaintext) == {"kind": "call", "call_id": CALL.call_id,
                                             "caller": CALL.caller, "callee": CALL.callee}
    assert message.urgency == "high" and message.ttl == 30
    assert message.vapid_key == provider.vapid_public_key
    assert message.vapid_claims["aud"] == service.url and message.vapid_claims["sub"] == SUBJECT
    assert time.time() < message.vapid_claims["exp"] <= time.time() + 24 * 3600


async def test_the_vapid_key_announced_is_the_key_files_public_point(
        service: PushService, provider: WebPushProvider) -> None:
    public = load_vapid_key(str(service.vapid_key_file)).public_key()
    announced = b64url_decode(provider.vapid_public_key)

    assert len(announced) == 65 and announced[0] == 4  # uncompressed P-256 point
    assert ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), announced) == public
    assert "=" not in provider.vapid_public_key  # base64url without padding
    assert vapid_public_key(load_vapid_key(str(service.vapid_key_file))) == \
        provider.vapid_public_key


async def test_a_binding_without_keys_gets_pushes_without_payload(
        service: PushService, provider: WebPushProvider) -> None:
    subscription = service.standin.subscribe()  # RFC 8599: pn-prid only, no pn-param
    target = PushTarget("webpush", subscription.endpoint)
    cancel = PushRequest(PushKind.CALL_CANCELLED, CALL.call_id, CALL.caller, CALL.callee)
    other_call = PushRequest(PushKind.INCOMING_CALL, "another-call", CALL.caller, CALL.callee)

    results = [await provider.send(target, request) for request in (CALL, cancel, other_call)]

    assert [r.outcome for r in results] == [PushOutcome.SENT] * 3, results
    call, cancelled, other = service.standin.messages
    assert call.plaintext == cancelled.plaintext == b"" and call.urgency == "high"
    # The cancel replaces its call's push where the service still holds it; another call not.
    assert call.topic == cancelled.topic != other.topic
    assert CALL.call_id not in call.topic
    assert call.vapid_claims == other.vapid_claims  # one VAPID JWT per origin, reused


async def test_a_gone_or_unknown_subscription_is_an_invalid_token(
        service: PushService, provider: WebPushProvider) -> None:
    subscription = service.standin.subscribe()
    subscription.gone = True

    gone = await provider.send(with_keys(subscription), CALL)
    unknown = await provider.send(PushTarget("webpush", f"{service.url}/push/never"), CALL)

    assert gone.outcome is PushOutcome.INVALID_TOKEN and " 410: " in gone.reason
    assert unknown.outcome is PushOutcome.INVALID_TOKEN and " 404: " in unknown.reason
    assert not service.standin.messages


async def test_a_subscription_restricted_to_another_server_refuses_the_push(
        service: PushService, provider: WebPushProvider) -> None:
    other_server = vapid_public_key(ec.generate_private_key(ec.SECP256R1()))
    subscription = service.standin.subscribe(application_server_key=other_server)

    result = await provider.send(with_keys(subscription), CALL)

    assert result.outcome is PushOutcome.FAILED
    assert "403: k is not the key the subscription is restricted to" in result.reason


async def test_a_payload_encrypted_to_other_keys_is_refused(
        service: PushService, provider: WebPushProvider) -> None:
    subscription = service.standin.subscribe()
    someone_else = service.standin.subscribe()
    target = PushTarget("webpush", subscription.endpoint,
                        f"{someone_else.p256dh}.{someone_else.auth}")

    result = await provider.send(target, CALL)

    assert result.outcome is PushOutcome.FAILED
    assert "400: payload does not decrypt with the subscription's keys" in result.reason


async def test_unusable_push_parameters_are_an_invalid_token(
        service: PushService, provider: WebPushProvider) -> None:
    subscription = service.standin.subscribe()

    plain_http = await provider.send(PushTarget("webpush", "http://push.example/abc"), CALL)
    not_keys = await provider.send(PushTarget("webpush", subscription.endpoint, "abc"), CALL)
    short_auth = await provider.send(
        PushTarget("webpush", subscription.endpoint, f"{subscription.p256dh}.AAAA"), CALL)

    assert plain_http.outcome is PushOutcome.INVALID_TOKEN
    assert "not an https push subscription URI" in plain_http.reason
    assert not_keys.outcome is PushOutcome.INVALID_TOKEN
    assert short_auth.outcome is PushOutcome.INVALID_TOKEN
    assert "65-byte key and a 16-byte secret, got 65 and 3 bytes" in short_auth.reason
    assert not service.standin.messages and not service.standin.refusals


async def test_the_push_table_configures_the_provider(service: PushService,
                                                     tmp_path: Path) -> None:
    config_file = tmp_path / "ws2sip.toml"
    config_file.write_text(
        f'[push]\nwebpush_vapid_key_file = "{service.vapid_key_file}"\n'
        f'webpush_subject = "{SUBJECT}"\nca_file = "{service.ca_file}"\nwait = 12\n')
    settings = load_config(str(config_file), {}).push
    sender = WebPushProvider.from_settings(settings, push_ssl_context(settings))
    assert sender is not None
    subscription = service.standin.subscribe(application_server_key=sender.vapid_public_key)
    try:
        assert (await sender.send(with_keys(subscription), CALL)).outcome is PushOutcome.SENT
    finally:
        await sender.close()
    assert service.standin.messages[0].ttl == 12  # no use after the call's wait

    off = load_config(None, {}).push
    assert WebPushProvider.from_settings(off, push_ssl_context(off)) is None  # off by default
    with pytest.raises(ConfigError, match="webpush_subject"):
        load_config(None, {"push_webpush_vapid_key_file": str(service.vapid_key_file)})
    not_a_key = tmp_path / "not-a-key.pem"
    not_a_key.write_text("not a key")
    settings = load_config(None, {"push_webpush_vapid_key_file": str(not_a_key),
                                  "push_webpush_subject": SUBJECT}).push
    with pytest.raises(SystemExit, match="ws2sip: push.webpush_vapid_key_file"):
        WebPushProvider.from_settings(settings, push_ssl_context(settings))


async def test_the_gateway_pushes_a_call_to_a_sleeping_browser(
        service: PushService, gateway_factory: GatewayFactory) -> None:
    users = {"alice": secrets.token_urlsafe(12), "bob": secrets.token_urlsafe(12)}
    gateway = await gateway_factory(users=users, transports=("ws",), extra_args=[
        "--push-webpush-vapid-key-file", str(service.vapid_key_file),
        "--push-webpush-subject", SUBJECT, "--push-ca-file", str(service.ca_file),
        "--push-wait", "2", "--push-repeat", "2",
    ])
    vapid = vapid_public_key(load_vapid_key(str(service.vapid_key_file)))
    subscription = service.standin.subscribe(application_server_key=vapid)
    bob = await WsSipUa.connect(gateway.ws_url, "bob", users["bob"], domain=gateway.domain)
    contact = (f"<sip:bob@{bob.host};transport=ws;pn-provider=webpush;"
               f"pn-prid={subscription.endpoint};"
               f"pn-param={subscription.p256dh}.{subscription.auth}>"
               f';+sip.instance="<urn:uuid:{secrets.token_hex(4)}-0000-4000-8000-000000000000>"')
    registered = await bob.register(contacts=[contact])
    assert registered.status == 200, registered
    # RFC 8599: the app learns the key its subscription must be restricted to from +sip.vapid.
    assert registered.get("feature-caps") == f'*;+sip.pns="webpush";+sip.vapid="{vapid}"'
    await bob.close()  # the browser's tab sleeps: its binding stays, with the push parameters

    alice = await WsSipUa.connect(gateway.ws_url, "alice", users["alice"], domain=gateway.domain)
    try:
        call = asyncio.create_task(alice.call("bob"))
        [push] = await service.standin.wait_for_messages(1, timeout=15)
        final, _ = await call
    finally:
        await alice.close()

    details = json.loads(push.plaintext)
    assert details["kind"] == "call" and details["callee"].startswith("sip:bob@")
    assert "alice" in details["caller"] and details["call_id"]
    assert push.urgency == "high" and push.vapid_key == vapid
    assert final.status == 480  # bob never came back within push.wait
