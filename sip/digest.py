"""HTTP Digest authentication for SIP (RFC 3261 §22, RFC 7616, RFC 8760, RFC 2617)."""

from __future__ import annotations

import hashlib

_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


def compute_ha1(username: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """Hex digest of "username:realm:password", the value a location store keeps per user."""
    try:
        hash_factory = _HASHES[algorithm.upper()]
    except KeyError:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}") from None
    return hash_factory(f"{username}:{realm}:{password}".encode()).hexdigest()
