"""RFC 3464 delivery status notifications and RFC 5965 ARF complaints, parsed with the standard
library's email package into typed reports. No I/O, no database: `service` matches a report to
a message and records it."""

from __future__ import annotations

import email
import email.policy
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from email.message import Message
from email.parser import BytesHeaderParser
from email.utils import getaddresses, parsedate_to_datetime
from typing import Literal

from app.delivery.vocabulary import BounceType, EventType

MAX_REPORT_BYTES = 1024 * 1024
"""A report bigger than this is refused, wherever it comes in (1 MiB: a DSN quoting a whole
message with attachments is cut to its headers by every MTA worth the name)."""

ENVELOPE_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To")
"""Headers of the report itself where the address it was sent to, a VERP address, shows."""

_STATUS = re.compile(r"([245])\.\d{1,3}\.\d{1,3}")

Kind = Literal["dsn", "arf"]


class NotAReport(ValueError):
    """The message is not a delivery status notification or a feedback report: said why."""


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    """One recipient's block of a DSN (or the reported recipient of a complaint)."""

    email: str | None
    """Final-Recipient (else Original-Recipient), the address only, lower case."""
    original: str | None
    event: EventType
    bounce_type: BounceType | None
    status: str | None
    """The enhanced status code, e.g. 5.1.1."""
    diagnostic: str | None
    """Diagnostic-Code without its type (`smtp; `), or the complaint's feedback type."""
    occurred_at: datetime | None


@dataclass(frozen=True, slots=True)
class Report:
    kind: Kind
    report_id: str
    """The report's Message-ID, else a hash of its bytes: what makes a re-delivered report the
    same events (the event ids derive from it)."""
    recipients: tuple[RecipientStatus, ...]
    original_message_id: str | None
    """The Message-ID of the mail it is about, from the returned headers."""
    addresses: tuple[str, ...]
    """Where a VERP token may be: the addresses the report was sent to and the returned mail's
    Return-Path (or the complaint's Original-Mail-From)."""
    occurred_at: datetime | None

    def event_id(self, recipient: RecipientStatus) -> str:
        key = f"{self.report_id}\n{recipient.email}\n{recipient.original}\n{recipient.event}"
        return hashlib.sha256(key.encode()).hexdigest()


def parse(raw: bytes) -> Report:
    """The report in `raw` (one RFC 5322 message). Raises NotAReport."""
    if len(raw) > MAX_REPORT_BYTES:
        raise NotAReport(f"the report is over {MAX_REPORT_BYTES} bytes")
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    if message.get_content_type() != "multipart/report" or not message.is_multipart():
        raise NotAReport(
            f"not a delivery report: the content type is {message.get_content_type()}, not"
            " multipart/report (RFC 3464 or RFC 5965)"
        )
    report_id = _header(message, "Message-ID") or hashlib.sha256(raw).hexdigest()
    occurred_at = _date(_header(message, "Date"))
    parts = list(message.walk())
    original = _original_headers(parts)
    addresses = [v for name in ENVELOPE_HEADERS for v in message.get_all(name, [])]
    if original is not None:
        addresses += original.get_all("Return-Path", [])
    original_id = _header(original, "Message-ID") if original is not None else None
    types = {part.get_content_type(): part for part in reversed(parts)}  # the first of each
    status_part = types.get("message/delivery-status")
    feedback = types.get("message/feedback-report")
    if status_part is not None:
        recipients = _dsn_recipients(status_part, occurred_at)
        kind: Kind = "dsn"
    elif feedback is not None:
        fields = _feedback_fields(feedback)
        addresses += fields.get_all("Original-Mail-From", [])
        recipients = (_complaint(fields, original, occurred_at),)
        kind = "arf"
    else:
        raise NotAReport(
            "not a delivery report: a multipart/report without a message/delivery-status or"
            " message/feedback-report part"
        )
    if not recipients:
        raise NotAReport("the delivery status names no recipient (no Final-Recipient block)")
    return Report(
        kind=kind,
        report_id=report_id[:255],
        recipients=recipients,
        original_message_id=original_id,
        addresses=tuple(addresses),
        occurred_at=occurred_at,
    )


