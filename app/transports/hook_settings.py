"""Setting types for the provider webhooks a profile receives (issue 14): the keys and names the
providers sign with, checked at save so that a wrong one is a 422 naming the setting rather than
every event refused later. They live beside the transports' settings because a profile's settings
are its transport's config model; only app/events/providers reads them."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key
from pydantic import AfterValidator, Field


def ec_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """SendGrid's verification key: base64 DER SubjectPublicKeyInfo as its UI and API show it
    (or the same in PEM), on curve P-256; ValueError otherwise."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = load_pem_public_key(text.encode())
        else:
            key = load_der_public_key(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error, TypeError) as err:
        raise ValueError(
            "is not a public key: paste the base64 key SendGrid shows for the Signed Event Webhook"
        ) from err
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("is not an ECDSA P-256 public key, which SendGrid signs with")
    return key


def _check_ec_public_key(text: str) -> str:
    ec_public_key(text)
    return text


EcPublicKey = Annotated[str, Field(max_length=4000), AfterValidator(_check_ec_public_key)]
"""An ECDSA P-256 public key, as SendGrid shows it (base64 DER) or in PEM."""

WebhookUrl = Annotated[str, Field(max_length=2000, pattern=r"^https?://\S+$")]
"""The URL exactly as configured at the provider (Mandrill signs it byte for byte): kept as given,
not normalised."""

TopicArn = Annotated[
    str,
    Field(max_length=1024, pattern=r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_.-]{1,256}$"),
]
"""An SNS topic ARN: arn:aws:sns:us-east-1:123456789012:ses-events."""
