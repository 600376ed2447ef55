"""Mailgun webhooks: one event per JSON request, `{"signature": {...}, "event-data": {...}}`.

The signature is HMAC-SHA256 (hex) of timestamp + token with the account's webhook signing key.
It covers only those two, not the event, so the timestamp must be fresh and the token is accepted
once (the hooks service keeps it: the `Nonce`). Spec and samples:
../shared/reference/provider-specs/events/mailgun/.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from app.delivery.vocabulary import BounceType, EventType
from app.events.providers.base import (
    TOLERANCE,
    Incoming,
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
from app.transports.mailgun import MailgunConfig

SOURCE = "mailgun"
AT = "event-data"

_TYPES: dict[str, EventType] = {
    "accepted": "sent",
    "rejected": "rejected",
    "delivered": "delivered",
    "complained": "complained",
    "opened": "opened",
    "clicked": "clicked",
    "unsubscribed": "unsubscribed",
}


class MailgunReceiver:
    source = SOURCE

    def __init__(self, config: MailgunConfig) -> None:
        key = config.webhook_signing_key
        self._key = None if key is None else key.get_secret_value().encode()

    async def receive(self, incoming: Incoming) -> Received:
        if self._key is None:
            raise Refused("the profile has no webhookSigningKey: no event can be verified")
        body = load_json(incoming.body)
        if not isinstance(body, dict) or not isinstance(body.get("signature"), dict):
            raise Refused("unsigned: the body has no signature object")
        signature: dict[str, Any] = body["signature"]
        timestamp, token, given = (signature.get(k) for k in ("timestamp", "token", "signature"))
        if not all(isinstance(v, str) and v for v in (timestamp, token, given)):
            raise Refused("unsigned: signature.timestamp, .token and .signature are required")
        assert isinstance(timestamp, str) and isinstance(token, str) and isinstance(given, str)
        expected = hmac.new(self._key, (timestamp + token).encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, given.lower()):
            raise Refused("the signature does not match the webhook signing key")
        if not timestamp.isdigit():
            raise Refused("signature.timestamp is not unix seconds")
        signed_at = unix_time(timestamp, "signature.timestamp")
        check_fresh(signed_at, incoming.now)
        data = need(body, "event-data", dict)
        return Received([_event(data)], nonce=Nonce(token, signed_at + TOLERANCE))


def _event(data: dict[str, Any]) -> Reported:
    name = need(data, "event", str, at=AT)
    bounce: BounceType | None = None
    if name == "failed":
        permanent = need(data, "severity", str, at=AT) == "permanent"
        type_: EventType = "bounced" if permanent else "deferred"
        bounce = "hard" if permanent else None
    else:
        type_ = _TYPES.get(name, "unknown")
    status = maybe(data, "delivery-status", dict) or {}
    reason = ": ".join(
        str(part)
        for part in (
            data.get("reason"),
            status.get("description"),
            status.get("message"),
        )
        if part
    )
    code = status.get("enhanced-code") or status.get("code")
    message_id = bracketed(maybe(data, "message.headers.message-id"))
    return Reported(
        type=type_,
        email=need(data, "recipient", str, at=AT),
        occurred_at=unix_time(need(data, "timestamp", (int, float), at=AT), "event-data.timestamp"),
        provider_event_id=event_id(need(data, "id", str, at=AT)),
        provider_message_id=message_id,
        message_id=message_id,
        bounce_type=bounce,
        reason=reason or (None if type_ != "unknown" else f"Mailgun event {name!r}"),
        diagnostic_code=None if code in (None, "") else str(code),
    )
