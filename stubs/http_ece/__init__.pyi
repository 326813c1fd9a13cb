# The part of http-ece (RFC 8188 encrypted content-encoding, RFC 8291 key derivation) that
# gateway/push/webpush.py calls; the library ships no types.
from cryptography.hazmat.primitives.asymmetric import ec

class ECEException(Exception): ...

def encrypt(
    content: bytes,
    salt: bytes | None = ...,
    key: bytes | None = ...,
    private_key: ec.EllipticCurvePrivateKey | None = ...,
    dh: bytes | ec.EllipticCurvePublicKey | None = ...,
    auth_secret: bytes | None = ...,
    keyid: str | None = ...,
    keylabel: str = ...,
    rs: int = ...,
    version: str = ...,
) -> bytes: ...
