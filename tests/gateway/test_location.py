"""Location service behaviour, run against the in-memory and the real-Redis backend alike."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis
import redis.asyncio as aioredis

from gateway.location import (
    Binding,
    ContactChange,
    LocationService,
    MemoryLocationService,
    NodeHeartbeat,
    NodeInfo,
    OutOfOrderRegister,
    RedisLocationService,
    RegisterChange,
    apply_register,
    open_location_service,
)
from gateway.location.aor_cache import AorCache
from gateway.location.codec import decode_binding, encode_binding
from gateway.location.keyed_lock import KeyedLock
from gateway.location.resp_pipe import RespPipe, RespPipeError
from tests.fixtures.redis_server import RedisServer

ALICE = "sip:alice@example.com"
BOB = "sip:bob@example.com"
INSTANCE = "<urn:uuid:00000000-0000-1000-8000-000a95a0e128>"


def contact(
    uri: str,
    expires: int = 600,
    q: float = 1.0,
    instance: str | None = None,
    reg_id: int | None = None,
) -> ContactChange:
    return ContactChange(uri, expires, q, instance, reg_id)


def change(
    *contacts: ContactChange,
    aor: str = ALICE,
    call_id: str = "call-1",
    cseq: int = 1,
    remove_all: bool = False,
    node: str = "node-a",
    connection: str = "ws-1",
    now: float | None = None,
    max_contacts: int = 100,  # above the gateway's default: some tests bind 60 devices
) -> RegisterChange:
    return RegisterChange(
        aor=aor,
        call_id=call_id,
        cseq=cseq,
        contacts=contacts,
        remove_all=remove_all,
        node_id=node,
        connection_id=connection,
        transport="wss",
        received="127.0.0.1:40000",
        path=("<sip:edge.example.com;lr>",),
        user_agent="JsSIP 3.10.0",
        now=time.time() if now is None else now,
        max_contacts=max_contacts,
    )


async def test_register_stores_binding_as_sent(location_backend: LocationService) -> None:
    uri = "sip:k3j2@df7jal23ls0d.invalid;transport=ws"
    request = change(contact(uri, expires=300, q=0.7, instance=INSTANCE, reg_id=1))
    returned = await location_backend.register(request)
    assert returned == await location_backend.lookup(ALICE)
    (binding,) = returned
    assert binding.contact == uri
    assert binding.expires_at == request.now + 300
    assert binding.expires_in(request.now) == 300
    assert (binding.q, binding.call_id, binding.cseq) == (0.7, "call-1", 1)
    assert (binding.instance_id, binding.reg_id) == (INSTANCE, 1)
    assert (binding.node_id, binding.connection_id, binding.transport) == ("node-a", "ws-1", "wss")
    assert binding.received == "127.0.0.1:40000"
    assert binding.path == ("<sip:edge.example.com;lr>",)
    assert binding.user_agent == "JsSIP 3.10.0"
    assert binding.registered_at == request.now
    assert await location_backend.lookup(BOB) == []
    assert await location_backend.count() == 1


async def test_refresh_updates_expiry_without_duplicating(
    location_backend: LocationService,
) -> None:
    await location_backend.register(change(contact("sip:a@10.0.0.1", expires=60)))
    now = time.time()
    await location_backend.register(change(contact("sip:a@10.0.0.1", expires=900), cseq=2, now=now))
    (binding,) = await location_backend.lookup(ALICE)
    assert (binding.cseq, binding.expires_at) == (2, now + 900)


async def test_fetch_returns_bindings_unchanged(location_backend: LocationService) -> None:
    stored = await location_backend.register(change(contact("sip:a@10.0.0.1")))
    assert await location_backend.register(change(call_id="other", cseq=1)) == stored
    assert await location_backend.lookup(ALICE) == stored


async def test_expires_zero_removes_only_that_contact(location_backend: LocationService) -> None:
    await location_backend.register(change(contact("sip:a@10.0.0.1"), contact("sip:b@10.0.0.2")))
    remaining = await location_backend.register(change(contact("sip:a@10.0.0.1", 0), cseq=2))
    assert [b.contact for b in remaining] == ["sip:b@10.0.0.2"]
    assert [b.contact for b in await location_backend.lookup(ALICE)] == ["sip:b@10.0.0.2"]


async def test_contact_uri_comparison(location_backend: LocationService) -> None:
    await location_backend.register(change(contact("sip:Alice@EXAMPLE.org;transport=ws;ob")))
    # same binding: host case and parameter order do not matter
    await location_backend.register(
        change(contact("<sip:Alice@example.org;ob;transport=WS>", expires=0), cseq=2)
    )
    assert await location_backend.lookup(ALICE) == []
    await location_backend.register(change(contact("sip:Alice@example.org"), cseq=3))
    # a user part differing in case is another binding
    bindings = await location_backend.register(change(contact("sip:alice@example.org"), cseq=4))
    assert sorted(b.contact for b in bindings) == ["sip:Alice@example.org", "sip:alice@example.org"]


async def test_star_removes_all(location_backend: LocationService) -> None:
    await location_backend.register(change(contact("sip:a@10.0.0.1"), call_id="c1"))
    await location_backend.register(change(contact("sip:b@10.0.0.2"), call_id="c2", cseq=7))
    assert await location_backend.register(change(remove_all=True, call_id="c3")) == []
    assert await location_backend.lookup(ALICE) == []
    assert await location_backend.count() == 0


async def test_star_with_stale_cseq_is_out_of_order(location_backend: LocationService) -> None:
    await location_backend.register(change(contact("sip:a@10.0.0.1"), call_id="c1"))
    await location_backend.register(change(contact("sip:b@10.0.0.2"), call_id="c2", cseq=7))
    with pytest.raises(OutOfOrderRegister):
        await location_backend.register(change(remove_all=True, call_id="c2", cseq=7))
    assert len(await location_backend.lookup(ALICE)) == 2


async def test_same_call_id_needs_higher_cseq(location_backend: LocationService) -> None:
    await location_backend.register(change(contact("sip:a@10.0.0.1", expires=600), cseq=5))
    for stale_cseq in (5, 4):
        with pytest.raises(OutOfOrderRegister, match="CSeq"):
            await location_backend.register(
                change(
                    contact("sip:a@10.0.0.1", expires=0),
                    contact("sip:new@10.0.0.9"),
                    cseq=stale_cseq,
                )
            )
    # the whole request was refused: no removal, no new contact
    (binding,) = await location_backend.lookup(ALICE)
    assert (binding.contact, binding.cseq) == ("sip:a@10.0.0.1", 5)


async def test_new_call_id_replaces_with_any_cseq(location_backend: LocationService) -> None:
    await location_backend.register(change(contact("sip:a@10.0.0.1"), call_id="old", cseq=50))
    await location_backend.register(change(contact("sip:a@10.0.0.1"), call_id="new", cseq=1))
    (binding,) = await location_backend.lookup(ALICE)
    assert (binding.call_id, binding.cseq) == ("new", 1)


async def test_lookup_orders_by_q_then_newest(location_backend: LocationService) -> None:
    now = time.time()
    await location_backend.register(
        change(
            contact("sip:low@10.0.0.1", q=0.1),
            contact("sip:high@10.0.0.2", q=1.0),
            contact("sip:mid-old@10.0.0.3", q=0.5),
            call_id="c1",
            now=now - 10,
        )
    )
    await location_backend.register(
        change(contact("sip:mid-new@10.0.0.4", q=0.5), call_id="c2", now=now)
    )
    order = [b.contact for b in await location_backend.lookup(ALICE)]
    assert order == [
        "sip:high@10.0.0.2",
        "sip:mid-new@10.0.0.4",
        "sip:mid-old@10.0.0.3",
        "sip:low@10.0.0.1",
    ]


async def test_instance_and_reg_id_replace_flow_from_new_connection(
    location_backend: LocationService,
) -> None:
    await location_backend.register(
        change(
            contact("sip:x@192.0.2.1;transport=ws", instance=INSTANCE, reg_id=1), connection="ws-1"
        )
    )
    await location_backend.register(
        change(
            contact("sip:x@192.0.2.1;transport=ws", instance=INSTANCE, reg_id=2), connection="ws-1"
        )
    )
    # the phone changed network: new address, new connection, new Call-ID
    await location_backend.register(
        change(
            contact("sip:y@198.51.100.7;transport=ws", instance=INSTANCE, reg_id=1),
            call_id="after-handover",
            connection="ws-9",
        )
    )
    bindings = await location_backend.lookup(ALICE)
    by_reg_id = {b.reg_id: b for b in bindings}
    assert len(bindings) == 2
    assert (by_reg_id[1].contact, by_reg_id[1].connection_id) == (
        "sip:y@198.51.100.7;transport=ws",
        "ws-9",
    )
    assert by_reg_id[2].connection_id == "ws-1"
    # the old connection closing must not take the replaced flow with it
    removed = await location_backend.remove_connection("node-a", "ws-1")
    assert [b.reg_id for b in removed] == [2]
    assert [b.connection_id for b in await location_backend.lookup(ALICE)] == ["ws-9"]


async def test_expired_bindings_disappear(location_backend: LocationService) -> None:
    long_ago = time.time() - 3600
    await location_backend.register(change(contact("sip:a@10.0.0.1", expires=60), now=long_ago))
    assert await location_backend.lookup(ALICE) == []
    assert await location_backend.count() == 0
    assert await location_backend.remove_connection("node-a", "ws-1") == []
    # an expired binding's Call-ID/CSeq no longer constrain anything
    fresh = await location_backend.register(change(contact("sip:a@10.0.0.1"), cseq=1))
    assert len(fresh) == 1


async def test_concurrent_registers_lose_nothing(location_backend: LocationService) -> None:
    devices = 40
    await asyncio.gather(
        *(
            location_backend.register(
                change(contact(f"sip:dev{i}@10.0.1.{i}"), call_id=f"call-{i}", connection=f"ws-{i}")
            )
            for i in range(devices)
        )
    )
    bindings = await location_backend.lookup(ALICE)
    assert sorted(b.contact for b in bindings) == sorted(
        f"sip:dev{i}@10.0.1.{i}" for i in range(devices)
    )
    assert await location_backend.count() == devices


async def test_bindings_past_max_contacts_drop_the_least_recently_registered(
    location_backend: LocationService,
) -> None:
    now = time.time()
    for index in range(4):
        await location_backend.register(change(
            contact(f"sip:dev{index}@10.0.2.{index}"), call_id=f"c{index}",
            now=now + index, max_contacts=2))
    bindings = await location_backend.lookup(ALICE)
    assert sorted(b.contact for b in bindings) == ["sip:dev2@10.0.2.2", "sip:dev3@10.0.2.3"]
    assert await location_backend.count() == 2


async def test_remove_connection_drops_only_its_bindings(
    location_backend: LocationService,
) -> None:
    await location_backend.register(change(contact("sip:a@10.0.0.1"), connection="ws-1"))
    await location_backend.register(
        change(contact("sip:a2@10.0.0.2"), call_id="c2", connection="ws-2")
    )
    await location_backend.register(change(contact("sip:b@10.0.0.3"), aor=BOB, connection="ws-1"))
    await location_backend.register(
        change(contact("sip:other-node@10.0.0.4"), aor=BOB, node="node-b", connection="ws-1")
    )
    removed = await location_backend.remove_connection("node-a", "ws-1")
    assert sorted(b.contact for b in removed) == ["sip:a@10.0.0.1", "sip:b@10.0.0.3"]
    assert [b.contact for b in await location_backend.lookup(ALICE)] == ["sip:a2@10.0.0.2"]
    assert [b.contact for b in await location_backend.lookup(BOB)] == ["sip:other-node@10.0.0.4"]
    assert await location_backend.remove_connection("node-a", "ws-1") == []


async def test_live_nodes_and_purge_of_dead_node(location_backend: LocationService) -> None:
    alive = NodeInfo("node-a", "10.0.0.1:5060;transport=tcp", time.time())
    dying = NodeInfo("node-b", "10.0.0.2:5060;transport=tcp", time.time())
    await location_backend.announce_node(alive, ttl=60)
    await location_backend.announce_node(dying, ttl=0.05)
    await location_backend.register(change(contact("sip:a@10.0.0.1"), node="node-a"))
    await location_backend.register(
        change(contact("sip:b1@10.0.0.2"), call_id="b1", node="node-b", connection="tcp-1")
    )
    await location_backend.register(
        change(contact("sip:b2@10.0.0.2"), aor=BOB, node="node-b", connection="tcp-2")
    )
    await _wait_for(lambda: _node_gone(location_backend, "node-b"))
    assert await location_backend.live_nodes() == {"node-a": alive}
    assert await location_backend.purge_dead_nodes() == 2
    assert [b.node_id for b in await location_backend.lookup(ALICE)] == ["node-a"]
    assert await location_backend.lookup(BOB) == []
    assert await location_backend.purge_dead_nodes() == 0


async def test_heartbeat_keeps_node_alive_and_reaps_dead_one(
    location_backend: LocationService,
) -> None:
    info = NodeInfo("node-a", "10.0.0.1:5060;transport=tcp", time.time())
    await location_backend.announce_node(NodeInfo("node-b", "10.0.0.2:5060", 0.0), ttl=0.05)
    await location_backend.register(change(contact("sip:b@10.0.0.2"), node="node-b"))
    heartbeat = NodeHeartbeat(location_backend, info, interval=0.02, ttl=0.5)
    await heartbeat.start()
    try:
        assert "node-a" in await location_backend.live_nodes()
        await _wait_for(lambda: _no_bindings(location_backend, ALICE))
        assert await location_backend.live_nodes() == {"node-a": info}
    finally:
        await heartbeat.stop()


async def test_open_location_service_picks_backend(redis_url: str) -> None:
    memory = open_location_service(None)
    shared = open_location_service(redis_url)
    try:
        assert isinstance(memory, MemoryLocationService)
        assert isinstance(shared, RedisLocationService)
    finally:
        await memory.close()
        await shared.close()


async def test_redis_keys_expire_with_bindings(redis_url: str) -> None:
    location = RedisLocationService(redis_url)
    client = aioredis.from_url(redis_url)
    try:
        now = time.time()
        await location.register(
            change(
                contact("sip:a@10.0.0.1", expires=100),
                contact("sip:b@10.0.0.2", expires=900),
                now=now,
            )
        )
        await location.announce_node(NodeInfo("node-a", "10.0.0.1:5060", now), ttl=15)
        aor_ttl = await client.pttl("ws2sip:loc:{sip:alice@example.com}")
        flow_ttl = await client.pttl("ws2sip:node:{node-a}:flow:ws-1")
        node_ttl = await client.pttl("ws2sip:node:{node-a}")
        assert 800_000 < aor_ttl <= 900_000
        assert 800_000 < flow_ttl <= 900_000
        assert 0 < node_ttl <= 15_000
        await location.register(change(contact("sip:b@10.0.0.2", expires=0), cseq=2))
        assert 0 < await client.pttl("ws2sip:loc:{sip:alice@example.com}") <= 100_000
        await location.register(change(contact("sip:a@10.0.0.1", expires=0), cseq=3))
        assert await client.exists("ws2sip:loc:{sip:alice@example.com}") == 0
    finally:
        await client.aclose()
        await location.close()


async def test_redis_bindings_survive_gateway_restart(redis_url: str) -> None:
    before = RedisLocationService(redis_url)
    stored = await before.register(change(contact("sip:a@10.0.0.1", instance=INSTANCE, reg_id=1)))
    await before.close()
    after = RedisLocationService(redis_url)
    try:
        assert await after.lookup(ALICE) == stored
        assert [b.contact for b in await after.remove_connection("node-a", "ws-1")] == [
            "sip:a@10.0.0.1"
        ]
    finally:
        await after.close()


def test_binding_codec_round_trip() -> None:
    binding = apply_register([], change(contact("sip:ü@10.0.0.1", instance=INSTANCE, reg_id=3)))[0]
    assert decode_binding(encode_binding(binding)) == binding
    assert decode_binding(encode_binding(binding).encode()) == binding


def test_apply_register_is_pure_and_drops_expired() -> None:
    now = time.time()
    current = apply_register([], change(contact("sip:a@10.0.0.1", expires=10), now=now))
    snapshot = list(current)
    later = apply_register(current, change(contact("sip:b@10.0.0.2"), call_id="c2", now=now + 11))
    assert current == snapshot
    assert [b.contact for b in later] == ["sip:b@10.0.0.2"]


def test_binding_key_prefers_instance() -> None:
    (first,) = apply_register([], change(contact("sip:a@10.0.0.1", instance=INSTANCE)))
    moved = Binding(**{**first.as_dict(), "contact": "sip:a@192.0.2.99"})
    assert moved.key == first.key
    assert Binding(**{**first.as_dict(), "instance_id": None}).key != first.key


async def _node_gone(location: LocationService, node_id: str) -> bool:
    return node_id not in await location.live_nodes()


async def _no_bindings(location: LocationService, aor: str) -> bool:
    return await location.lookup(aor) == []


async def _wait_for(
    condition: Callable[[], Awaitable[bool]], attempts: int = 200, pause: float = 0.01
) -> None:
    """Poll a coroutine-returning condition; bounded so a broken feature fails, never hangs."""
    for _ in range(attempts):
        if await condition():
            return
        await asyncio.sleep(pause)
    raise AssertionError(f"condition not met after {attempts} polls")


@pytest.fixture
async def two_nodes(redis_url: str) -> AsyncIterator[tuple[RedisLocationService, ...]]:
    """Two gateway nodes' location services on one Redis, each with its own AoR cache."""
    nodes = (RedisLocationService(redis_url), RedisLocationService(redis_url))
    yield nodes
    for node in nodes:
        await node.close()


