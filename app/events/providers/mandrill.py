"""Mandrill (Mailchimp Transactional) webhooks: a form POST whose one field, `mandrill_events`,
is a JSON array of up to 1000 events. X-Mandrill-Signature is base64(HMAC-SHA1(webhook key, the
webhook URL exactly as configured + each form key and value, sorted by key)). Nothing signed is a
timestamp or nonce: a replay stores nothing new because each event's id (`_id`, event, `ts`) is
stored once. Mandrill's first, unsigned HEAD is answered by the router.
Spec and samples: ../shared/reference/provider-specs/events/mandrill/.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any
from urllib.parse import parse_qsl

from app.delivery.vocabulary import BounceType, EventType
from app.events.providers.base import (
    Incoming,
    Malformed,
    Received,
    Refused,
    Reported,
    event_id,
    load_json,
    maybe,
    need,
    unix_time,
)
from app.transports.mandrill import MandrillConfig

SOURCE = "mandrill"
SIGNATURE = "x-mandrill-signature"

_TYPES: dict[str, tuple[EventType, BounceType | None]] = {
    "send": ("sent", None),
    "deferral": ("deferred", None),
    "hard_bounce": ("bounced", "hard"),
    "soft_bounce": ("bounced", "soft"),
    "delivered": ("delivered", None),
    "open": ("opened", None),
    "click": ("clicked", None),
    "spam": ("complained", None),
    "unsub": ("unsubscribed", None),
    "reject": ("rejected", None),
}


class MandrillReceiver:
    source = SOURCE

    def __init__(self, config: MandrillConfig) -> None:
        key = config.webhook_key
        self._key = None if key is None else key.get_secret_value().encode()
        self._url = config.webhook_url

    async def receive(self, incoming: Incoming) -> Received:
        if self._key is None or self._url is None:
            raise Refused("the profile has no webhookKey and webhookUrl: no event can be verified")
        given = incoming.headers.get(SIGNATURE)
        if not given:
            raise Refused("unsigned: no X-Mandrill-Signature header")
        try:
            form = parse_qsl(incoming.body.decode(), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError) as err:
            raise Malformed(f"the body is not a form (mandrill_events=...): {err}") from err
        signed = self._url + "".join(key + value for key, value in sorted(form))
        digest = hmac.new(self._key, signed.encode(), hashlib.sha1).digest()
        if not hmac.compare_digest(base64.b64encode(digest).decode(), given):
            raise Refused("the signature does not match the webhookKey and webhookUrl")
        fields = dict(form)
        if "mandrill_events" not in fields:
            raise Malformed("the form has no mandrill_events field", "mandrill_events")
        batch = load_json(fields["mandrill_events"], "mandrill_events")
        if not isinstance(batch, list):
            raise Malformed("mandrill_events is not a JSON array", "mandrill_events")
        events = [
            _event(item, f"mandrill_events[{index}]")
            for index, item in enumerate(batch)
            if not (isinstance(item, dict) and "event" not in item and "type" in item)
        ]
        skipped = len(batch) - len(events)
        note = f"{skipped} allowlist/denylist sync events skipped" if skipped else None
        return Received(events, note=note)


def _event(item: Any, at: str) -> Reported:
    if not isinstance(item, dict):
        raise Malformed(f"{at} is not an event object", at)
    name = need(item, "event", str, at=at)
    mandrill_id = need(item, "_id", str, at=at)
    ts = need(item, "ts", int, at=at)
    type_, bounce = _TYPES.get(name, ("unknown", None))
    msg: dict[str, Any] = maybe(item, "msg", dict) or {}
    smtp_events = [e for e in msg.get("smtp_events") or () if isinstance(e, dict)]
    diag = maybe(msg, "diag") or (maybe(smtp_events[-1], "diag") if smtp_events else None)
    reason = maybe(msg, "bounce_description") or maybe(msg, "reject_reason") or diag
    return Reported(
        type=type_,
        email=maybe(msg, "email"),
        occurred_at=unix_time(ts, f"{at}.ts"),
        provider_event_id=event_id(mandrill_id, name, str(ts)),
        provider_message_id=mandrill_id,
        message_id=None,
        bounce_type=bounce,
        reason=reason or (f"Mandrill event {name!r}" if type_ == "unknown" else None),
        diagnostic_code=diag,
    )
