"""User store behaviour, run against the JSON-file and the real-Redis backend alike."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.users import (
    FileUserStore,
    RedisUserStore,
    UnknownUser,
    UserExists,
    UserStore,
    generate_password,
    open_user_store,
)


def expected_ha1(username: str, realm: str, password: str) -> tuple[str, str]:
    secret = f"{username}:{realm}:{password}".encode()
    return hashlib.md5(secret).hexdigest(), hashlib.sha256(secret).hexdigest()


async def test_add_and_get(user_store_backend: UserStore) -> None:
    added = await user_store_backend.add("alice", "Example.COM", "s3cret")
    md5, sha256 = expected_ha1("alice", "example.com", "s3cret")
    assert (added.username, added.domain) == ("alice", "example.com")
    assert (added.ha1("MD5"), added.ha1("SHA-256"), added.ha1("md5-sess")) == (md5, sha256, md5)
    assert await user_store_backend.get("alice", "example.com") == added
    assert await user_store_backend.get("alice", "EXAMPLE.com") == added
    # the user part is case-sensitive, and users belong to one domain
    assert await user_store_backend.get("Alice", "example.com") is None
    assert await user_store_backend.get("alice", "example.org") is None


async def test_add_twice_is_refused(user_store_backend: UserStore) -> None:
    first = await user_store_backend.add("alice", "example.com", "one")
    with pytest.raises(UserExists, match="alice@example.com"):
        await user_store_backend.add("alice", "example.com", "two")
    assert await user_store_backend.get("alice", "example.com") == first


async def test_set_password(user_store_backend: UserStore) -> None:
    await user_store_backend.add("alice", "example.com", "old")
    changed = await user_store_backend.set_password("alice", "example.com", "new")
    assert (changed.ha1_md5, changed.ha1_sha256) == expected_ha1("alice", "example.com", "new")
    assert await user_store_backend.get("alice", "example.com") == changed
    with pytest.raises(UnknownUser, match="bob@example.com"):
        await user_store_backend.set_password("bob", "example.com", "x")
    assert await user_store_backend.get("bob", "example.com") is None


async def test_delete(user_store_backend: UserStore) -> None:
    await user_store_backend.add("alice", "example.com", "pw")
    await user_store_backend.add("bob", "example.com", "pw")
    assert await user_store_backend.delete("alice", "example.com") is True
    assert await user_store_backend.delete("alice", "example.com") is False
    assert await user_store_backend.get("alice", "example.com") is None
    assert [u.username for u in await user_store_backend.list()] == ["bob"]


async def test_list_by_domain(user_store_backend: UserStore) -> None:
    await user_store_backend.add("carol", "b.example", "pw")
    await user_store_backend.add("bob", "a.example", "pw")
    await user_store_backend.add("alice", "a.example", "pw")
    everyone = [(u.domain, u.username) for u in await user_store_backend.list()]
    assert everyone == [("a.example", "alice"), ("a.example", "bob"), ("b.example", "carol")]
    assert [u.username for u in await user_store_backend.list("A.example")] == ["alice", "bob"]
    assert await user_store_backend.list("nobody.example") == []


async def test_invalid_input_is_rejected(user_store_backend: UserStore) -> None:
    for username, domain, password in [
        ("", "d", "p"),
        ("a:b", "d", "p"),
        ("a", "", "p"),
        ("a", "d", ""),
    ]:
        with pytest.raises(ValueError):
            await user_store_backend.add(username, domain, password)
    assert await user_store_backend.list() == []


def test_unsupported_algorithm_named_in_error() -> None:
    from gateway.users import make_record

    with pytest.raises(ValueError, match="SHA-512-256"):
        make_record("alice", "example.com", "pw").ha1("SHA-512-256")


def test_generate_password() -> None:
    passwords = {generate_password() for _ in range(50)}
    assert len(passwords) == 50
    for password in passwords:
        assert len(password) == 16
        assert set(password) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        )


async def test_file_is_private_and_never_holds_the_password(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "users.json"
    store = FileUserStore(path)
    await store.add("alice", "example.com", "plain-text-secret")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "plain-text-secret" not in path.read_text()
    # only the store's file is left behind, no temporaries
    assert [p.name for p in path.parent.iterdir()] == ["users.json"]


async def test_file_store_sees_external_change(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    # checking on every get() instead of once a second keeps the test free of sleeps
    gateway_view = FileUserStore(path, check_interval=0)
    assert await gateway_view.get("alice", "example.com") is None
    # `ws2sip user add` in another process: another store instance writing the same file
    cli = FileUserStore(path)
    added = await cli.add("alice", "example.com", "pw")
    assert await gateway_view.get("alice", "example.com") == added
    await cli.delete("alice", "example.com")
    assert await gateway_view.get("alice", "example.com") is None


async def test_file_store_writes_keep_external_additions(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    first, second = FileUserStore(path), FileUserStore(path)
    await first.add("alice", "example.com", "pw")
    await second.add("bob", "example.com", "pw")
    await first.add("carol", "example.com", "pw")
    assert [u.username for u in await FileUserStore(path).list()] == ["alice", "bob", "carol"]


async def test_malformed_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="users.json"):
        FileUserStore(path)


async def test_file_broken_while_serving_keeps_the_users_and_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "users.json"
    gateway_view = FileUserStore(path, check_interval=0)
    added = await FileUserStore(path).add("alice", "example.com", "pw")
    assert await gateway_view.get("alice", "example.com") == added
    path.write_text("{half written")
    for _ in range(3):
        assert await gateway_view.get("alice", "example.com") == added
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "malformed user file" in errors[0].getMessage()
    # Fixed: read again.
    await FileUserStore(tmp_path / "other.json").add("bob", "example.com", "pw")
    (tmp_path / "other.json").replace(path)
    assert await gateway_view.get("alice", "example.com") is None
    assert await gateway_view.get("bob", "example.com") is not None


async def test_open_user_store_picks_backend(redis_url: str, tmp_path: Path) -> None:
    file_store = open_user_store(None, tmp_path / "users.json")
    redis_store = open_user_store(redis_url, tmp_path / "unused.json")
    try:
        assert isinstance(file_store, FileUserStore)
        assert isinstance(redis_store, RedisUserStore)
        await redis_store.add("alice", "example.com", "pw")
        assert not (tmp_path / "unused.json").exists()
    finally:
        await file_store.close()
        await redis_store.close()


async def test_redis_users_survive_restart(redis_url: str) -> None:
    before = RedisUserStore(redis_url)
    added = await before.add("alice", "example.com", "pw")
    await before.close()
    after = RedisUserStore(redis_url)
    try:
        assert await after.get("alice", "example.com") == added
    finally:
        await after.close()


async def _hgetall_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))


async def test_redis_get_is_answered_from_the_cache(redis_url: str) -> None:
    store = RedisUserStore(redis_url, cache_seconds=60)
    client = aioredis.from_url(redis_url)
    try:
        added = await store.add("alice", "example.com", "pw")
        await client.config_resetstat()
        for _ in range(5):
            assert await store.get("alice", "Example.com") == added
        assert await _hgetall_calls(client) == 1
        # unknown users are not cached: each lookup asks Redis again
        assert await store.get("nobody", "example.com") is None
        assert await store.get("nobody", "example.com") is None
        assert await _hgetall_calls(client) == 3
    finally:
        await client.aclose()
        await store.close()


async def test_redis_cache_sees_own_changes_at_once(redis_url: str) -> None:
    store = RedisUserStore(redis_url, cache_seconds=60)
    try:
        await store.add("alice", "example.com", "old")
        assert await store.get("alice", "example.com") is not None
        changed = await store.set_password("alice", "example.com", "new")
        assert await store.get("alice", "example.com") == changed
        await store.delete("alice", "example.com")
        assert await store.get("alice", "example.com") is None
    finally:
        await store.close()


async def test_redis_cache_takes_other_writers_changes_after_its_lifetime(
    redis_url: str,
) -> None:
    gateway_view = RedisUserStore(redis_url, cache_seconds=60)
    short_lived = RedisUserStore(redis_url, cache_seconds=0.05)
    cli = RedisUserStore(redis_url)
    try:
        old = await cli.add("alice", "example.com", "old")
        assert await gateway_view.get("alice", "example.com") == old
        assert await short_lived.get("alice", "example.com") == old
        new = await cli.set_password("alice", "example.com", "new")
        # within its lifetime the cached record is what the gateway authenticates against
        assert await gateway_view.get("alice", "example.com") == old
        for _ in range(200):  # bounded: a cache that never expires fails here, it does not hang
            if await short_lived.get("alice", "example.com") == new:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the cached record outlived its lifetime")
        # a user added by another writer is found at once: misses are not cached
        assert await gateway_view.get("bob", "example.com") is None
        bob = await cli.add("bob", "example.com", "pw")
        assert await gateway_view.get("bob", "example.com") == bob
    finally:
        for store in (gateway_view, short_lived, cli):
            await store.close()
