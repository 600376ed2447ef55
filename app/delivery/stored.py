"""What an accepted message is to send, typed: the intake builds it and stores it as the `payload`
JSON column (app/delivery/models.py), the outbox parses it back once per load, compose takes it.

Plain slots dataclasses, read and written by one pydantic TypeAdapter: the cheapest of what the
stack has (timeit, process time per message: building one at the intake 3.9 us and writing it
2.6 us, against 14 us to build a pydantic model; parsing one 4.6 us, 28-34 us for a group of 50,
the same as a pydantic model and less than hand-written parsing). The JSON keys are the API's
camelCase names, as they were before this class, so rows written by earlier versions load
unchanged; a value left at its default is not written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

from pydantic import ConfigDict, Field, TypeAdapter
from pydantic.alias_generators import to_camel

from app.transports.base import Address

_CAMEL = ConfigDict(alias_generator=to_camel, populate_by_name=True)


@dataclass(frozen=True, slots=True)
class Parts:
    """A subject and bodies: the message's, or a group member's own (rendered from its data)."""

    __pydantic_config__: ClassVar[ConfigDict] = _CAMEL
    subject: str | None = None
    text: str | None = None
    html: str | None = None


@dataclass(frozen=True, slots=True)
class StoredAttachment:
    __pydantic_config__: ClassVar[ConfigDict] = _CAMEL
    filename: str
    content_type: str
    content: str
    """Base64, as the API took it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredMessage(Parts):
    """The message's sender, its recipients as its headers show them, its parts and options."""

    sender: Annotated[Address, Field(alias="from")]
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    reply_to: tuple[Address, ...] = ()
    group: tuple[Address, ...] | None = None
    """The members of a group (`recipients` at the API), who get it privately; None: visible
    mail to to/cc/bcc."""
    attachments: tuple[StoredAttachment, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)
    personal: dict[str, Parts] = field(default_factory=dict)
    """The parts of the group members with template data of their own, by their address as in
    their recipient row: each gets a message of its own (app/messages/rules.py renders them)."""
    ignore_suppressions: bool = False
    list_unsubscribe: bool | None = None
    """One-click unsubscribe links: True or False as the message asked; None: as its profile."""
    theme_set: bool = False
    """The message named its theme (or null): it decides, not its profile's theme."""
    test: bool = False
    """A profile's test mail, kept in the records (app/delivery/probe.py); never queued."""

    @staticmethod
    def of(payload: dict[str, Any]) -> StoredMessage:
        """The stored message in a `payload` column's value; raises pydantic's ValidationError."""
        return _ADAPTER.validate_python(payload)

    def to_json(self) -> dict[str, Any]:
        """The `payload` column's value."""
        stored: dict[str, Any] = _ADAPTER.dump_python(
            self, mode="json", by_alias=True, exclude_defaults=True
        )
        return stored

    def parts_for(self, email: str) -> Parts:
        """What `email` gets on its own: its personal parts, else the message's."""
        return self.personal.get(email, self)

    def group_names(self) -> dict[str, str]:
        """The display names of a group's members, by address."""
        return {member.email: member.name for member in self.group or ()}


_ADAPTER: TypeAdapter[StoredMessage] = TypeAdapter(StoredMessage)