async def test_stale_cached_aor_is_merged_not_overwritten(
    two_nodes: tuple[RedisLocationService, ...],
) -> None:
    node_a, node_b = two_nodes
    await node_a.register(change(contact("sip:a@10.0.0.1"), call_id="a"))
    # node B has never seen the AoR: its write on "no bindings" fails and is redone on A's
    await node_b.register(change(contact("sip:b@10.0.0.2"), call_id="b", node="node-b"))
    # node A's cache lacks B's binding: its refresh must not drop it
    refreshed = await node_a.register(change(contact("sip:a@10.0.0.1"), call_id="a", cseq=2))
    assert sorted(b.contact for b in refreshed) == ["sip:a@10.0.0.1", "sip:b@10.0.0.2"]
    assert sorted(b.contact for b in await node_b.lookup(ALICE)) == [
        "sip:a@10.0.0.1",
        "sip:b@10.0.0.2",
    ]


async def test_a_recreated_aor_is_not_mistaken_for_the_cached_one(
    two_nodes: tuple[RedisLocationService, ...],
) -> None:
    node_a, node_b = two_nodes
    await node_a.register(change(contact("sip:a@10.0.0.1"), call_id="a"))
    await node_b.register(change(contact("sip:a@10.0.0.1", expires=0), call_id="a", cseq=2))
    await node_b.register(change(contact("sip:b@10.0.0.2"), call_id="b", node="node-b"))
    await node_b.register(change(contact("sip:c@10.0.0.3"), call_id="c", node="node-b"))
    # as many writes as node A made, on a re-created key: A's cached version must still differ
    bindings = await node_a.register(change(contact("sip:d@10.0.0.4"), call_id="d"))
    assert sorted(b.contact for b in bindings) == [
        "sip:b@10.0.0.2",
        "sip:c@10.0.0.3",
        "sip:d@10.0.0.4",
    ]


