"""A flow: the way back to one peer over one transport (RFC 5626 sense)."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Protocol

Address = tuple[str, int]


class Target(Protocol):
    """What the resolver returns (sip.resolver.Target): a transport and an address to reach."""

    @property
    def transport(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


class Flow(ABC):
    id: str
    transport: str
    local: Address
    remote: Address
    reliable: bool
    secure: bool
    last_activity: float

    def __init__(
        self, flow_id: str, transport: str, local: Address, remote: Address, *, secure: bool
    ) -> None:
        self.id = flow_id
        self.transport = transport
        self.local = local
        self.remote = remote
        self.reliable = transport != "udp"
        self.secure = secure
        self.last_activity = time.monotonic()

    @abstractmethod
    def send(self, data: bytes) -> None:
        """Queue data for the peer; never blocks. Failures are logged and close the flow."""

    @abstractmethod
    def close(self) -> None: ...

    @property
    @abstractmethod
    def closed(self) -> bool: ...

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id}>"


def address(sockaddr: tuple) -> Address:  # type: ignore[type-arg]
    """(host, port) from an IPv4 or IPv6 socket address (which carries flowinfo and scope)."""
    return sockaddr[0], sockaddr[1]


def format_address(addr: Address) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# Listener hosts that bind every interface: no peer can be told to reach us there.
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def announced_host(bound_host: str, public_address: str = "") -> str:
    """The host to write into Via, Record-Route, Contact or a node's address for a listener
    bound to `bound_host`. A specific address is announced as it is; a wildcard one as the
    public address when configured, else the loopback of its address family (reachable only
    from this host: the setting behind NAT or on a multi-homed host is public_address)."""
    if bound_host not in WILDCARD_HOSTS:
        return bound_host
    if public_address:
        return public_address
    return "::1" if bound_host == "::" else "127.0.0.1"


def parse_address(text: str) -> Address:
    """"host:port" or "[v6]:port", as format_address writes it, back to (host, port)."""
    host, separator, port = text.rpartition(":")
    if not separator or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text[:80]!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)
