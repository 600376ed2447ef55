"""The providers' published samples, signed the way each provider signs, with keys made here.

../shared/reference/provider-specs/events/<provider>/*.json hold the bodies; the signatures are
made fresh (a signed timestamp must be recent), so a test owns every key it verifies with.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from app.events.providers.sns import string_to_sign
from tests.transports._provider_specs import SPECS

EVENTS = SPECS / "events"


def sample(provider: str, name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EVENTS / provider / f"{name}.json").read_text())
    return loaded


# --- Mailgun: HMAC-SHA256(key, timestamp + token), hex --------------------------------------------


def mailgun_body(key: str, event_data: dict[str, Any], *, at: float | None = None) -> bytes:
    timestamp = str(int(time.time() if at is None else at))
    token = secrets.token_hex(25)
    signature = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    body = {
        "signature": {"timestamp": timestamp, "token": token, "signature": signature},
        "event-data": event_data,
    }
    return json.dumps(body).encode()


# --- SendGrid: ECDSA P-256 over timestamp + raw body --------------------------------------------


class SendgridKey:
    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        der = self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public = base64.b64encode(der).decode()
        """As SendGrid shows it: base64 DER SubjectPublicKeyInfo."""

    def headers(self, body: bytes, *, at: float | None = None) -> dict[str, str]:
        timestamp = str(int(time.time() if at is None else at))
        signature = self.private.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
            "Content-Type": "application/json",
        }


# --- Mandrill: base64(HMAC-SHA1(key, url + sorted key+value)) ----------------------------------


def mandrill_request(
    key: str, url: str, events: list[dict[str, Any]]
) -> tuple[bytes, dict[str, str]]:
    value = json.dumps(events)
    digest = hmac.new(key.encode(), (url + "mandrill_events" + value).encode(), hashlib.sha1)
    headers = {
        "X-Mandrill-Signature": base64.b64encode(digest.digest()).decode(),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    return urlencode({"mandrill_events": value}).encode(), headers


# --- SNS: RSA PKCS#1 v1.5 over the string to sign, with a certificate at an SNS URL -------------

CERT_URL = "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-test.pem"


class SnsKey:
    """A self-signed certificate standing in for SNS's, and the key that signs with it."""

    def __init__(self) -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
        now = datetime.now(UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .sign(self.private, hashes.SHA256())
        )
        self.pem = self.certificate.public_bytes(serialization.Encoding.PEM)

    def sign(
        self, envelope: dict[str, Any], *, version: str = "1", cert_url: str = CERT_URL
    ) -> bytes:
        """The envelope with SigningCertURL, SignatureVersion and a fresh Signature, as bytes."""
        signed = dict(envelope, SigningCertURL=cert_url, SignatureVersion=version)
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = self.private.sign(string_to_sign(signed), padding.PKCS1v15(), algorithm)
        signed["Signature"] = base64.b64encode(signature).decode()
        return json.dumps(signed).encode()