async def test_out_of_order_is_judged_on_the_stored_bindings_not_the_cache(
    two_nodes: tuple[RedisLocationService, ...],
) -> None:
    node_a, node_b = two_nodes
    await node_a.register(change(contact("sip:a@10.0.0.1"), call_id="x", cseq=5))
    await node_b.register(change(contact("sip:a@10.0.0.1", expires=0), call_id="x", cseq=6))
    # node A still remembers Call-ID x at CSeq 5, but no stored binding has that Call-ID now
    (binding,) = await node_a.register(change(contact("sip:z@10.0.0.9"), call_id="x", cseq=5))
    assert (binding.contact, binding.cseq) == ("sip:z@10.0.0.9", 5)
    with pytest.raises(OutOfOrderRegister):
        await node_b.register(change(contact("sip:z@10.0.0.9"), call_id="x", cseq=5))


async def test_fetch_answers_what_is_stored_not_the_cache(
    two_nodes: tuple[RedisLocationService, ...],
) -> None:
    node_a, node_b = two_nodes
    await node_a.register(change(contact("sip:a@10.0.0.1"), call_id="a"))
    await node_b.register(change(contact("sip:b@10.0.0.2"), call_id="b", node="node-b"))
    fetched = await node_a.register(change(call_id="fetch"))
    assert sorted(b.contact for b in fetched) == ["sip:a@10.0.0.1", "sip:b@10.0.0.2"]


