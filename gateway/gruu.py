"""Globally Routable User Agent URIs (RFC 5627): making them for the registrar, reading them for
the proxy.

A public GRUU is the AoR plus `;gr=<instance URN>` (§3.1): anyone who knows it can tell which
user and device it reaches. A temporary GRUU (§3.2) must not reveal either, so its user part
carries the AoR, the instance and a digest of the REGISTER's Call-ID sealed with AES-GCM under
a key derived from the gateway secret. Nothing is stored: any node holding the same secret reads
every temporary GRUU, and the binding's current Call-ID decides whether it is still valid
(§5.3: a registration with a new Call-ID invalidates the earlier ones).
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from dataclasses import dataclass
from urllib.parse import quote as percent_encode
from urllib.parse import unquote as percent_decode

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sip.errors import SipError
from sip.uri import SipUri

PARAM = "gr"
TEMPORARY_PREFIX = "tgruu."
# RFC 3261 §25.1 paramchar beyond the alphanumerics and "_.-~" that quote() always keeps.
_PARAMCHAR_SAFE = "!*'()[]/:&+$"
_KEY_INFO = b"ws2sip temporary GRUU key"
_ASSOCIATED_DATA = b"ws2sip-tgruu-1"
_NONCE_BYTES = 12
_CALL_ID_DIGEST_BYTES = 8
_AOR_LENGTH = struct.Struct("!H")


@dataclass(frozen=True, slots=True)
class GruuTarget:
    """What a GRUU names: one instance of an AoR, and for a temporary GRUU the registration
    (by its Call-ID digest) it was issued to."""

    aor: str
    instance: str  # the URN, without quotes or angle brackets
    call_id_digest: bytes | None = None  # None for a public GRUU

    @property
    def temporary(self) -> bool:
        return self.call_id_digest is not None

    def names_instance(self, instance_id: str | None) -> bool:
        """Whether a binding's `+sip.instance` value is the GRUU's instance."""
        return instance_id is not None and instance_urn(instance_id) == self.instance

    def admits(self, instance_id: str | None, call_id: str) -> bool:
        """Whether the GRUU reaches a binding with this `+sip.instance` value and REGISTER
        Call-ID (a temporary GRUU only the registration it was issued to, §5.3)."""
        return self.names_instance(instance_id) and (
            self.call_id_digest is None or self.call_id_digest == call_id_digest(call_id)
        )


def instance_urn(instance_id: str) -> str:
    """`"<urn:uuid:...>"` (the `+sip.instance` value as written) → `urn:uuid:...`."""
    return instance_id.strip().strip('"').strip().removeprefix("<").removesuffix(">")


def call_id_digest(call_id: str) -> bytes:
    return hashlib.blake2b(call_id.encode(), digest_size=_CALL_ID_DIGEST_BYTES).digest()


class Gruus:
    """Makes and reads this gateway's GRUUs; `secret` is the gateway's (config.auth_secret)."""

    def __init__(self, secret: bytes) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEY_INFO).derive(secret)
        self._cipher = AESGCM(key)

    def public(self, aor: str, instance_id: str) -> str:
        return f"{aor};{PARAM}={percent_encode(instance_urn(instance_id), safe=_PARAMCHAR_SAFE)}"

    def temporary(self, aor: str, instance_id: str, call_id: str) -> str:
        """A new temporary GRUU (a fresh nonce each time, so two never look alike)."""
        domain = aor.rpartition("@")[2]
        aor_bytes = aor.encode()
        plaintext = b"".join((
            call_id_digest(call_id), _AOR_LENGTH.pack(len(aor_bytes)), aor_bytes,
            instance_urn(instance_id).encode(),
        ))
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + self._cipher.encrypt(nonce, plaintext, _ASSOCIATED_DATA)
        token = base64.urlsafe_b64encode(sealed).decode().rstrip("=")
        return f"sip:{TEMPORARY_PREFIX}{token}@{domain};{PARAM}"

    def decode_temporary(self, token: str) -> GruuTarget | None:
        """The target sealed in a temporary GRUU's token; None when forged or garbled."""
        try:
            sealed = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except ValueError:
            return None
        nonce, ciphertext = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
        if len(nonce) != _NONCE_BYTES:
            return None
        try:
            plaintext = self._cipher.decrypt(nonce, ciphertext, _ASSOCIATED_DATA)
        except InvalidTag:
            return None
        digest = plaintext[:_CALL_ID_DIGEST_BYTES]
        (aor_length,) = _AOR_LENGTH.unpack_from(plaintext, _CALL_ID_DIGEST_BYTES)
        aor_start = _CALL_ID_DIGEST_BYTES + _AOR_LENGTH.size
        aor = plaintext[aor_start:aor_start + aor_length].decode()
        instance = plaintext[aor_start + aor_length:].decode()
        return GruuTarget(aor, instance, digest)

    def resolve(self, uri: SipUri) -> GruuTarget | None:
        """The target of a Request-URI of our domain that is a GRUU; None when it has no `gr`
        parameter (not a GRUU). A `gr` URI that is no GRUU we issued is a 404 (§8.4.1)."""
        if PARAM not in uri.params:
            return None
        value = uri.params[PARAM]
        if value:
            return GruuTarget(uri.address_of_record, percent_decode(value))
        user = uri.user_decoded or ""
        target = None
        if user.startswith(TEMPORARY_PREFIX):
            target = self.decode_temporary(user.removeprefix(TEMPORARY_PREFIX))
        if target is None:
            raise SipError(404, "Not Found (unknown GRUU)")
        return target
