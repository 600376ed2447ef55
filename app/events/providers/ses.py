"""Amazon SES events, delivered by SNS: identity notifications (`notificationType`: Bounce,
Complaint, Delivery) and configuration-set event publishing (`eventType`, with DeliveryDelay,
Send, Reject, Open, Click, ...), each one SNS message whose `Message` is the SES JSON.

The SNS signature is checked first (sns.py); an optional list of topic ARNs on the profile narrows
what is accepted. A SubscriptionConfirmation that verifies is confirmed by the hooks service (its
SubscribeURL must be an SNS host too). SNS keeps a message's MessageId on every retry, so the
events' ids (MessageId + recipient) make a retried delivery stored once.
Spec and samples: ../shared/reference/provider-specs/events/ses/.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.delivery.vocabulary import BounceType, EventType
from app.events.providers.base import (
    Incoming,
    Malformed,
    Received,
    Refused,
    Reported,
    bracketed,
    event_id,
    iso_time,
    load_json,
    maybe,
    need,
)
from app.events.providers.sns import Sns, sns_url
from app.transports.ses import SesConfig

SOURCE = "ses"

_BOUNCES: dict[str, BounceType] = {
    "Permanent": "hard",
    "Transient": "soft",
    "Undetermined": "undetermined",
}
_SIMPLE: dict[str, EventType] = {
    "Send": "sent",
    "Reject": "rejected",
    "Open": "opened",
    "Click": "clicked",
    "Rendering Failure": "failed",
}


class SesReceiver:
    source = SOURCE

    def __init__(self, config: SesConfig, sns: Sns) -> None:
        self._sns = sns
        self._topics = frozenset(config.webhook_topic_arns or ())

    async def receive(self, incoming: Incoming) -> Received:
        envelope = load_json(incoming.body)  # SNS says text/plain; the body is JSON all the same
        if not isinstance(envelope, dict):
            raise Malformed("the body is not an SNS message (a JSON object)")
        topic = envelope.get("TopicArn")
        if self._topics and topic not in self._topics:
            raise Refused(f"TopicArn {topic!r} is not one of the profile's webhookTopicArns")
        await self._sns.verify(envelope)
        kind = envelope["Type"]
        if kind == "SubscriptionConfirmation":
            url = sns_url(envelope.get("SubscribeURL"), "SubscribeURL")
            return Received(confirm_url=url, note=f"subscription to {topic} confirmed")
        if kind == "UnsubscribeConfirmation":
            return Received(note=f"unsubscribed from {topic}")
        notification = load_json(need(envelope, "Message", str), "Message")
        if not isinstance(notification, dict):
            raise Malformed("Message is not an SES notification (a JSON object)", "Message")
        return Received(_events(notification, need(envelope, "MessageId", str)))


def _events(note: dict[str, Any], sns_id: str) -> list[Reported]:
    kind = maybe(note, "notificationType") or maybe(note, "eventType")
    if kind is None:
        raise Malformed("Message has neither notificationType nor eventType", "Message")
    mail = need(note, "mail", dict, at="Message")
    ses_id = need(mail, "messageId", str, at="Message.mail")
    message_id = bracketed(maybe(mail, "commonHeaders.messageId") or _header(mail, "message-id"))
    at = iso_time(mail.get("timestamp"), "Message.mail.timestamp")
    type_: EventType = _SIMPLE.get(kind, "unknown")
    bounce: BounceType | None = None
    reason: str | None = None
    people = _addresses(mail.get("destination"))
    details: dict[str, Any] = {}
    if kind == "Bounce":
        details = need(note, "bounce", dict, at="Message")
        type_, bounce = "bounced", _BOUNCES.get(str(details.get("bounceType")), "undetermined")
        reason = f"{details.get('bounceType')}/{details.get('bounceSubType')}"
        people = _listed(details, "bouncedRecipients")
    elif kind == "Complaint":
        details = need(note, "complaint", dict, at="Message")
        type_, reason = "complained", maybe(details, "complaintFeedbackType")
        people = _listed(details, "complainedRecipients")
    elif kind == "Delivery":
        details = need(note, "delivery", dict, at="Message")
        type_, reason = "delivered", maybe(details, "smtpResponse")
        people = _addresses(details.get("recipients"))
    elif kind == "DeliveryDelay":
        details = need(note, "deliveryDelay", dict, at="Message")
        type_, reason = "deferred", maybe(details, "delayType")
        people = _listed(details, "delayedRecipients")
    elif kind in ("Reject", "Rendering Failure"):
        details = maybe(note, "reject", dict) or maybe(note, "failure", dict) or {}
        reason = maybe(details, "reason") or maybe(details, "errorMessage")
    if type_ == "unknown":
        reason = f"SES event {kind!r}"
    occurred: datetime = at
    if isinstance(details.get("timestamp"), str):
        occurred = iso_time(details["timestamp"], "Message.timestamp")
    return [
        Reported(
            type=type_,
            email=person["emailAddress"],
            occurred_at=occurred,
            provider_event_id=event_id(sns_id, person["emailAddress"].lower()),
            provider_message_id=ses_id,
            message_id=message_id,
            bounce_type=bounce,
            reason=maybe(person, "diagnosticCode") or reason,
            diagnostic_code=maybe(person, "status"),
        )
        for person in people
    ]


def _addresses(value: Any) -> list[dict[str, Any]]:
    """A list of addresses as the recipient objects of the other events."""
    return [{"emailAddress": a} for a in value or () if isinstance(a, str)]


def _listed(details: dict[str, Any], name: str) -> list[dict[str, Any]]:
    people = [
        p
        for p in details.get(name) or ()
        if isinstance(p, dict) and isinstance(p.get("emailAddress"), str)
    ]
    if not people:
        raise Malformed(f"Message has no {name}", f"Message.{name}")
    return people


def _header(mail: dict[str, Any], name: str) -> str | None:
    for header in mail.get("headers") or ():
        if isinstance(header, dict) and str(header.get("name", "")).lower() == name:
            value = header.get("value")
            return value if isinstance(value, str) else None
    return None
