"""Sending records: the API's search (app.messages.records) as a form with cursor paging, and a
message's page with its recipients, attempts and delivery events."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.console.deps import PartsDep
from app.console.web import PREFIX, ConsoleRoute, ConsoleUser, render
from app.messages import records
from app.messages.records import RecordFilter
from app.messages.schemas import MessageStatus

router = APIRouter(prefix=f"{PREFIX}/records", route_class=ConsoleRoute, include_in_schema=False)

PAGE_SIZE = 25
MAX_PAGE = 500
"""The API's largest page."""
TEXT_FILTERS = ("sender", "recipient", "template", "server", "createdBy")
STATUSES: tuple[MessageStatus, ...] = (
    "scheduled", "queued", "sending", "sent", "partially_sent", "failed", "cancelled",
)  # fmt: skip


def when(value: str, field: str, errors: dict[str, str]) -> datetime | None:
    """A date or date-time from the form (a datetime-local input), taken as UTC."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        errors[field] = "must be a date, or a date and time (2026-11-01T08:00)"
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@router.get("")
async def search(
    request: Request, user: ConsoleUser, parts: PartsDep, limit: int = PAGE_SIZE
) -> Response:
    query = request.query_params
    limit = min(max(limit, 1), MAX_PAGE)
    given = {k: query.get(k, "").strip() for k in (*TEXT_FILTERS, "status", "from", "to")}
    errors: dict[str, str] = {}
    status = given["status"] if given["status"] in STATUSES else None
    if given["status"] and status is None:
        errors["status"] = f"must be one of {', '.join(STATUSES)}"
    where = RecordFilter(
        sender=given["sender"] or None,
        recipient=given["recipient"] or None,
        template=given["template"] or None,
        server=given["server"] or None,
        created_by=given["createdBy"] or None,
        status=status,
        created_from=when(given["from"], "from", errors),
        created_to=when(given["to"], "to", errors),
    )
    page = None
    if not errors:
        async with parts.sessions() as session:
            page = await records.search(
                session, user, where, limit=limit, cursor=query.get("cursor") or None
            )
    filters = {k: v for k, v in given.items() if v}
    if limit != PAGE_SIZE:
        filters["limit"] = str(limit)
    next_url = (
        f"{router.prefix}?{urlencode(filters | {'cursor': page.next_cursor})}"
        if page and page.next_cursor
        else None
    )
    return render(
        request,
        "records.html",
        422 if errors else 200,
        section="records",
        given=given,
        statuses=STATUSES,
        page=page,
        errors=errors,
        next_url=next_url,
        first_url=f"{router.prefix}?{urlencode(filters)}" if query.get("cursor") else None,
    )


@router.get("/{message_id}")
async def message(
    request: Request, message_id: str, user: ConsoleUser, parts: PartsDep
) -> Response:
    async with parts.sessions() as session:
        found = await records.detail(session, message_id, user)
    return render(request, "message.html", section="records", message=found)
