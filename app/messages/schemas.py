"""POST /messages and the sending records, at the API's edge."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, Field, field_validator, model_validator

from app.delivery.vocabulary import BounceType, EventType
from app.errors import FieldsError
from app.schemas import CamelModel, EmailAddress, ProfileName, SafeStr

LINE_BREAKS = frozenset("\r\n\0\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
"""CR, LF, NUL, and every other character str.splitlines() breaks at: Python's email package
refuses a header value holding any of them, so such a message could never be composed."""


_LINE_BREAK = re.compile("[" + re.escape("".join(sorted(LINE_BREAKS))) + "]")


def _one_line(value: str) -> str:
    if _LINE_BREAK.search(value):
        raise ValueError("must be one line: no CR, LF, NUL or other line separator")
    return value


HeaderText = Annotated[SafeStr, AfterValidator(_one_line)]
"""Text that goes into a header: SafeStr, and no line separator of any kind."""

MAX_SCHEDULE = timedelta(days=30)
"""How far ahead `sendAt` may be."""

RESERVED_HEADERS = frozenset(
    {
        "from", "to", "cc", "bcc", "subject", "date", "message-id", "mime-version",
        "content-type", "content-transfer-encoding", "reply-to", "sender", "return-path",
        "received", "resent-bcc", "resent-to", "resent-cc", "resent-from",
    }
)  # fmt: skip


class AddressIn(CamelModel):
    email: EmailAddress
    name: HeaderText | None = Field(None, max_length=200)


def _address(value: Any) -> Any:
    return {"email": value} if isinstance(value, str) else value


class GroupRecipientIn(AddressIn):
    data: dict[str, Any] | None = None
    """Template data for this recipient alone: it then gets a message of its own."""


class AttachmentIn(CamelModel):
    filename: HeaderText = Field(min_length=1, max_length=255)
    content_type: str = Field(
        "application/octet-stream", max_length=255, pattern=r"^[\w.+-]+/[\w.+-]+$"
    )
    content: str
    """Base64."""

    @field_validator("content")
    @classmethod
    def _base64(cls, value: str) -> str:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as err:
            raise ValueError("is not valid base64") from err
        return value


class MessageIn(CamelModel):
    """A message to send: visible to/cc/bcc, or a `recipients` group that gets it privately."""

    from_: AddressIn | None = Field(None, alias="from")
    to: list[AddressIn] = Field(default_factory=list)
    cc: list[AddressIn] = Field(default_factory=list)
    bcc: list[AddressIn] = Field(default_factory=list)
    recipients: list[GroupRecipientIn] | None = None
    reply_to: list[AddressIn] = Field(default_factory=list, max_length=10)
    subject: HeaderText | None = Field(None, max_length=998)
    text: str | None = None
    html: str | None = None
    attachments: list[AttachmentIn] = Field(default_factory=list, max_length=100)
    headers: dict[str, HeaderText] = Field(default_factory=dict, max_length=50)
    template: ProfileName | None = None
    data: dict[str, Any] | None = None
    theme: ProfileName | None = None
    """A theme other than the profile's; null sends without one."""
    server: ProfileName | None = None
    """A profile name; the default profile otherwise."""
    resource: SafeStr | None = Field(None, max_length=500)
    """What the mail is about, for the records."""
    ignore_suppressions: bool = False
    """Send even to addresses on the suppression list (admins only): a password reset to an
    address that works again, say."""
    list_unsubscribe: bool | None = None
    """Carry a signed one-click unsubscribe link (List-Unsubscribe, RFC 8058) to each recipient,
    or not; null: as the profile says. A group's members then get a message each; visible mail
    carries one only when it has a single recipient. Needs POSTROOM_PUBLIC_URL."""
    send_at: datetime | None = None
    """Send it no sooner than this (ISO 8601; without an offset, UTC), at most 30 days ahead:
    until then its record says `scheduled`, and it can be cancelled."""

    @field_validator("send_at")
    @classmethod
    def _send_at(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        now = datetime.now(UTC)
        if value < now:
            raise ValueError(f"must not be in the past (it is now {now:%Y-%m-%dT%H:%M:%SZ})")
        if value > now + MAX_SCHEDULE:
            raise ValueError(f"must be at most {MAX_SCHEDULE.days} days ahead")
        return value

    @field_validator("from_", mode="before")
    @classmethod
    def _from(cls, value: Any) -> Any:
        return _address(value)

    @field_validator("to", "cc", "bcc", "reply_to", "recipients", mode="before")
    @classmethod
    def _addresses(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        return [_address(item) for item in value] if isinstance(value, list) else value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not name or any(ord(ch) < 33 or ord(ch) > 126 or ch == ":" for ch in name):
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"{name} is set from the message's fields, not as a header")
        return value

    @model_validator(mode="after")
    def _shape(self) -> Self:
        visible = self.to or self.cc or self.bcc
        if self.recipients is not None and visible:
            raise ValueError("give either to/cc/bcc or recipients, not both")
        if not visible and not self.recipients:
            raise ValueError("no recipient: give to, cc, bcc or recipients")
        if self.text is None and self.html is None and self.template is None:
            raise ValueError("no content: give text, html or a template")
        if self.template is None:
            if self.data is not None:
                raise FieldsError("data is used only with a template", "data")
            if any(r.data is not None for r in self.recipients or ()):
                raise FieldsError("per-recipient data is used only with a template", "recipients")
        return self

    @property
    def is_group(self) -> bool:
        return self.recipients is not None


class Accepted(CamelModel):
    """The answer to POST /messages: the message is stored and will be delivered."""

    id: str
    status: str
    """`queued`; `scheduled` with a `sendAt`; `suppressed` when every recipient is on the
    suppression list: nothing will be sent, and the message ends `suppressed`."""
    message_id: str
    suppressed: list[str] = Field(default_factory=list)
    """The recipients on the suppression list as it was accepted: they will not be sent to."""


class Resent(Accepted):
    """The answer to a resend: the new message, which sends the old one again."""

    resent_from: str
    recipients: list[str]
    """Who it goes to: the old message's recipients it did not reach (failed, rejected or
    bounced), in the same roles (to, cc, bcc, or the group)."""


MAX_BATCH = 1000


class BatchIn(CamelModel):
    """Many messages in one request; each is checked and stored on its own."""

    messages: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_BATCH)
    """Each item is a message as POST /api/v1/messages takes it."""


