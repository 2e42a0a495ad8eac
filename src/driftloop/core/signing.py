"""Ed25519 signatures over a saved model's manifest: who may make a version servable.

Training holds the private key (``DRIFTLOOP_SIGNING_KEY``, never in a file in git); every loader
(serving, training's champion, the rollout) holds only public keys. A signature reads
``ed25519:<key id>:<base64 signature>``, the key id being the first 16 hex digits of the public
key's SHA-256, so a verifier with several trusted keys (a rotation in progress) knows which to
use, and a log line can say which key signed without showing it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from driftloop.core.errors import InputError

SCHEME = "ed25519"


class SignatureError(InputError):
    """A signature that is missing, malformed, by an untrusted key, or does not match."""


@dataclass(frozen=True)
class KeyPair:
    """A private key and its public half, both as base64 of their 32 raw bytes."""

    private: str
    public: str

    @property
    def key_id(self) -> str:
        """The public key's id (16 hex digits of its SHA-256)."""
        return key_id(self.public)


def _b64decode(value: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{what}: not base64") from None
    if len(raw) != 32 and what != "signature":
        raise SignatureError(f"{what}: {len(raw)} bytes, an Ed25519 key has 32")
    return raw


def generate() -> KeyPair:
    """A new key pair."""
    private = Ed25519PrivateKey.generate()
    return KeyPair(
        base64.b64encode(private.private_bytes_raw()).decode(),
        base64.b64encode(private.public_key().public_bytes_raw()).decode(),
    )


def public_of(private_b64: str) -> str:
    """The public key (base64) of a private key (base64)."""
    private = Ed25519PrivateKey.from_private_bytes(_b64decode(private_b64, "the signing key"))
    return base64.b64encode(private.public_key().public_bytes_raw()).decode()


def key_id(public_b64: str) -> str:
    """16 hex digits naming a public key."""
    return hashlib.sha256(_b64decode(public_b64, "a public key")).hexdigest()[:16]


def sign(data: bytes, private_b64: str) -> str:
    """``ed25519:<key id>:<signature>`` over ``data``."""
    private = Ed25519PrivateKey.from_private_bytes(_b64decode(private_b64, "the signing key"))
    public = base64.b64encode(private.public_key().public_bytes_raw()).decode()
    signature = base64.b64encode(private.sign(data)).decode()
    return f"{SCHEME}:{key_id(public)}:{signature}"


def verify(data: bytes, signature: str, trusted: Iterable[str]) -> str:
    """The id of the trusted public key whose signature over ``data`` ``signature`` is;
    :class:`SignatureError` otherwise (saying why, never showing a key)."""
    if not signature:
        raise SignatureError("no signature")
    parts = signature.split(":")
    if len(parts) != 3 or parts[0] != SCHEME:
        raise SignatureError(f"not an {SCHEME} signature")
    wanted, raw = parts[1], _b64decode(parts[2], "signature")
    keys = {key_id(k): k for k in trusted}
    if not keys:
        raise SignatureError("no trusted public key is configured")
    public = keys.get(wanted)
    if public is None:
        raise SignatureError(f"signed by key {wanted}, which is not trusted (trusted: {sorted(keys)})")
    try:
        Ed25519PublicKey.from_public_bytes(_b64decode(public, "a public key")).verify(raw, data)
    except InvalidSignature:
        raise SignatureError(f"the signature by key {wanted} does not match the data") from None
    return wanted


def public_pem(public_b64: str) -> str:
    """The public key as PEM (for tools that want it, e.g. ``openssl pkeyutl -verify``)."""
    key = Ed25519PublicKey.from_public_bytes(_b64decode(public_b64, "a public key"))
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
