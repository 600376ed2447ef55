"""DKIM keys: made here or imported from PEM, checked, and written as the DNS record to publish.

RSA keys are 2048 to 4096 bits. RFC 8301 sets 1024 as the floor a verifier must accept and says
signers SHOULD use at least 2048: a 1024-bit key is within reach of a well-funded attacker, and
Postroom makes a 2048-bit one for free, so it does not sign with less. 4096 is the most RFC 8301
asks verifiers to handle. Ed25519 keys (RFC 8463) are always 256 bits.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Literal, assert_never

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

Algorithm = Literal["rsa-sha256", "ed25519-sha256"]
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 4096
TXT_STRING = 255
"""A TXT record is a list of strings of at most 255 bytes each (RFC 1035 3.3.14)."""

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class KeyRefused(Exception):
    """A key that cannot be used, and why (the API's 422)."""


@dataclass(frozen=True, slots=True)
class DkimKey:
    algorithm: Algorithm
    private: PrivateKey

    @property
    def bits(self) -> int:
        return self.private.key_size if isinstance(self.private, rsa.RSAPrivateKey) else 256

    @property
    def public(self) -> str:
        """The p= tag: the RSA key as DER SubjectPublicKeyInfo (RFC 6376 3.6.1), the Ed25519 key
        as its 32 bytes (RFC 8463 4.2), in base64."""
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            der = public.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        else:
            der = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(der).decode("ascii")

    def pem(self) -> str:
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")

    def sign(self, digest: bytes) -> bytes:
        """The b= signature of a SHA-256 digest of the signed headers (RFC 8463 signs the digest
        with Ed25519 too, not the data)."""
        if isinstance(self.private, rsa.RSAPrivateKey):
            return self.private.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        return self.private.sign(digest)


def generate(algorithm: Algorithm, bits: int = MIN_RSA_BITS) -> DkimKey:
    """A new key: CPU-bound (an RSA key takes tens to hundreds of milliseconds), run it in a
    thread."""
    if algorithm == "rsa-sha256":
        return DkimKey(algorithm, rsa.generate_private_key(public_exponent=65537, key_size=bits))
    if algorithm == "ed25519-sha256":
        return DkimKey(algorithm, ed25519.Ed25519PrivateKey.generate())
    assert_never(algorithm)


def load(pem: str, algorithm: Algorithm | None = None) -> DkimKey:
    """An imported PEM private key (PKCS#1 or PKCS#8, unencrypted), checked. Raises KeyRefused."""
    try:
        private = serialization.load_pem_private_key(pem.encode("utf-8"), password=None)
    except TypeError as err:
        raise KeyRefused("is encrypted: give it without a passphrase") from err
    except (ValueError, UnsupportedAlgorithm) as err:
        raise KeyRefused(
            "is not a PEM private key (-----BEGIN PRIVATE KEY----- or "
            "-----BEGIN RSA PRIVATE KEY-----) that can be read"
        ) from err
    if isinstance(private, rsa.RSAPrivateKey):
        found: Algorithm = "rsa-sha256"
        if not MIN_RSA_BITS <= private.key_size <= MAX_RSA_BITS:
            raise KeyRefused(
                f"is a {private.key_size}-bit RSA key: DKIM keys here are {MIN_RSA_BITS} to "
                f"{MAX_RSA_BITS} bits (RFC 8301: 1024 is only the floor verifiers accept)"
            )
    elif isinstance(private, ed25519.Ed25519PrivateKey):
        found = "ed25519-sha256"
    else:
        raise KeyRefused(
            f"is a {type(private).__name__.removeprefix('_')}: DKIM takes RSA or Ed25519"
        )
    if algorithm is not None and algorithm != found:
        raise KeyRefused(f"is a key for {found}, not {algorithm}")
    return DkimKey(found, private)


def record(algorithm: Algorithm, public: str) -> str:
    """The TXT record's text: v=DKIM1; k=rsa|ed25519; p=<public key>."""
    return f"v=DKIM1; k={algorithm.partition('-')[0]}; p={public}"


def txt_strings(value: str) -> list[str]:
    """The record cut into the 255-byte strings one TXT record holds (a 2048-bit key needs two);
    a resolver joins them again."""
    return [value[i : i + TXT_STRING] for i in range(0, len(value), TXT_STRING)]
