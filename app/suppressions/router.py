from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from app.deps import AdminActor, AdminUser, SessionDep, SessionsDep
from app.schemas import EmailAddress, ProfileName, SafeStr
from app.suppressions import csvio, service
from app.suppressions.models import Reason
from app.suppressions.schemas import ImportResult, SuppressionIn, SuppressionOut, SuppressionPage

router = APIRouter(prefix="/api/v1/suppressions", tags=["suppressions"])

Search = Annotated[SafeStr | None, Query(alias="q", max_length=320)]
Profile = Annotated[ProfileName | None, Query()]
"""A profile's entries only (`builtin`: the built-in server's)."""


@router.get("", response_model=SuppressionPage)
async def list_suppressions(
    _: AdminUser,
    session: SessionDep,
    q: Search = None,
    profile: Profile = None,
    reason: Reason | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> SuppressionPage:
    """The list, the latest added first; `q` matches a part of the address. Pass `nextCursor`
    back as `cursor` for the next page."""
    where = service.Filter(text=q, profile=profile, reason=reason)
    rows, next_cursor = await service.search(session, where, limit=limit, cursor=cursor)
    return SuppressionPage(items=[SuppressionOut.of(r) for r in rows], next_cursor=next_cursor)


@router.post("", response_model=SuppressionOut, status_code=status.HTTP_201_CREATED)
async def add_suppression(
    body: SuppressionIn, actor: AdminActor, session: SessionDep
) -> SuppressionOut:
    """Suppress an address, for every profile or for one; 409 when it already is."""
    row = await service.add(session, body.address, body.profile, body.reason, actor)
    return SuppressionOut.of(row)


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "The entries as CSV"}},
)
async def export_suppressions(
    _: AdminUser,
    sessions: SessionsDep,
    q: Search = None,
    profile: Profile = None,
    reason: Reason | None = None,
) -> StreamingResponse:
    """The list (or the entries the filters select) as CSV, streamed: columns address, profile,
    reason, source, eventId, messageId, createdAt."""
    where = service.Filter(text=q, profile=profile, reason=reason)
    return StreamingResponse(
        csvio.export(sessions, where),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="suppressions.csv"'},
    )


@router.post(
    "/import",
    response_model=ImportResult,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                        "required": ["file"],
                    }
                },
            },
        }
    },
)
async def import_suppressions(
    request: Request, actor: AdminActor, session: SessionDep
) -> ImportResult:
    """Add the entries of a CSV (a text/csv body, or a multipart `file`) with the columns of the
    export (`address` required; `profile` empty for every profile; `reason` default manual).
    All or nothing: a bad row is a 422 naming its row and column. Entries already on the list
    are kept as they are."""
    text = csvio.csv_text(request.headers.get("content-type", ""), await request.body())
    entries = await csvio.parse(session, text)
    added = await service.add_many(session, entries, actor)
    return ImportResult(rows=len(entries), added=added)


@router.delete("/{address}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_suppression(
    address: EmailAddress, actor: AdminActor, session: SessionDep, profile: Profile = None
) -> Response:
    """Take an address off the list: its entry for `profile`, or without it, the global one."""
    await service.remove(session, address, profile, actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
