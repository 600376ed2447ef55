"""The suppression list at the API's edge."""

from __future__ import annotations

from datetime import datetime
from typing import cast

from pydantic import Field

from app.schemas import CamelModel, EmailAddress, ProfileName
from app.suppressions.models import GLOBAL, Reason, Suppression


class SuppressionIn(CamelModel):
    address: EmailAddress
    profile: ProfileName | None = None
    """Suppress it only for mail through this profile (`builtin`: the built-in server); null:
    for every profile."""
    reason: Reason = "manual"


class SuppressionOut(CamelModel):
    address: str
    """In the spelling addresses are compared in: lower case, the domain in A-labels."""
    profile: str | None
    """Null: suppressed whichever profile the mail goes through."""
    reason: Reason
    source: str
    """What added it: `api`, `import`, or the source of the event (`postroom`, `ses`, `dsn`...)."""
    event_id: str | None
    """The reporter's id of that event, when it had one."""
    message_id: str | None = Field(None, description="The id of the message the event was about.")
    created_at: datetime

    @classmethod
    def of(cls, row: Suppression) -> SuppressionOut:
        return cls(
            address=row.address,
            profile=None if row.scope == GLOBAL else row.scope,
            reason=cast(Reason, row.reason),  # the CHECK constraint holds it
            source=row.source,
            event_id=row.event_id,
            message_id=row.message_pk,
            created_at=row.created_at,
        )


class SuppressionPage(CamelModel):
    items: list[SuppressionOut]
    next_cursor: str | None


class ImportResult(CamelModel):
    rows: int
    """Rows in the file."""
    added: int
    """Entries added; the others were already on the list."""
