"""VERP envelope senders: `bounces+<token>@<bounceDomain>`, so a bounce says which message (and
recipient) it is about even when the relay's report is vague or the address was forwarded.

The token is base32 (lower case, no padding) of: the message's 16-byte id, then the recipient
row's id (big-endian, as few bytes as it needs; absent for a group envelope), then the first
MAC_BYTES of an HMAC-SHA256 over both, keyed with `SecretBox.derive(PURPOSE)`. Base32 reads the
same whatever case an MTA gives the local part back in; the MAC makes it unforgeable, so a
report cannot bounce an address it did not come from. With a recipient it is 52 characters,
`bounces+` and the token stay within SMTP's 64-octet local part.

Which recipient: an envelope with one recipient names it in the token. A BCC group envelope
(app/delivery/grouping.py) carries many, so its token names only the message, and the report's
Final-Recipient / Original-Recipient picks the recipient among the message's rows.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from app.delivery.rows import RecipientRow
from app.servers.models import ServerProfile
from app.transports.base import OutgoingMessage

PURPOSE = "postroom verp"
PREFIX = "bounces+"
MAC_BYTES = 8
MESSAGE_BYTES = 16
_ADDRESS = re.compile(r"bounces\+([a-z2-7]{30,60})@", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class VerpToken:
    """What a valid token says: the message, and the recipient when the envelope had one."""

    message_pk: str
    recipient_pk: int | None


class Verp:
    """Makes and reads the signed envelope senders."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, data: bytes) -> bytes:
        return hmac.new(self._key, data, hashlib.sha256).digest()[:MAC_BYTES]

    def address(self, domain: str, message_pk: str, recipient_pk: int | None = None) -> str:
        data = bytes.fromhex(message_pk)
        if recipient_pk is not None:
            data += recipient_pk.to_bytes(max(1, (recipient_pk.bit_length() + 7) // 8), "big")
        token = base64.b32encode(data + self._mac(data)).decode().rstrip("=").lower()
        return f"{PREFIX}{token}@{domain}"

    def read(self, address: str) -> VerpToken | None:
        """The token in `address` (anywhere in it: a header value with a display name will do),
        or None when there is none or its MAC does not match."""
        found = _ADDRESS.search(address)
        if found is None:
            return None
        token = found.group(1).upper()
        try:
            raw = base64.b32decode(token + "=" * (-len(token) % 8))
        except binascii.Error:
            return None
        data, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        if len(data) < MESSAGE_BYTES or not hmac.compare_digest(mac, self._mac(data)):
            return None
        rest = data[MESSAGE_BYTES:]
        return VerpToken(
            message_pk=data[:MESSAGE_BYTES].hex(),
            recipient_pk=int.from_bytes(rest, "big") if rest else None,
        )

    def envelope(
        self,
        outgoing: OutgoingMessage,
        profile: ServerProfile | None,
        message_pk: str,
        recipients: Sequence[RecipientRow],
    ) -> OutgoingMessage:
        """`outgoing` with the VERP envelope sender when `profile` sets a bounce domain."""
        domain = bounce_domain(profile)
        if domain is None:
            return outgoing
        recipient_pk = None
        if len(outgoing.recipients) == 1:
            [email] = outgoing.recipients
            recipient_pk = next((r.id for r in recipients if r.email == email), None)
        return replace(outgoing, envelope_from=self.address(domain, message_pk, recipient_pk))


def bounce_domain(profile: ServerProfile | None) -> str | None:
    """The profile's `bounceDomain`: SMTP profiles only. HTTP providers choose the envelope sender
    themselves (SES, SendGrid, Mailgun, Mandrill report bounces through their webhooks; Graph
    through non-delivery reports in the sending mailbox)."""
    if profile is None or profile.type != "smtp":
        return None
    domain = profile.settings.get("bounceDomain")
    return domain if isinstance(domain, str) and domain else None