async def test_concurrent_registers_from_two_nodes_lose_nothing(
    two_nodes: tuple[RedisLocationService, ...],
) -> None:
    devices = 60
    await asyncio.gather(
        *(
            two_nodes[i % 2].register(
                change(
                    contact(f"sip:dev{i}@10.0.1.{i}"),
                    call_id=f"call-{i}",
                    node=f"node-{i % 2}",
                    connection=f"ws-{i}",
                )
            )
            for i in range(devices)
        )
    )
    # and refreshes of them all, again from both nodes, with their caches now stale
    await asyncio.gather(
        *(
            two_nodes[(i + 1) % 2].register(
                change(contact(f"sip:dev{i}@10.0.1.{i}"), call_id=f"call-{i}", cseq=2)
            )
            for i in range(devices)
        )
    )
    bindings = await two_nodes[0].lookup(ALICE)
    assert sorted(b.contact for b in bindings) == sorted(
        f"sip:dev{i}@10.0.1.{i}" for i in range(devices)
    )
    assert {b.cseq for b in bindings} == {2}


async def test_bindings_written_before_versioning_are_kept(redis_url: str) -> None:
    (old,) = apply_register([], change(contact("sip:old@10.0.0.1"), call_id="old"))
    client = aioredis.from_url(redis_url)
    location = RedisLocationService(redis_url)
    try:
        await client.hset("ws2sip:loc:{sip:alice@example.com}", old.key, encode_binding(old))
        assert await location.lookup(ALICE) == [old]
        bindings = await location.register(change(contact("sip:new@10.0.0.2"), call_id="new"))
        assert sorted(b.contact for b in bindings) == ["sip:new@10.0.0.2", "sip:old@10.0.0.1"]
    finally:
        await client.aclose()
        await location.close()


