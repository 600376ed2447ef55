"""The audit log (admin only): app.audit's search as a form with cursor paging."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.audit import service
from app.audit.models import ACTIONS
from app.audit.schemas import AuditEntryOut
from app.console.deps import PartsDep
from app.console.records import when
from app.console.web import PREFIX, ConsoleAdmin, ConsoleRoute, render
from app.errors import Invalid

router = APIRouter(prefix=f"{PREFIX}/audit", route_class=ConsoleRoute, include_in_schema=False)

PAGE_SIZE = 50
FILTERS = ("actor", "action", "target", "from", "to")
SHOWN = 120
"""Characters of a value shown in the list (a template's HTML can be long)."""


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= SHOWN else f"{text[: SHOWN - 1]}…"


def lines(changes: dict[str, Any]) -> list[tuple[str, str]]:
    """Each change as the page lists it: the field, and "old → new" or "changed" (a secret)."""
    return [
        (
            key,
            change
            if isinstance(change, str)
            else f"{_shown(change['from'])} → {_shown(change['to'])}",
        )
        for key, change in changes.items()
    ]


@router.get("")
async def audit_log(request: Request, _: ConsoleAdmin, parts: PartsDep) -> Response:
    given = {k: request.query_params.get(k, "").strip()[:400] for k in FILTERS}
    errors: dict[str, str] = {}
    action = next((a for a in ACTIONS if a == given["action"]), None)
    if given["action"] and action is None:
        errors["action"] = "not an action of the log"
    where = service.Filter(
        actor=given["actor"] or None,
        action=action,
        target=given["target"] or None,
        since=when(given["from"], "from", errors),
        until=when(given["to"], "to", errors),
    )
    cursor = request.query_params.get("cursor") or None
    items: list[AuditEntryOut] = []
    next_cursor = None
    if not errors:
        try:
            async with parts.sessions() as session:
                rows, next_cursor = await service.search(
                    session, where, limit=PAGE_SIZE, cursor=cursor
                )
            items = [AuditEntryOut.of(row) for row in rows]
        except Invalid as err:
            errors["target"] = err.message
    filters = {k: v for k, v in given.items() if v}
    return render(
        request,
        "audit.html",
        422 if errors else 200,
        section="audit",
        given=given,
        actions=ACTIONS,
        items=[(entry, lines(entry.changes)) for entry in items],
        errors=errors,
        next_url=(
            f"{router.prefix}?{urlencode(filters | {'cursor': next_cursor})}"
            if next_cursor
            else None
        ),
        first_url=f"{router.prefix}?{urlencode(filters)}" if cursor else None,
    )
