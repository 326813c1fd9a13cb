"""The registrar hands out GRUUs (RFC 5627 §6): a real gateway, in memory and on Redis, driven by
hand-written REGISTERs over WebSocket."""

from __future__ import annotations

import secrets
import uuid

from sip.message import Response
from sip.uri import SipUri
from tests.fixtures.gateway import GatewayProcess
from tests.gateway import test_websocket_edge as edge
from tests.gateway.test_websocket_edge import DOMAIN, ClientFactory
from tests.support.healthz import bindings_count, gateway_metrics_url
from tests.support.ws_sip import ws_contact

WITH_GRUU = [("Supported", "path, gruu, outbound")]  # what JsSIP sends

backend_gateway = edge.backend_gateway
client_factory = edge.client_factory


def gruu_params(ok: Response) -> dict[str, tuple[str | None, str | None]]:
    """Contact URI → (pub-gruu, temp-gruu) of a 200 to REGISTER."""
    return {
        contact.uri_text: (contact.params.get("pub-gruu"), contact.params.get("temp-gruu"))
        for contact in ok.contacts
    }


def supported(response: Response) -> set[str]:
    return response.option_tags("supported")


async def test_contact_with_an_instance_gets_a_public_and_a_new_temporary_gruu(
    backend_gateway: GatewayProcess, client_factory: ClientFactory,
) -> None:
    client = await client_factory(backend_gateway)
    password = backend_gateway.users["alice"]
    instance = str(uuid.uuid4())
    contact = ws_contact(instance, 1)
    uri = SipUri.parse(contact[1:contact.index(">")])
    call_id = secrets.token_hex(8)
    first = await client.register("alice", password, contacts=[contact], headers=WITH_GRUU,
                                  call_id=call_id, cseq=1)
    assert first.status == 200
    assert "gruu" in supported(first)
    public, temporary = gruu_params(first)[str(uri)]
    assert public == f"sip:alice@{DOMAIN};gr=urn:uuid:{instance}"
    assert temporary is not None
    temporary_uri = SipUri.parse(temporary)
    assert temporary_uri.host == DOMAIN and temporary_uri.params == {"gr": None}
    assert (temporary_uri.user or "").startswith("tgruu.")
    assert "alice" not in temporary and instance not in temporary
    refreshed = await client.register("alice", password, contacts=[contact],
                                      headers=WITH_GRUU, call_id=call_id, cseq=3)
    assert refreshed.status == 200
    public_again, temporary_again = gruu_params(refreshed)[str(uri)]
    assert public_again == public
    assert temporary_again is not None and temporary_again != temporary


async def test_no_gruu_without_supported_gruu_or_without_an_instance(
    backend_gateway: GatewayProcess, client_factory: ClientFactory,
) -> None:
    client = await client_factory(backend_gateway)
    password = backend_gateway.users["alice"]
    with_instance = ws_contact(str(uuid.uuid4()), 1)
    plain = await client.register("alice", password, contacts=[with_instance],
                                  headers=[("Supported", "path, outbound")])
    assert plain.status == 200
    assert "gruu" in supported(plain)  # the registrar says it could
    assert set(gruu_params(plain).values()) == {(None, None)}
    without_instance = await client.register("alice", password, contacts=[ws_contact()],
                                             headers=WITH_GRUU)
    assert without_instance.status == 200
    params = gruu_params(without_instance)
    assert len(params) == 2
    # The instance binding lists its GRUUs now that the client asks; the plain one never.
    assert sorted(public is not None for public, _ in params.values()) == [False, True]
    for public, temporary in params.values():
        assert (public is None) == (temporary is None)


async def test_require_gruu_is_accepted(
    backend_gateway: GatewayProcess, client_factory: ClientFactory,
) -> None:
    client = await client_factory(backend_gateway)
    ok = await client.register("alice", backend_gateway.users["alice"],
                               contacts=[ws_contact(str(uuid.uuid4()))],
                               headers=[("Supported", "gruu"), ("Require", "gruu")])
    assert ok.status == 200
    ((public, temporary),) = gruu_params(ok).values()
    assert public is not None and temporary is not None


async def test_registering_one_of_our_gruus_as_a_contact_is_403(
    backend_gateway: GatewayProcess, client_factory: ClientFactory,
) -> None:
    client = await client_factory(backend_gateway)
    password = backend_gateway.users["alice"]
    ok = await client.register("alice", password, contacts=[ws_contact(str(uuid.uuid4()))],
                               headers=WITH_GRUU)
    ((public, temporary),) = gruu_params(ok).values()
    base = gateway_metrics_url(backend_gateway)
    for gruu in (public, temporary):
        looped = await client.register("alice", password, contacts=[f"<{gruu}>"],
                                       headers=WITH_GRUU)
        assert looped.status == 403, gruu
    assert await bindings_count(base) == 1


async def test_options_answer_lists_gruu(
    backend_gateway: GatewayProcess, client_factory: ClientFactory,
) -> None:
    client = await client_factory(backend_gateway)
    await client.send_text(client.request_text(
        "OPTIONS", f"sip:{DOMAIN}", from_user="alice", to_user=None,
        call_id=secrets.token_hex(8), cseq=1,
    ))
    answer = await client.response()
    assert answer.status == 200
    assert supported(answer) == {"path", "outbound", "gruu"}
