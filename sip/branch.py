"""Via branch parameters (RFC 3261 §8.1.1.7): generation and the magic-cookie test."""

from __future__ import annotations

import os

MAGIC_COOKIE = "z9hG4bK"


def new_branch() -> str:
    # 64 random bits are plenty for uniqueness "across space and time" within one proxy.
    return MAGIC_COOKIE + os.urandom(8).hex()  # the CSPRNG secrets uses, minus two layers


def is_rfc3261_branch(branch: str | None) -> bool:
    """True for a globally unique branch (magic cookie): it alone identifies a transaction."""
    return branch is not None and branch.startswith(MAGIC_COOKIE)