async def test_register_after_redis_forgot_the_script(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    location = RedisLocationService(redis_url)
    try:
        await location.register(change(contact("sip:a@10.0.0.1")))
        await client.script_flush()
        bindings = await location.register(change(contact("sip:a@10.0.0.1"), cseq=2))
        assert [b.cseq for b in bindings] == [2]
    finally:
        await client.aclose()
        await location.close()


def test_aor_cache_is_bounded_and_evicts_the_least_recently_written() -> None:
    (binding,) = apply_register([], change(contact("sip:a@10.0.0.1")))
    cache = AorCache(max_entries=2)
    cache.put("one", "v1", [binding])
    cache.put("two", "v2", [binding])
    cache.put("one", "v3", [binding])
    cache.put("three", "v4", [binding])
    assert (cache.get("one"), cache.get("two"), cache.get("three")) == (
        ("v3", [binding]),
        None,
        ("v4", [binding]),
    )
    cache.put("one", "v5", [])
    assert cache.get("one") is None
    assert len(cache) == 1


async def test_keyed_lock_serialises_one_key_and_forgets_idle_keys() -> None:
    turns = KeyedLock()
    inside: list[str] = []
    overlaps: list[tuple[str, ...]] = []

    async def hold(key: str) -> None:
        async with turns.hold(key):
            inside.append(key)
            overlaps.append(tuple(inside))
            await asyncio.sleep(0.001)
            inside.remove(key)

    await asyncio.gather(*(hold("a") for _ in range(5)), hold("b"))
    assert all(overlap.count("a") <= 1 for overlap in overlaps)
    assert any(set(overlap) == {"a", "b"} for overlap in overlaps)  # other keys do not wait
    assert len(turns) == 0


async def test_resp_pipe_answers_concurrent_callers_in_order_and_selects_the_db(
    redis_server: RedisServer,
) -> None:
    url = redis_server.url(db=3)
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    pipe = RespPipe(url, timeout=5)
    try:
        replies = await asyncio.gather(
            *(pipe.execute([("SET", f"k{i}", i), ("GET", f"k{i}")]) for i in range(200))
        )
        assert replies == [["OK", str(i)] for i in range(200)]
        (error,) = await pipe.execute([("HGET", "k1", "field")])
        assert "WRONGTYPE" in str(error)
        with redis.Redis.from_url(url) as client:
            assert client.get("k199") == b"199"
        with redis.Redis.from_url(redis_server.url(db=0)) as client:
            assert client.get("k199") is None
    finally:
        await pipe.close()


async def test_location_reconnects_after_redis_dropped_the_connection(redis_url: str) -> None:
    location = RedisLocationService(redis_url)
    try:
        await location.register(change(contact("sip:a@10.0.0.1")))
        with redis.Redis.from_url(redis_url) as client:
            killed = client.client_kill_filter(_type="normal", skipme=True)
        assert killed >= 1
        for _ in range(100):  # bounded: the loss is noticed asynchronously
            try:
                bindings = await location.register(change(contact("sip:a@10.0.0.1"), cseq=2))
                break
            except RespPipeError:
                await asyncio.sleep(0.01)
        else:
            raise AssertionError("the location service never reconnected")
        assert [b.cseq for b in bindings] == [2]
    finally:
        await location.close()
