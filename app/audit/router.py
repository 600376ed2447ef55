from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.audit import service
from app.audit.models import Action
from app.audit.schemas import AuditEntryOut, AuditPage
from app.deps import AdminUser, SessionDep
from app.schemas import IsoDateTime, SafeStr

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


@router.get("", response_model=AuditPage)
async def search_audit(
    _: AdminUser,
    session: SessionDep,
    actor: Annotated[SafeStr | None, Query(max_length=100)] = None,
    action: Action | None = None,
    target: Annotated[SafeStr | None, Query(max_length=400)] = None,
    since: IsoDateTime | None = None,
    until: IsoDateTime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> AuditPage:
    """Who changed what and when, newest first: the changes to server profiles, the
    email_server settings, branding, users, tokens, templates, themes, suppressions and
    webhooks. `target` is a kind (`server`) or a kind and a name (`server:relay`); `since` is
    inclusive, `until` exclusive. Pass `nextCursor` back as `cursor` for the next page."""
    where = service.Filter(actor=actor, action=action, target=target, since=since, until=until)
    rows, next_cursor = await service.search(session, where, limit=limit, cursor=cursor)
    return AuditPage(items=[AuditEntryOut.of(r) for r in rows], next_cursor=next_cursor)
