"""Via branch parameters (RFC 3261 §8.1.1.7): generation, signing and the magic-cookie test."""

from __future__ import annotations

import hashlib
import hmac
import os

MAGIC_COOKIE = "z9hG4bK"
NONCE_HEX = 16
SIGNATURE_HEX = 16  # 64 bits of keyed BLAKE2b: forging one takes 2^63 tries on average
MAX_KEY_BYTES = 64  # BLAKE2b's key size limit


def new_branch() -> str:
    # 64 random bits are plenty for uniqueness "across space and time" within one proxy.
    return MAGIC_COOKIE + os.urandom(8).hex()  # the CSPRNG secrets uses, minus two layers


def signed_branch(key: bytes, material: str) -> str:
    """A new branch that proves, to whoever holds `key`, that it was made for `material` (for a
    proxy: the Call-ID and the Via its responses go back to). A stateless element can then
    tell its own branches, and where their responses belong, from forged ones."""
    nonce = os.urandom(NONCE_HEX // 2).hex()
    return MAGIC_COOKIE + nonce + _signature(key, nonce, material)


def is_signed_branch(branch: str | None, key: bytes, material: str) -> bool:
    """True when `branch` came from signed_branch(key, material) (anything may follow it)."""
    if branch is None or not branch.startswith(MAGIC_COOKIE):
        return False
    start = len(MAGIC_COOKIE)
    nonce = branch[start:start + NONCE_HEX]
    signature = branch[start + NONCE_HEX:start + NONCE_HEX + SIGNATURE_HEX]
    if len(signature) != SIGNATURE_HEX or not signature.isascii():
        return False
    return hmac.compare_digest(signature, _signature(key, nonce, material))


def _signature(key: bytes, nonce: str, material: str) -> str:
    # Keyed BLAKE2b is a MAC in its own right (RFC 7693 §2.9) and costs a quarter of an
    # HMAC-SHA256 here: this runs for every request the proxy forwards.
    data = f"{nonce}\n{material}".encode(errors="surrogatepass")
    return hashlib.blake2b(data, key=key[:MAX_KEY_BYTES], digest_size=SIGNATURE_HEX // 2
                           ).hexdigest()


def is_rfc3261_branch(branch: str | None) -> bool:
    """True for a globally unique branch (magic cookie): it alone identifies a transaction."""
    return branch is not None and branch.startswith(MAGIC_COOKIE)
