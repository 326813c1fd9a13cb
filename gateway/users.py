"""Users and their credentials: only digest HA1 values are stored, never passwords.

The realm is the user's domain, lower-cased (hostnames are case-insensitive), so
HA1 = H(username:domain:password) and challenges must use the same lower-case domain.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar, cast

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from sip.digest import compute_ha1

log = logging.getLogger(f"ws2sip.{__name__}")

_FILE_FORMAT_VERSION = 1
# get() runs for every authenticated request; a stat per second keeps external edits visible
# without a syscall on the hot path.
_FILE_CHECK_INTERVAL = 1.0
_MAX_TRANSACTION_ATTEMPTS = 16
# Requests beyond this many Redis connections wait for a free one (BlockingConnectionPool)
# instead of failing, so a burst of authenticated requests queues rather than gets 503s.
_REDIS_POOL_SIZE = 16
_REDIS_POOL_WAIT_SECONDS = 10.0
# Digest auth looks a user up on every authenticated request; a Redis round trip for each cost
# the gateway about 100 µs of CPU. Records are kept this long in each gateway process, so a
# password change or deletion made elsewhere (the CLI, another node) takes effect within it.
USER_CACHE_SECONDS = 5.0
_USER_CACHE_ENTRIES = 100_000


@dataclass(frozen=True, slots=True)
class UserRecord:
    username: str
    domain: str
    ha1_md5: str
    ha1_sha256: str

    def ha1(self, algorithm: str) -> str:
        """HA1 for "MD5" or "SHA-256" (the "-sess" variants start from the same HA1)."""
        base = algorithm.upper().removesuffix("-SESS")
        if base == "MD5":
            return self.ha1_md5
        if base == "SHA-256":
            return self.ha1_sha256
        raise ValueError(f"unsupported digest algorithm {algorithm!r} for {self.username}")


@dataclass(frozen=True, slots=True)
class UserFile:
    """A users file as read: its (inode, mtime, size), None when there is no file."""

    signature: tuple[int, int, int] | None
    users: dict[tuple[str, str], UserRecord]


class UserExists(Exception):
    pass


class UnknownUser(Exception):
    pass


def make_record(username: str, domain: str, password: str) -> UserRecord:
    username, domain = _checked_identity(username, domain)
    if not password:
        raise ValueError(f"empty password for {username}@{domain}")
    return UserRecord(
        username,
        domain,
        compute_ha1(username, domain, password, "MD5"),
        compute_ha1(username, domain, password, "SHA-256"),
    )


def generate_password() -> str:
    """16 URL-safe characters (96 random bits)."""
    return secrets.token_urlsafe(12)


class UserStore(ABC):
    # Whether every method completes without suspending (no network I/O): see
    # LocationService.in_process.
    in_process: ClassVar[bool] = False

    @abstractmethod
    async def get(self, username: str, domain: str) -> UserRecord | None: ...

    @abstractmethod
    async def add(self, username: str, domain: str, password: str) -> UserRecord:
        """Raises UserExists."""

    @abstractmethod
    async def set_password(self, username: str, domain: str, password: str) -> UserRecord:
        """Raises UnknownUser."""

    @abstractmethod
    async def delete(self, username: str, domain: str) -> bool:
        """True when the user existed."""

    @abstractmethod
    async def list(self, domain: str | None = None) -> list[UserRecord]:
        """Users of `domain` (of all domains when None), sorted by domain then username."""

    @abstractmethod
    async def close(self) -> None: ...


class FileUserStore(UserStore):
    """A JSON file, mode 0600, replaced atomically on every change.

    Re-read when it changes on disk, so `ws2sip user add` reaches a running gateway without a
    restart. Each change re-reads the file first, so writers only race within one
    read-modify-write (the CLI is the expected writer).
    """

    in_process: ClassVar[bool] = True

    def __init__(self, path: Path, *, check_interval: float = _FILE_CHECK_INTERVAL) -> None:
        self._path = path
        self._check_interval = check_interval
        self._users: dict[tuple[str, str], UserRecord] = {}
        self._file_signature: tuple[int, int, int] | None = None
        # A malformed version of the file, logged once and not read again until it changes.
        self._refused_signature: tuple[int, int, int] | None = None
        self._checked_at = float("-inf")
        self._reload_if_changed()

    async def get(self, username: str, domain: str) -> UserRecord | None:
        now = time.monotonic()
        if now - self._checked_at >= self._check_interval:
            self._refresh_quietly()
        return self._users.get((username, domain.lower()))

    async def add(self, username: str, domain: str, password: str) -> UserRecord:
        record = make_record(username, domain, password)
        self._reload_if_changed()
        if (record.username, record.domain) in self._users:
            raise UserExists(f"user {record.username}@{record.domain} already exists")
        self._write({**self._users, (record.username, record.domain): record})
        return record

    async def set_password(self, username: str, domain: str, password: str) -> UserRecord:
        record = make_record(username, domain, password)
        self._reload_if_changed()
        if (record.username, record.domain) not in self._users:
            raise UnknownUser(f"no user {record.username}@{record.domain} in {self._path}")
        self._write({**self._users, (record.username, record.domain): record})
        return record

    async def delete(self, username: str, domain: str) -> bool:
        self._reload_if_changed()
        users = dict(self._users)
        if users.pop((username, domain.lower()), None) is None:
            return False
        self._write(users)
        return True

    async def list(self, domain: str | None = None) -> list[UserRecord]:
        self._reload_if_changed()
        wanted = None if domain is None else domain.lower()
        return sorted(
            (r for r in self._users.values() if wanted is None or r.domain == wanted),
            key=lambda r: (r.domain, r.username),
        )

    async def close(self) -> None:
        self._users = {}

    def read_file(self) -> UserFile:
        """The file as it is now, parsed; raises ValueError (naming the file) when it is
        malformed. Changes nothing: `adopt` makes it the store's users (a reload checks every
        file before it applies any)."""
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            return UserFile(None, {})
        # The inode catches a replace within the file system's mtime granularity.
        signature = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        try:
            document = json.loads(self._path.read_text(encoding="utf-8"))
            if document.get("version") != _FILE_FORMAT_VERSION:
                raise ValueError(f"unsupported format version {document.get('version')!r}")
            records = [UserRecord(**entry) for entry in document["users"]]
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            # Said once (by the caller): not read again until it changes.
            self._refused_signature = signature
            raise ValueError(f"malformed user file {self._path}: {error}") from error
        return UserFile(signature, {(r.username, r.domain): r for r in records})

    def adopt(self, contents: UserFile) -> None:
        self._users, self._file_signature = contents.users, contents.signature
        self._checked_at = time.monotonic()

    def _reload_if_changed(self) -> None:
        """Before a change (the CLI): a malformed file raises rather than being overwritten."""
        if self._changed_on_disk():
            self.adopt(self.read_file())

    def _refresh_quietly(self) -> None:
        """While serving: a malformed file is logged once and the users read before stay."""
        if not self._changed_on_disk():
            return
        try:
            self.adopt(self.read_file())
        except ValueError as error:
            log.error("%s; keeping the %d users read before", error, len(self._users))

    def _changed_on_disk(self) -> bool:
        self._checked_at = time.monotonic()
        signature = self._disk_signature()
        return signature != self._file_signature and (
            signature is None or signature != self._refused_signature)

    def _disk_signature(self) -> tuple[int, int, int] | None:
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            return None
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def _write(self, users: dict[tuple[str, str], UserRecord]) -> None:
        document = {
            "version": _FILE_FORMAT_VERSION,
            "users": [asdict(users[key]) for key in sorted(users, key=lambda k: (k[1], k[0]))],
        }
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # mkstemp creates the file 0600, so no other user can read the HA1s even for a moment.
        fd, temp_name = tempfile.mkstemp(dir=self._path.parent, prefix=f".{self._path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as temp_file:
                json.dump(document, temp_file, indent=1)
                temp_file.flush()
                os.fsync(temp_file.fileno())
            os.replace(temp_name, self._path)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
        self._file_signature = None
        self._reload_if_changed()


class RedisUserStore(UserStore):
    """Key schema (`ws2sip` is the prefix; `{domain}` is a hash tag, so a user's hash and its
    domain's set share a slot and change together in one MULTI):

    ``ws2sip:user:{<domain>}:<username>``  HASH ha1_md5, ha1_sha256
    ``ws2sip:users:{<domain>}``  SET of usernames, for listing
    ``ws2sip:user-domains``  SET of domains that ever had a user, for listing all

    `get` answers from an in-process cache for `cache_seconds` (USER_CACHE_SECONDS by default):
    changes made through another store instance (`ws2sip user passwd` / `del`, another gateway
    node) reach this one within that time; this instance's own changes at once. Unknown users
    are not cached, so a user added elsewhere can register straight away.
    """

    def __init__(
        self, url: str, *, key_prefix: str = "ws2sip", cache_seconds: float = USER_CACHE_SECONDS
    ) -> None:
        self._redis = aioredis.Redis.from_pool(
            aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=_REDIS_POOL_SIZE,
                timeout=_REDIS_POOL_WAIT_SECONDS,
                decode_responses=True,
            )
        )
        self._prefix = key_prefix
        self._domains_key = f"{key_prefix}:user-domains"
        self._cache_seconds = cache_seconds
        # (username, domain) → (record, monotonic time it stops being trusted); insertion order
        # is fetch order, so the first entry is the one to evict when the cache is full.
        self._cache: dict[tuple[str, str], tuple[UserRecord, float]] = {}

    async def get(self, username: str, domain: str) -> UserRecord | None:
        domain = domain.lower()
        identity = (username, domain)
        cached = self._cache.get(identity)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        # The pool decodes replies (decode_responses=True), so hashes and members are text;
        # redis-py's types allow bytes or str, whichever mode the client runs in.
        fields = cast("dict[str, str]", await self._redis.hgetall(self._user_key(username, domain)))
        record = _record_from_hash(username, domain, fields)
        self._cache.pop(identity, None)
        if record is not None and self._cache_seconds > 0:
            if len(self._cache) >= _USER_CACHE_ENTRIES:
                del self._cache[next(iter(self._cache))]
            self._cache[identity] = (record, time.monotonic() + self._cache_seconds)
        return record

    async def add(self, username: str, domain: str, password: str) -> UserRecord:
        record = make_record(username, domain, password)
        await self._write_checked(record, must_exist=False)
        return record

    async def set_password(self, username: str, domain: str, password: str) -> UserRecord:
        record = make_record(username, domain, password)
        await self._write_checked(record, must_exist=True)
        return record

    async def delete(self, username: str, domain: str) -> bool:
        domain = domain.lower()
        self._cache.pop((username, domain), None)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._user_key(username, domain))
            pipe.srem(self._members_key(domain), username)
            deleted, _ = await pipe.execute()
        return bool(deleted)

    async def list(self, domain: str | None = None) -> list[UserRecord]:
        if domain is None:
            domains = sorted(await self._text_members(self._domains_key))
        else:
            domains = [domain.lower()]
        records: list[UserRecord] = []
        for each_domain in domains:
            usernames = sorted(await self._text_members(self._members_key(each_domain)))
            async with self._redis.pipeline(transaction=False) as pipe:
                for username in usernames:
                    pipe.hgetall(self._user_key(username, each_domain))
                hashes: list[dict[str, str]] = await pipe.execute()
            for username, fields in zip(usernames, hashes, strict=True):
                record = _record_from_hash(username, each_domain, fields)
                if record is not None:
                    records.append(record)
        return records

    async def _text_members(self, key: str) -> set[str]:
        return cast("set[str]", await self._redis.smembers(key))  # text, as get() says

    async def close(self) -> None:
        self._cache.clear()
        await self._redis.aclose()

    async def _write_checked(self, record: UserRecord, *, must_exist: bool) -> None:
        key = self._user_key(record.username, record.domain)
        self._cache.pop((record.username, record.domain), None)
        for _ in range(_MAX_TRANSACTION_ATTEMPTS):
            async with self._redis.pipeline(transaction=True) as pipe:
                await pipe.watch(key)
                exists = bool(await pipe.exists(key))
                if exists and not must_exist:
                    raise UserExists(f"user {record.username}@{record.domain} already exists")
                if must_exist and not exists:
                    raise UnknownUser(f"no user {record.username}@{record.domain}")
                pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
                pipe.hset(key, mapping={"ha1_md5": record.ha1_md5, "ha1_sha256": record.ha1_sha256})
                pipe.sadd(self._members_key(record.domain), record.username)
                try:
                    await pipe.execute()
                except WatchError:
                    continue
            # Another slot, so not in the transaction; it only feeds list(None).
            await self._redis.sadd(self._domains_key, record.domain)
            return
        raise RuntimeError(
            f"user {record.username}@{record.domain} kept changing during "
            f"{_MAX_TRANSACTION_ATTEMPTS} transaction attempts"
        )

    def _user_key(self, username: str, domain: str) -> str:
        return f"{self._prefix}:user:{{{domain}}}:{username}"

    def _members_key(self, domain: str) -> str:
        return f"{self._prefix}:users:{{{domain}}}"


def open_user_store(redis_url: str | None, users_file: Path) -> UserStore:
    """Redis-backed when a URL is configured (clusters), else the JSON file."""
    if redis_url:
        return RedisUserStore(redis_url)
    return FileUserStore(users_file)


def _record_from_hash(username: str, domain: str, fields: dict[str, str]) -> UserRecord | None:
    if not fields:
        return None
    return UserRecord(username, domain, fields["ha1_md5"], fields["ha1_sha256"])


def _checked_identity(username: str, domain: str) -> tuple[str, str]:
    # A ':' would make "username:realm:password" ambiguous, whitespace cannot appear in a SIP URI.
    if not username or any(c == ":" or c.isspace() for c in username):
        raise ValueError(f"invalid username {username!r}")
    if not domain or any(c.isspace() for c in domain):
        raise ValueError(f"invalid domain {domain!r}")
    return username, domain.lower()
