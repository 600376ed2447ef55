from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    Field,
    TypeAdapter,
    ValidationError,
    computed_field,
)

from app.db import utcnow
from app.schemas import CamelModel, EmailAddress, ProfileName, SafeStr

Role = Literal["admin", "sender"]
UserName = str

MAX_BOUNDS = 200
"""Entries in allowedFrom or allowedServers, at most."""

_ADDRESS: TypeAdapter[str] = TypeAdapter(EmailAddress)


def _from_entry(value: str) -> str:
    """An address ("a@example.com") or a domain ("example.com"), normalised as a message's
    `from` is, so the two compare equal."""
    if value.startswith("@") or "*" in value:
        raise ValueError("must be an address (a@example.com) or a domain (example.com)")
    address = value if "@" in value else f"postmaster@{value}"
    try:
        normalized = _ADDRESS.validate_python(address)
    except ValidationError as err:
        reason = str(err.errors()[0]["msg"]).removeprefix("Value error, ")
        raise ValueError(
            f"must be an address (a@example.com) or a domain (example.com): {reason}"
        ) from err
    return normalized if "@" in value else normalized.rpartition("@")[2]


FromEntry = Annotated[str, Field(min_length=1, max_length=320), AfterValidator(_from_entry)]


def _unique(values: list[str] | None) -> list[str] | None:
    return None if values is None else list(dict.fromkeys(values))


AllowedFrom = Annotated[
    list[FromEntry] | None, Field(max_length=MAX_BOUNDS), AfterValidator(_unique)
]
"""The From addresses and domains a sender may use; null: the branding sender and the senders of
the profiles it may use."""

AllowedServers = Annotated[list[ProfileName] | None, Field(max_length=MAX_BOUNDS)]
"""The profiles a sender may send through; null: the default profile (and the built-in server
when mail goes there). Deduplicated once checked against the profiles, so that an error names
the entry by its place in the request."""


class UserCreate(CamelModel):
    name: str = Field(min_length=1, max_length=50, pattern=r"^[A-Za-z0-9_.@-]+$")
    role: Role
    password: str | None = Field(None, min_length=12, max_length=1000)
    """Generated and returned once when omitted."""
    allowed_from: AllowedFrom = None
    allowed_servers: AllowedServers = None


class UserUpdate(CamelModel):
    """Only the fields given change; `allowedFrom` or `allowedServers` set to null go back to
    the defaults."""

    role: Role | None = None
    password: str | None = Field(None, min_length=12, max_length=1000)
    allowed_from: AllowedFrom = None
    allowed_servers: AllowedServers = None


class UserOut(CamelModel):
    name: str
    role: Role
    created_at: datetime
    allowed_from: list[str] | None = None
    """Admins are not bounded: these apply while the user is a sender."""
    allowed_servers: list[str] | None = None


class UserCreated(UserOut):
    password: str | None = None
    """Only when it was generated: shown once, never again."""


class UserList(CamelModel):
    items: list[UserOut]


def _future(value: datetime | None) -> datetime | None:
    """A future instant, in UTC (as stored)."""
    if value is None:
        return None
    try:
        value = value.astimezone(UTC)
    except OverflowError as err:  # 9999-12-31T23:59-14:00 is in the year 10000
        raise ValueError("must be in the years 1 to 9999 in UTC") from err
    if value <= utcnow():
        raise ValueError("must be in the future")
    return value


class TokenCreate(CamelModel):
    name: SafeStr = Field(min_length=1, max_length=100)
    """What the token is for ("billing service"): a label, for the list."""
    expires_at: Annotated[AwareDatetime | None, AfterValidator(_future)] = None
    """When it stops working (with a time zone: 2027-01-01T00:00:00Z); null: never."""


class TokenOut(CamelModel):
    id: str
    name: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    """The last request it authenticated, to the minute (written at most once a minute)."""
    revoked_at: datetime | None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def status(self) -> Literal["active", "expired", "revoked"]:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= utcnow():
            return "expired"
        return "active"


class TokenCreated(TokenOut):
    token: str
    """The token itself (Authorization: Bearer <token>): shown in this answer only."""


class TokenList(CamelModel):
    items: list[TokenOut]
