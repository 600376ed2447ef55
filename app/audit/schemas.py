"""The audit log at the API's edge."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from app.audit.models import Action, AuditEntry
from app.identity import Via
from app.schemas import CamelModel


class AuditTarget(CamelModel):
    kind: str
    """server, email_server, branding, user, token, template, theme, suppression, webhook."""
    name: str | None
    """The profile, user, template or theme name, the address, the endpoint or token id; null
    for branding, the email_server settings and a suppression import."""


class AuditEntryOut(CamelModel):
    id: int
    at: datetime
    actor: str
    """The user who made the change (`postroom` for Postroom itself)."""
    via: Via
    address: str | None
    """The client's address; null from the command line."""
    action: Action
    target: AuditTarget
    changes: dict[str, Any]
    """Each field that changed: {"from": old, "to": new} (nested fields by dotted path,
    `settings.host`); a secret only as "changed". A suppression import: {"rows", "added"}."""

    @classmethod
    def of(cls, row: AuditEntry) -> AuditEntryOut:
        return cls(
            id=row.id,
            at=row.at,
            actor=row.actor,
            via=cast(Via, row.via),
            address=row.address,
            action=cast(Action, row.action),
            target=AuditTarget(kind=row.target_kind, name=row.target_name),
            changes=row.changes,
        )


class AuditPage(CamelModel):
    items: list[AuditEntryOut]
    next_cursor: str | None