class BatchItem(CamelModel):
    """One message's outcome: 202 with its id, or the 4xx error it would have had alone."""

    status: int
    id: str | None = None
    message_id: str | None = None
    suppressed: list[str] = Field(default_factory=list)
    """As in POST /messages' answer: its recipients on the suppression list."""
    error: dict[str, Any] | None = None


class BatchOut(CamelModel):
    accepted: int
    rejected: int
    results: list[BatchItem]


class EventOut(CamelModel):
    """One delivery event: Postroom's own (`source` postroom), a provider's or a bounce report's."""

    type: EventType
    bounce_type: BounceType | None
    occurred_at: datetime
    source: str
    reason: str | None
    diagnostic_code: str | None
    provider_event_id: str | None

    @classmethod
    def accepted(cls, at: datetime) -> EventOut:
        """Every recipient's first event, `queued`: the message's acceptance (not a row)."""
        return cls(
            type="queued",
            bounce_type=None,
            occurred_at=at,
            source="postroom",
            reason=None,
            diagnostic_code=None,
            provider_event_id=None,
        )


class RecipientOut(CamelModel):
    email: str
    kind: str
    status: str
    code: int | None
    response: str | None
    events: list[EventOut] = Field(default_factory=list)
    """What happened to the message for this recipient, oldest first."""


class AttemptOut(CamelModel):
    number: int
    server: str
    started_at: datetime
    duration_ms: float
    outcome: str
    recipients: int
    tls_version: str | None
    reply_code: int | None
    reply: str | None
    provider_id: str | None
    error_code: str | None
    error: str | None
    ambiguous: bool


class MessageSummary(CamelModel):
    id: str
    message_id: str
    status: str
    sender: str
    subject: str
    server: str | None
    template: str | None
    theme: str | None
    resource: str | None
    created_by: str
    client_ip: str | None
    attempts: int
    created_at: datetime
    sent_at: datetime | None
    next_attempt_at: datetime | None
    last_error: str | None
    send_at: datetime | None
    """The `sendAt` it was posted with (null: at once)."""
    resent_from: str | None
    """The message this one sends again (POST /messages/{id}/resend)."""
    resent_as: str | None
    """The message that sends this one again."""
    body_purged_at: datetime | None
    """When its bodies and attachments were purged (POSTROOM_RETENTION_BODY_DAYS): it can no
    longer be shown, nor resent."""


class MessageOut(MessageSummary):
    recipients: list[RecipientOut]
    attempt_log: list[AttemptOut]
    events: list[EventOut] = Field(default_factory=list)
    """Events about the whole message rather than one recipient, oldest first."""


class MessagePage(CamelModel):
    items: list[MessageSummary]
    next_cursor: str | None


MessageStatus = Literal[
    "scheduled", "queued", "sending", "sent", "partially_sent", "failed", "suppressed", "cancelled"
]
"""scheduled: queued with a `sendAt` still ahead, never tried; queued: due, or deferred and
waiting for its next attempt (`nextAttemptAt`); cancelled: a user cancelled it unsent."""


class AttachmentInfo(CamelModel):
    filename: str
    content_type: str
    size: int
    """Bytes, decoded."""


class Rendered(CamelModel):
    """A message's parts as they went to one recipient: the template rendered, the theme's layout
    and the profile's signature applied (recomposed from the stored message)."""

    recipient: str
    subject: str
    text: str | None
    html: str | None
    attachments: list[AttachmentInfo]