def _header(message: Message | None, name: str) -> str | None:
    value = None if message is None else message.get(name)
    if value is None:
        return None
    return " ".join(str(value).split()) or None


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo else None


def _original_headers(parts: list[Message]) -> Message | None:
    """The returned mail's headers: a text/rfc822-headers part, or a message/rfc822 one."""
    for part in parts:
        if part.get_content_type() == "text/rfc822-headers":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                return BytesHeaderParser().parsebytes(payload.lstrip(b"\r\n"))
        if part.get_content_type() == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                return inner[0]
    return None


def _address(value: str | None) -> str | None:
    """The address of an `rfc822; someone@example.com` field (its type said or not)."""
    if not value:
        return None
    kind, _, address = value.partition(";")
    if not address:
        address = kind
    elif kind.strip().lower() != "rfc822":
        return None
    address = address.strip().strip("<>").strip()
    return address.lower() or None


def _dsn_recipients(part: Message, occurred_at: datetime | None) -> tuple[RecipientStatus, ...]:
    """The per-recipient blocks. The email package parses message/delivery-status into a list of
    header blocks: the per-message fields first, then one per recipient."""
    payload = part.get_payload()
    blocks = [b for b in payload if isinstance(b, Message)] if isinstance(payload, list) else []
    if not blocks:
        raise NotAReport("the message/delivery-status part has no fields")
    # When it happened: the block's Last-Attempt-Date, else the report's Date, else when the
    # reporting MTA took the mail.
    arrival = occurred_at or _date(_header(blocks[0], "Arrival-Date"))
    found = []
    for block in blocks[1:]:
        action = (_header(block, "Action") or "").lower()
        if not action:
            continue
        status = _header(block, "Status")
        code = _STATUS.search(status or "")
        diagnostic = _header(block, "Diagnostic-Code")
        if diagnostic is not None and ";" in diagnostic:
            diagnostic = diagnostic.partition(";")[2].strip()
        event, bounce = _event(action, code.group(1) if code else None)
        found.append(
            RecipientStatus(
                email=_address(_header(block, "Final-Recipient"))
                or _address(_header(block, "Original-Recipient")),
                original=_address(_header(block, "Original-Recipient")),
                event=event,
                bounce_type=bounce,
                status=code.group(0) if code else status,
                diagnostic=diagnostic,
                occurred_at=_date(_header(block, "Last-Attempt-Date")) or arrival,
            )
        )
    return tuple(found)


def _event(action: str, status_class: str | None) -> tuple[EventType, BounceType | None]:
    """RFC 3464's Action as an event: failed is a bounce (hard for 5.x.x, soft for 4.x.x),
    delayed is deferred, delivered / relayed / expanded are delivered."""
    if action == "failed":
        if status_class == "5":
            return "bounced", "hard"
        return "bounced", "soft" if status_class == "4" else "undetermined"
    if action == "delayed":
        return "deferred", None
    if action in ("delivered", "relayed", "expanded"):
        return "delivered", None
    return "unknown", None


def _feedback_fields(part: Message) -> Message:
    """The fields of message/feedback-report: the email package parses any message/* part but
    delivery-status as one message, so the fields are that message's headers."""
    inner = part.get_payload()
    if isinstance(inner, list) and inner and isinstance(inner[0], Message):
        return inner[0]
    raise NotAReport("the message/feedback-report part has no fields")


def _complaint(
    fields: Message, original: Message | None, occurred_at: datetime | None
) -> RecipientStatus:
    """The complaining recipient: Original-Rcpt-To, else the returned mail's To."""
    feedback_type = (_header(fields, "Feedback-Type") or "").lower()
    if not feedback_type:
        raise NotAReport("the feedback report has no Feedback-Type")
    rcpt = _address(_header(fields, "Original-Rcpt-To"))
    if rcpt is None and original is not None:
        rcpt = next((a.lower() for _, a in getaddresses(original.get_all("To", [])) if a), None)
    return RecipientStatus(
        email=rcpt,
        original=None,
        event="unknown" if feedback_type == "not-spam" else "complained",
        bounce_type=None,
        status=None,
        diagnostic=feedback_type,
        occurred_at=_date(_header(fields, "Arrival-Date")) or occurred_at,
    )
