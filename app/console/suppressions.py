"""The suppression list (admin only): app.suppressions' search, add, remove, CSV import and
export, as the API calls them, behind forms."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.responses import Response

from app.console.deps import Parts, PartsDep
from app.console.web import (
    PREFIX,
    CheckedForm,
    ConsoleActor,
    ConsoleAdmin,
    ConsoleError,
    ConsoleRoute,
    problems,
    redirect,
    render,
    status_of,
)
from app.db import transaction
from app.delivery.transports import BUILTIN
from app.errors import AppError
from app.servers import service as servers
from app.suppressions import csvio, service
from app.suppressions.models import REASONS
from app.suppressions.schemas import SuppressionIn, SuppressionOut

router = APIRouter(
    prefix=f"{PREFIX}/suppressions", route_class=ConsoleRoute, include_in_schema=False
)

PAGE_SIZE = 50
FILTERS = ("q", "profile", "reason")


def _filter(request: Request) -> tuple[dict[str, str], service.Filter]:
    """The search form's values, and the API's filter of them (a reason outside the list
    matches nothing, as an unknown profile does)."""
    given = {k: request.query_params.get(k, "").strip()[:320] for k in FILTERS}
    where = service.Filter(
        text=given["q"] or None, profile=given["profile"] or None, reason=given["reason"] or None
    )
    return given, where


async def _page(request: Request, parts: Parts, status: int = 200, **context: Any) -> Response:
    given, where = _filter(request)
    cursor = request.query_params.get("cursor") or None
    async with parts.sessions() as session:
        rows, next_cursor = await service.search(session, where, limit=PAGE_SIZE, cursor=cursor)
        profiles = [
            p.name for p in (await servers.list_profiles(session, parts.profiles.box)).items
        ]
    filters = {k: v for k, v in given.items() if v}
    context.setdefault("values", {"reason": "manual"})
    return render(
        request,
        "suppressions.html",
        status,
        section="suppressions",
        given=given,
        reasons=REASONS,
        profiles=[BUILTIN, *profiles],
        items=[SuppressionOut.of(r) for r in rows],
        next_url=(
            f"{router.prefix}?{urlencode(filters | {'cursor': next_cursor})}"
            if next_cursor
            else None
        ),
        first_url=f"{router.prefix}?{urlencode(filters)}" if cursor else None,
        export_url=f"{router.prefix}/export?{urlencode(filters)}",
        **context,
    )


@router.get("")
async def list_suppressions(
    request: Request, _: ConsoleAdmin, parts: PartsDep, done: str = ""
) -> Response:
    notices = {"added": "Added.", "removed": "Removed."}
    return await _page(request, parts, notice=notices.get(done))


@router.post("")
async def add_suppression(
    request: Request, actor: ConsoleActor, form: CheckedForm, parts: PartsDep
) -> Response:
    values = {k: form.text(k) for k in ("address", "profile", "reason")}
    try:
        body = SuppressionIn.model_validate(
            {
                "address": values["address"],
                "profile": values["profile"] or None,
                "reason": values["reason"] or "manual",
            }
        )
        async with transaction(parts.sessions) as session:
            await service.add(session, body.address, body.profile, body.reason, actor)
    except (AppError, ValidationError) as err:
        summary, fields = problems(err)
        return await _page(
            request, parts, status_of(err), values=values, form_error=summary, errors=fields
        )
    return redirect(f"{router.prefix}?done=added")


def _entry(address: str, profile: str) -> SuppressionIn:
    """The entry a remove names, checked as the API checks its path and query."""
    try:
        return SuppressionIn.model_validate({"address": address, "profile": profile or None})
    except ValidationError as err:
        message = "; ".join(f"{k}: {v}" for k, v in problems(err)[1].items())
        raise ConsoleError(422, message) from err


@router.get("/remove")
async def confirm_remove(
    request: Request, _: ConsoleAdmin, address: str = "", profile: str = ""
) -> Response:
    entry = _entry(address, profile)
    return render(request, "suppression_remove.html", section="suppressions", entry=entry)


@router.post("/remove")
async def remove_suppression(
    request: Request, actor: ConsoleActor, form: CheckedForm, parts: PartsDep
) -> Response:
    entry = _entry(form.text("address"), form.text("profile"))
    async with transaction(parts.sessions) as session:
        await service.remove(session, entry.address, entry.profile, actor)
    return redirect(f"{router.prefix}?done=removed")


@router.post("/import")
async def import_csv(
    request: Request, actor: ConsoleActor, form: CheckedForm, parts: PartsDep
) -> Response:
    """All or nothing, as the API's import: a bad row shows its row and column, nothing is kept."""
    upload = form.data.get("file")
    try:
        data = await upload.read() if isinstance(upload, UploadFile) else b""
        text = csvio.csv_text("text/csv", data)
        async with transaction(parts.sessions) as session:
            entries = await csvio.parse(session, text)
            added = await service.add_many(session, entries, actor)
    except AppError as err:
        summary, fields = problems(err)
        return await _page(request, parts, status_of(err), form_error=summary, errors=fields)
    return await _page(
        request,
        parts,
        notice=f"Imported {len(entries)} rows: {added} added, the others were already on the list.",
    )


@router.get("/export")
async def export_csv(request: Request, _: ConsoleAdmin, parts: PartsDep) -> Response:
    _given, where = _filter(request)
    return StreamingResponse(
        csvio.export(parts.sessions, where),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="suppressions.csv"'},
    )
