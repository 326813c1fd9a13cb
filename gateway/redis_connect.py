"""Which Redis the gateway talks to, from its `--redis` URL: one server, a Sentinel-watched
master, or a Redis Cluster. Every Redis client of the gateway (location service, users, bans)
is opened here, through redis-py's own Sentinel and RedisCluster clients.

URL forms:

``redis://[user:password@]host:port/db`` (also ``rediss://``, ``unix://``)
    one server, as redis-py reads it.
``redis+sentinel://[user:password@]host:port[,host:port...]/<master name>[/db]``
    the master named `<master name>`, as the listed Sentinels report it; after a failover the
    clients ask them again. The credentials are the master's; the Sentinels take none.
``redis+cluster://[user:password@]host:port[,host:port...]/``
    a Redis Cluster reached through any of the listed nodes (database 0 only: a cluster has
    no other). Keys are routed by slot; the gateway's multi-key operations stay within one hash
    tag (see gateway/location/redis_store.py and gateway/users.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel

SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"
# Bound on asking one Sentinel, and on connecting to a data node: a dead host must not hold a
# registration for the whole request timeout.
SOCKET_CONNECT_TIMEOUT = 1.0


class RedisKind(Enum):
    SINGLE = "single"
    SENTINEL = "sentinel"
    CLUSTER = "cluster"


@dataclass(frozen=True, slots=True)
class RedisTarget:
    kind: RedisKind
    url: str  # as configured
    nodes: tuple[tuple[str, int], ...] = ()  # Sentinels, or cluster seed nodes
    service: str = ""  # the Sentinel master name
    db: int = 0
    username: str | None = None
    password: str | None = None

    @property
    def credentials(self) -> dict[str, Any]:
        """redis-py connection arguments for the data nodes (not the Sentinels)."""
        settings: dict[str, Any] = {}
        if self.username:
            settings["username"] = self.username
        if self.password:
            settings["password"] = self.password
        return settings


def parse_redis_url(url: str) -> RedisTarget:
    """The target a `--redis` URL names; ValueError, saying what is wrong, for a bad one."""
    parts = urlsplit(url)
    if parts.scheme not in (SENTINEL_SCHEME, CLUSTER_SCHEME):
        return RedisTarget(RedisKind.SINGLE, url)
    # urlsplit cannot take "h1:1,h2:2" as a netloc's port: split the host list by hand.
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":") if credentials else ("", "", "")
    nodes = tuple(_host_port(item, url) for item in hosts.split(",") if item)
    if not nodes:
        raise ValueError(f"Redis URL {_redacted(url)} names no host")
    path = [segment for segment in parts.path.split("/") if segment]
    login, secret = unquote(username) or None, unquote(password) or None
    if parts.scheme == SENTINEL_SCHEME:
        if not path or len(path) > 2:
            raise ValueError(f"Redis URL {_redacted(url)}: expected "
                             f"{SENTINEL_SCHEME}://host:port[,host:port]/<master name>[/db]")
        return RedisTarget(RedisKind.SENTINEL, url, nodes, service=path[0],
                           db=_database(path[1] if len(path) == 2 else "0", url),
                           username=login, password=secret)
    if path and path != ["0"]:
        raise ValueError(f"Redis URL {_redacted(url)}: a Redis Cluster has database 0 only")
    return RedisTarget(RedisKind.CLUSTER, url, nodes, username=login, password=secret)


def open_redis(
    target: RedisTarget, *, max_connections: int, pool_timeout: float,
    decode_responses: bool = True,
) -> aioredis.Redis | RedisCluster:
    """A redis-py client for `target`. A single server's pool makes callers beyond
    `max_connections` wait up to `pool_timeout` rather than fail (BlockingConnectionPool)."""
    if target.kind is RedisKind.SINGLE:
        return aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(
            target.url, max_connections=max_connections, timeout=pool_timeout,
            decode_responses=decode_responses,
        ))
    if target.kind is RedisKind.SENTINEL:
        master: aioredis.Redis = sentinel_for(target).master_for(
            target.service, db=target.db, decode_responses=decode_responses,
            socket_connect_timeout=SOCKET_CONNECT_TIMEOUT, max_connections=max_connections,
            **target.credentials,
        )
        return master
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
        decode_responses=decode_responses, socket_connect_timeout=SOCKET_CONNECT_TIMEOUT,
        max_connections=max_connections, **target.credentials,
    )


def sentinel_for(target: RedisTarget) -> Sentinel:
    return Sentinel(list(target.nodes), socket_timeout=SOCKET_CONNECT_TIMEOUT,
                    socket_connect_timeout=SOCKET_CONNECT_TIMEOUT)


def _host_port(item: str, url: str) -> tuple[str, int]:
    host, _, port = item.strip().rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"Redis URL {_redacted(url)}: {item!r} is not host:port")
    return host.strip("[]"), int(port)


def _database(text: str, url: str) -> int:
    if not text.isdigit():
        raise ValueError(f"Redis URL {_redacted(url)}: database {text!r} is not a number")
    return int(text)


def _redacted(url: str) -> str:
    """`url` without its password, for error messages and logs."""
    parts = urlsplit(url)
    if parts.password is None and "@" not in parts.netloc:
        return url
    credentials, _, hosts = parts.netloc.rpartition("@")
    username = credentials.partition(":")[0]
    return parts._replace(netloc=f"{username}:***@{hosts}").geturl()
