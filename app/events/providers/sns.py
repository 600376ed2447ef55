"""Amazon SNS, the carrier of SES's notifications: its message signature, its signing
certificates (fetched only from an `sns.<region>.amazonaws.com` host, over https, and cached per
process by URL: what a URL serves never changes), and the GET that confirms a subscription.

The seam for tests: `Sns` takes the httpx client it fetches with. The app gives it the shared
client (egress policy checked on every connection); a test gives it a client whose transport
serves a certificate the test made (`HOOKS.of(app).sns = Sns(client)`).
Rules: ../shared/reference/provider-specs/events/ses/signature.md.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from app.egress import EgressDenied
from app.errors import AppError
from app.events.providers.base import Refused

SNS_HOST = re.compile(r"sns\.[a-zA-Z0-9-]{3,}\.amazonaws\.com(\.cn)?")
"""AWS's own validator's rule: an SNS endpoint, not any amazonaws.com host (an S3 bucket)."""
FETCH_TIMEOUT = 10.0
MAX_CERTIFICATE_BYTES = 64 * 1024
CACHED_CERTIFICATES = 32

SIGNED_KEYS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
SIGNED_KEYS["UnsubscribeConfirmation"] = SIGNED_KEYS["SubscriptionConfirmation"]
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}


class SnsUnavailable(AppError):
    """SNS could not be reached (the certificate, or the confirmation): a 503, so SNS retries."""

    status_code = 503
    code = "sns_unavailable"


def sns_url(url: Any, field: str) -> str:
    """`url` when it is https on an SNS host; Refused otherwise: Postroom fetches nothing else."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme != "https" or not SNS_HOST.fullmatch(parts.hostname or ""):
        raise Refused(f"{field} is not an https URL on an sns.<region>.amazonaws.com host")
    return str(url)


def string_to_sign(envelope: dict[str, Any]) -> bytes:
    """`key\\nvalue\\n` for each signed key the message has, in SNS's order."""
    keys = SIGNED_KEYS[envelope["Type"]]
    return "".join(
        f"{key}\n{envelope[key]}\n" for key in keys if isinstance(envelope.get(key), str)
    ).encode()


class Sns:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client
        self._keys: OrderedDict[str, rsa.RSAPublicKey] = OrderedDict()

    async def verify(self, envelope: dict[str, Any]) -> None:
        """Raise Refused unless SNS signed `envelope` (a parsed SNS message)."""
        kind = envelope.get("Type")
        if kind not in SIGNED_KEYS:
            raise Refused(f"Type {kind!r} is not an SNS message type")
        signature = envelope.get("Signature")
        if not isinstance(signature, str) or not signature:
            raise Refused("unsigned: the SNS message has no Signature")
        version = envelope.get("SignatureVersion", "1")
        if version not in _HASHES:
            raise Refused(f"SignatureVersion {version!r} is not 1 or 2")
        url = sns_url(envelope.get("SigningCertURL"), "SigningCertURL")
        if not urlsplit(url).path.endswith(".pem"):
            raise Refused("SigningCertURL does not name a .pem certificate")
        key = await self.public_key(url)
        try:
            key.verify(
                base64.b64decode(signature, validate=True),
                string_to_sign(envelope),
                padding.PKCS1v15(),
                _HASHES[version](),
            )
        except (binascii.Error, ValueError, InvalidSignature) as err:
            raise Refused("the SNS signature does not verify with its certificate") from err

    async def public_key(self, url: str) -> rsa.RSAPublicKey:
        """The certificate's key, fetched once per URL by this process."""
        key = self._keys.get(url)
        if key is not None:
            self._keys.move_to_end(url)
            return key
        pem = await self._get(url, "the SNS signing certificate")
        try:
            found = x509.load_pem_x509_certificate(pem).public_key()
        except ValueError as err:
            raise SnsUnavailable(f"{url} is not a PEM certificate") from err
        if not isinstance(found, rsa.RSAPublicKey):
            raise Refused("the SNS signing certificate has no RSA key")
        self._keys[url] = found
        if len(self._keys) > CACHED_CERTIFICATES:
            self._keys.popitem(last=False)
        return found

    async def confirm(self, url: str) -> None:
        """GET SubscribeURL: the subscription starts delivering."""
        await self._get(url, "the subscription confirmation")

    async def _get(self, url: str, what: str) -> bytes:
        try:
            response = await self._client.get(url, timeout=FETCH_TIMEOUT)
        except (httpx.HTTPError, EgressDenied) as err:
            raise SnsUnavailable(f"{what} could not be fetched: {err}") from err
        if response.status_code != 200:
            raise SnsUnavailable(f"{what}: SNS answered HTTP {response.status_code}")
        if len(response.content) > MAX_CERTIFICATE_BYTES:
            raise SnsUnavailable(f"{what}: the answer is over {MAX_CERTIFICATE_BYTES} bytes")
        return response.content
