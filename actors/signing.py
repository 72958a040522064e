"""Signed documents: the Ed25519 envelope shared by boot package manifests and policies.

Theory of operation
-------------------
A publisher holds an Ed25519 secret key; every agent holds its public key. A document (a
manifest, a policy) is a canonical msgpack *body*; the publisher signs it once and every
agent checks the signature before it reads a single field of the body. Wire layout::

    signed    = msgpack [MAGIC, FORMAT_VERSION, kind: str, body: bin, signature: bin(64)]
    signature = Ed25519-sign(secret, DOMAIN + kind + NUL + body)          (RFC 8032 §5.1.6)

The signed message carries a domain prefix and the document kind, so a signature made for a
policy can never pass as one for a manifest (or for anything else the key might sign).

States of one signed byte string on the way in, as `open_document` walks them::

    bytes --framing ok--> framed --kind ok--> of this kind --signature ok--> authentic body
      |                     |                   |
      `-> NOT_SIGNED        `-> WRONG_KIND      `-> BAD_SIGNATURE

Only an authentic body is unpacked (`unpack_body`); what its fields mean is the business of
the document's own module (`actors.package`, `actors.policy`), which refuses bad fields as
MALFORMED and stale versions as ROLLBACK. Every refusal is a `PackageError` with a reason.

Pure: hashing and signing only, no files, no clock; keys are passed in as bytes.
"""

from __future__ import annotations

from typing import Any, Final

import msgpack
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import SigningKey, VerifyKey

from actors.errors import PackageError, PackageRefusal

SECRET_KEY_BYTES: Final = 32  # RFC 8032 §5.1.5: an Ed25519 private key is 32 octets
PUBLIC_KEY_BYTES: Final = 32  # RFC 8032 §5.1.5 step 4: the public key is the 32-octet point A
SIGNATURE_BYTES: Final = 64  # RFC 8032 §5.1.6 step 6: the signature is R || S, 64 octets
MAGIC: Final = "peerpxe-signed"
FORMAT_VERSION: Final = 1
DOMAIN: Final = b"peerpxe signed document v1\x00"
"""Prefix of every signed message: Ed25519 (RFC 8032 §5.1) has no context input, so the
domain separation is in the message itself."""
DOCUMENT_BYTES_MAX: Final = 32 * 1024 * 1024
"""Largest signed document accepted (a 20 GB package at 1 MiB chunks needs about 1 MB)."""
KIND_BYTES_MAX: Final = 64


def public_key(secret_key: bytes) -> bytes:
    """The 32-byte public key of a 32-byte Ed25519 secret key (seed)."""
    return bytes(_signing_key(secret_key).verify_key)


def sign_document(kind: str, body: bytes, secret_key: bytes) -> bytes:
    """Sign `body` as a document of `kind`; return the signed byte string."""
    assert kind.isascii()
    assert 0 < len(kind) <= KIND_BYTES_MAX
    signature = _signing_key(secret_key).sign(_signed_message(kind, body)).signature
    assert len(signature) == SIGNATURE_BYTES
    signed: bytes = msgpack.packb([MAGIC, FORMAT_VERSION, kind, body, signature])
    return signed


def open_document(kind: str, data: bytes, public_key: bytes) -> bytes:
    """The authentic body of a signed `kind` document; `PackageError` on anything wrong."""
    verify_key = _verify_key(public_key)
    found_kind, body, signature = _frame(data)
    if found_kind != kind:
        raise PackageError(PackageRefusal.WRONG_KIND, f"a {found_kind!r} document, not {kind!r}")
    try:
        verify_key.verify(_signed_message(kind, body), signature)
    except (BadSignatureError, CryptoError):
        raise PackageError(
            PackageRefusal.BAD_SIGNATURE, "signature does not verify with the publisher key"
        ) from None
    return body


def pack_body(value: object) -> bytes:
    """Canonical msgpack of a body built from dicts (in key order), lists, str, bytes, ints."""
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def unpack_body(body: bytes) -> dict[str, Any]:
    """The top-level map of an authentic body; MALFORMED if it is not a string-keyed map."""
    try:
        value = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except Exception as error:  # msgpack raises many types; all mean "malformed"
        detail = f"body is not msgpack: {type(error).__name__}"
        raise PackageError(PackageRefusal.MALFORMED, detail) from error
    if not isinstance(value, dict):
        raise PackageError(PackageRefusal.MALFORMED, "body is not a map")
    return value


def _signed_message(kind: str, body: bytes) -> bytes:
    return b"".join((DOMAIN, kind.encode("ascii"), b"\x00", body))


def _signing_key(secret_key: bytes) -> SigningKey:
    if len(secret_key) != SECRET_KEY_BYTES:
        raise PackageError(
            PackageRefusal.BAD_KEY, f"an Ed25519 secret key is {SECRET_KEY_BYTES} bytes"
        )
    return SigningKey(secret_key)


def _verify_key(public_key: bytes) -> VerifyKey:
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise PackageError(
            PackageRefusal.BAD_KEY, f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes"
        )
    try:
        return VerifyKey(public_key)
    except (CryptoError, ValueError, TypeError):
        raise PackageError(PackageRefusal.BAD_KEY, "not an Ed25519 public key") from None


def _frame(data: bytes) -> tuple[str, bytes, bytes]:
    """(kind, body, signature) of a well-framed signed document, else NOT_SIGNED."""
    if len(data) > DOCUMENT_BYTES_MAX:
        raise PackageError(PackageRefusal.NOT_SIGNED, "not a signed document (size)")
    try:
        fields = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=False)
    except Exception as error:  # msgpack raises many types; all mean "not ours"
        raise PackageError(PackageRefusal.NOT_SIGNED, "not a signed document") from error
    if not isinstance(fields, tuple) or len(fields) != 5 or fields[0] != MAGIC:
        raise PackageError(PackageRefusal.NOT_SIGNED, "not a signed peerpxe document")
    _, version, kind, body, signature = fields
    if type(version) is not int or version != FORMAT_VERSION:
        raise PackageError(PackageRefusal.NOT_SIGNED, f"unsupported format {version!r}")
    if not isinstance(kind, str) or not isinstance(body, bytes):
        raise PackageError(PackageRefusal.NOT_SIGNED, "bad kind or body")
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
        raise PackageError(PackageRefusal.NOT_SIGNED, "missing or short signature")
    return kind, body, signature
