"""One-click unsubscribe (RFC 8058): the signed link a message carries in `List-Unsubscribe`
(app/events/unsubscribe.py is what a POST to it does).

The token holds the address, the profile the mail went through and the message, signed with an
HMAC keyed from the secret keys (`SecretBox.derive`): it needs no row to check, so a link keeps
working after its message is purged, and nobody can make one for an address they choose.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

from app.config import Settings
from app.crypto import SecretBox
from app.errors import NotFound

PURPOSE = "postroom list-unsubscribe links"
MAC_BYTES = 16
SEPARATOR = "\n"
"""Between the token's fields: no address, profile name or message id holds one."""


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """What a valid link names."""

    address: str
    profile: str
    message_pk: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Links:
    """Makes and checks the signed links; the same on every replica sharing the secret keys."""

    def __init__(self, key: bytes, base_url: str | None) -> None:
        self._key = key
        self.base_url = base_url.rstrip("/") if base_url else None

    @classmethod
    def of(cls, settings: Settings, box: SecretBox) -> Links:
        return cls(box.derive(PURPOSE), settings.public_url)

    def _mac(self, data: bytes) -> bytes:
        return hmac.new(self._key, data, hashlib.sha256).digest()[:MAC_BYTES]

    def token(self, link: Unsubscribe) -> str:
        data = SEPARATOR.join((link.address, link.profile, link.message_pk)).encode()
        return f"{_b64(data)}.{_b64(self._mac(data))}"

    def url(self, link: Unsubscribe) -> str | None:
        """The link for List-Unsubscribe; None without POSTROOM_PUBLIC_URL."""
        return None if self.base_url is None else f"{self.base_url}/u/{self.token(link)}"

    def read(self, token: str) -> Unsubscribe:
        """What a token names; a 404 for one this service did not sign (forged or mangled)."""
        data_part, _, mac_part = token.partition(".")
        try:
            data, mac = _unb64(data_part), _unb64(mac_part)
            fields = data.decode().split(SEPARATOR)
        except (binascii.Error, ValueError) as err:
            raise _unknown() from err
        if len(fields) != 3 or not hmac.compare_digest(mac, self._mac(data)):
            raise _unknown()
        return Unsubscribe(*fields)


def _unknown() -> NotFound:
    return NotFound(
        "this unsubscribe link is not valid", details=[{"field": "token", "message": "invalid"}]
    )
