"""What every provider's webhook parser shares: the request it reads, the events it reports, the
errors it raises, and the small readers of untrusted JSON that name the field at fault.

A parser (one module per provider, as the transports are) verifies the provider's signature and
turns the body into `Reported` events in the shared vocabulary. It touches no database: matching an
event to a message and storing it is the hooks service's work, and so is the replay guard, which
gets from the parser only the `Nonce` the provider signed. The only I/O a parser does is SES's
certificate fetch, through the `Sns` client it is given.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from app.delivery.vocabulary import EVENT_ID_LENGTH, BounceType, EventType
from app.errors import AppError

ADDRESS_LENGTH = 320
TOLERANCE = timedelta(minutes=5)
"""How far a signed timestamp (SendGrid, Mailgun) may be from now, either way: older is refused
as stale, and the replay guard keeps what it has seen for this long."""


class Refused(AppError):
    """No signature, a bad one, or a stale signed timestamp: nothing is applied (401)."""

    status_code = 401
    code = "invalid_signature"


class Malformed(AppError):
    """A signed body that is not what the provider sends: a 400 naming the field."""

    code = "malformed_event"

    def __init__(self, message: str, field: str = "body") -> None:
        super().__init__(message, details=[{"field": field, "message": message}])


class Replayed(AppError):
    """A signed token or signature seen before: the provider (or someone) sent it again."""

    status_code = 409
    code = "replayed"


@dataclass(frozen=True, slots=True)
class Incoming:
    """One webhook request as the parser sees it: the raw body (signatures cover bytes, not a
    re-serialised JSON), headers by lower-case name, and the time it arrived."""

    body: bytes
    headers: Mapping[str, str]
    now: datetime


@dataclass(frozen=True, slots=True)
class Reported:
    """One event as the provider reported it, before it is matched to a message."""

    type: EventType
    email: str | None
    occurred_at: datetime
    provider_event_id: str
    provider_message_id: str | None
    """The provider's message id as Postroom stores it on the attempt (attempts.provider_id)."""
    message_id: str | None
    """The RFC 5322 Message-ID, in angle brackets as Postroom stores it, when the event has it."""
    bounce_type: BounceType | None = None
    reason: str | None = None
    diagnostic_code: str | None = None

    def __post_init__(self) -> None:
        # What a provider sends is untrusted: an address no column holds is a 400, not a 500.
        if self.email is not None and len(self.email) > ADDRESS_LENGTH:
            raise Malformed(f"a recipient address is at most {ADDRESS_LENGTH} characters")


@dataclass(frozen=True, slots=True)
class Nonce:
    """What the provider signed that must be accepted once: seen again before `expires_at`, it is
    a replay; after, its timestamp is stale anyway."""

    value: str
    expires_at: datetime


@dataclass(slots=True)
class Received:
    """What one verified request carries."""

    events: list[Reported] = field(default_factory=list)
    nonce: Nonce | None = None
    confirm_url: str | None = None
    """SNS's SubscribeURL, to GET once the request verified (a SubscriptionConfirmation)."""
    note: str | None = None
    """Why a verified request carries no event (a confirmation, a sync event), for the log."""


class Receiver(Protocol):
    """A profile's webhook verifier and parser."""

    source: str

    async def receive(self, incoming: Incoming) -> Received:
        """Verify, then parse: raises Refused, Malformed or (SES) CertificateUnavailable."""
        ...


def event_id(*parts: str) -> str:
    """A provider event id made of parts; hashed when it would not fit the column."""
    joined = ":".join(parts)
    if len(joined) <= EVENT_ID_LENGTH:
        return joined
    return "sha256:" + hashlib.sha256(joined.encode()).hexdigest()


def check_fresh(signed_at: datetime, now: datetime) -> None:
    """Refuse a signed timestamp further than TOLERANCE from now."""
    skew = abs((now - signed_at).total_seconds())
    if skew > TOLERANCE.total_seconds():
        raise Refused(
            f"the signed timestamp is {skew:.0f} s from now (at most "
            f"{TOLERANCE.total_seconds():.0f} s): stale or replayed"
        )


def load_json(data: bytes | str, what: str = "body") -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise Malformed(f"{what} is not valid JSON: {err}", what) from err


def need(obj: Any, path: str, kind: type | tuple[type, ...] = str, *, at: str = "") -> Any:
    """`obj[a][b]...` for path "a.b", of `kind`; else Malformed naming the field (`at` is where
    `obj` is in the body: "event-data", "[2]")."""
    value = _walk(obj, path)
    if value is None or not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        where = f"{at}.{path}" if at else path
        raise Malformed(f"{where} is missing or not a {names}", where)
    return value


def maybe(obj: Any, path: str, kind: type | tuple[type, ...] = str) -> Any:
    """`obj[a][b]...` when present and of `kind`, else None (lenient: providers add fields)."""
    value = _walk(obj, path)
    return value if isinstance(value, kind) and not isinstance(value, bool) else None


def _walk(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def unix_time(value: Any, path: str) -> datetime:
    """Unix seconds (int, float or digits) as an aware datetime."""
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except (TypeError, ValueError, OverflowError, OSError) as err:
        raise Malformed(f"{path} is not a unix time", path) from err


def iso_time(value: Any, path: str) -> datetime:
    """An ISO 8601 time (SNS and SES write `2016-01-27T14:59:38.237Z`)."""
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError as err:
        raise Malformed(f"{path} is not an ISO 8601 time", path) from err
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def bracketed(message_id: str | None) -> str | None:
    """A Message-ID as Postroom stores it: in angle brackets."""
    if not message_id:
        return None
    message_id = message_id.strip()
    return message_id if message_id.startswith("<") else f"<{message_id}>"
