"""Location service: where each address-of-record is registered (RFC 3261 §10, RFC 5626)."""

from __future__ import annotations

from .base import LocationService
from .heartbeat import NodeHeartbeat
from .memory import MemoryLocationService
from .model import (
    DEFAULT_MAX_CONTACTS,
    Binding,
    ContactChange,
    NodeInfo,
    OutOfOrderRegister,
    RegisterChange,
    apply_register,
    binding_key,
)
from .redis_store import LocationContention, RedisLocationService

__all__ = [
    "DEFAULT_MAX_CONTACTS",
    "Binding",
    "ContactChange",
    "LocationContention",
    "LocationService",
    "MemoryLocationService",
    "NodeHeartbeat",
    "NodeInfo",
    "OutOfOrderRegister",
    "RedisLocationService",
    "RegisterChange",
    "apply_register",
    "binding_key",
    "open_location_service",
]


def open_location_service(redis_url: str | None, *, replica_acks: int = 0) -> LocationService:
    """Redis-backed when a URL is configured (clusters), else in-process (a single node)."""
    if redis_url:
        return RedisLocationService(redis_url, replica_acks=replica_acks)
    return MemoryLocationService()
