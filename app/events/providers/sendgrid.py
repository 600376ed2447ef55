"""SendGrid's Signed Event Webhook: a JSON array of events per request, signed with ECDSA P-256
over timestamp + raw body (X-Twilio-Email-Event-Webhook-Signature / -Timestamp). The profile holds
the public key. A stale timestamp is refused, and a (timestamp, signature) pair is accepted once.
Spec and samples: ../shared/reference/provider-specs/events/sendgrid/.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from app.delivery.vocabulary import BounceType, EventType
from app.events.providers.base import (
    TOLERANCE,
    Incoming,
    Malformed,
    Nonce,
    Received,
    Refused,
    Reported,
    bracketed,
    check_fresh,
    event_id,
    load_json,
    maybe,
    need,
    unix_time,
)
from app.transports.hook_settings import ec_public_key
from app.transports.sendgrid import SendgridConfig

SOURCE = "sendgrid"
SIGNATURE = "x-twilio-email-event-webhook-signature"
TIMESTAMP = "x-twilio-email-event-webhook-timestamp"

_TYPES: dict[str, EventType] = {
    "processed": "sent",
    "dropped": "rejected",
    "delivered": "delivered",
    "deferred": "deferred",
    "open": "opened",
    "click": "clicked",
    "spamreport": "complained",
    "unsubscribe": "unsubscribed",
    "group_unsubscribe": "unsubscribed",
}


class SendgridReceiver:
    source = SOURCE

    def __init__(self, config: SendgridConfig) -> None:
        text = config.webhook_public_key
        self._key = None if text is None else ec_public_key(text)

    async def receive(self, incoming: Incoming) -> Received:
        if self._key is None:
            raise Refused("the profile has no webhookPublicKey: no event can be verified")
        signature, timestamp = incoming.headers.get(SIGNATURE), incoming.headers.get(TIMESTAMP)
        if not signature or not timestamp:
            raise Refused(
                "unsigned: X-Twilio-Email-Event-Webhook-Signature and -Timestamp are required"
            )
        try:
            der = base64.b64decode(signature, validate=True)
            self._key.verify(der, timestamp.encode() + incoming.body, ec.ECDSA(hashes.SHA256()))
        except (binascii.Error, ValueError, InvalidSignature) as err:
            raise Refused("the signature does not verify with the webhookPublicKey") from err
        if not timestamp.isdigit():
            raise Refused("the signed timestamp is not unix seconds")
        signed_at = unix_time(timestamp, "timestamp")
        check_fresh(signed_at, incoming.now)
        body = load_json(incoming.body)
        if not isinstance(body, list):
            raise Malformed("the body is not a JSON array of events")
        events = [_event(item, f"[{index}]") for index, item in enumerate(body)]
        return Received(events, nonce=Nonce(f"{timestamp}:{signature}", signed_at + TOLERANCE))


def _event(item: Any, at: str) -> Reported:
    if not isinstance(item, dict):
        raise Malformed(f"{at} is not an event object", at)
    name = need(item, "event", str, at=at)
    type_ = _TYPES.get(name, "unknown")
    bounce: BounceType | None = None
    if name in ("bounce", "blocked"):
        # `bounce` with type `blocked` (or the newer `blocked` event) is SendGrid's temporary
        # failure; type `bounce` the permanent one.
        soft = name == "blocked" or item.get("type") == "blocked"
        type_, bounce = "bounced", "soft" if soft else "hard"
    message = maybe(item, "sg_message_id")
    reason = maybe(item, "reason") or maybe(item, "response")
    return Reported(
        type=type_,
        email=need(item, "email", str, at=at),
        occurred_at=unix_time(need(item, "timestamp", (int, float), at=at), f"{at}.timestamp"),
        provider_event_id=event_id(need(item, "sg_event_id", str, at=at)),
        provider_message_id=_x_message_id(message),
        message_id=bracketed(maybe(item, "smtp-id")),
        bounce_type=bounce,
        reason=reason or (f"SendGrid event {name!r}" if type_ == "unknown" else None),
        diagnostic_code=maybe(item, "status"),
    )


def _x_message_id(sg_message_id: str | None) -> str | None:
    """The X-Message-Id mail/send answered, which sg_message_id starts with: before `.filter`
    (`14c5d75ce93.dfd.64b469.filter0001...`: older ids hold dots), else before the first dot."""
    if not sg_message_id:
        return None
    if ".filter" in sg_message_id:
        return sg_message_id.split(".filter", 1)[0]
    return sg_message_id.split(".", 1)[0]
