"""Webhook endpoints (admin only): app.webhooks.service as the API calls it, behind forms. A
signing secret is on the page that made it (create, rotate) and never again."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import ValidationError
from starlette.responses import Response

from app.console.deps import Parts, PartsDep
from app.console.web import (
    PREFIX,
    CheckedForm,
    ConsoleActor,
    ConsoleAdmin,
    ConsoleRoute,
    problems,
    redirect,
    render,
    status_of,
)
from app.db import transaction
from app.delivery.vocabulary import EVENT_TYPES
from app.errors import AppError
from app.webhooks import service
from app.webhooks.schemas import EndpointCreated, EndpointIn, EndpointPatch

router = APIRouter(prefix=f"{PREFIX}/webhooks", route_class=ConsoleRoute, include_in_schema=False)

PAGE_SIZE = 25
NOTICES = {"tested": "A test event is queued: the log below shows how it goes.", "saved": "Saved."}


async def _list(request: Request, parts: Parts, status: int = 200, **context: Any) -> Response:
    async with parts.sessions() as session:
        endpoints = await service.list_endpoints(session)
    context.setdefault("values", {"eventTypes": list(EVENT_TYPES)})
    return render(
        request,
        "webhooks.html",
        status,
        section="webhooks",
        endpoints=endpoints,
        event_types=EVENT_TYPES,
        **context,
    )


@router.get("")
async def list_webhooks(request: Request, _: ConsoleAdmin, parts: PartsDep) -> Response:
    return await _list(request, parts)


@router.post("")
async def create_webhook(
    request: Request, actor: ConsoleActor, form: CheckedForm, parts: PartsDep
) -> Response:
    """The page that answers shows the signing secret; a reload of the list does not."""
    values: dict[str, Any] = {
        "url": form.text("url"),
        "description": form.text("description"),
        "eventTypes": [v for v in form.data.getlist("eventTypes") if isinstance(v, str)],
    }
    try:
        body = EndpointIn.model_validate(values)
        await service.check_url(parts.endpoints.egress, body.url)  # DNS: before the transaction
        async with transaction(parts.sessions) as session:
            created = await service.create_endpoint(session, parts.endpoints.box, body, actor)
    except (AppError, ValidationError) as err:
        summary, fields = problems(err)
        return await _list(
            request, parts, status_of(err), values=values, form_error=summary, errors=fields
        )
    return await _detail(request, parts, created.id, created=created)


async def _detail(
    request: Request,
    parts: Parts,
    endpoint_id: str,
    before: int | None = None,
    created: EndpointCreated | None = None,
    **context: Any,
) -> Response:
    async with parts.sessions() as session:
        endpoint = await service.endpoint_out(
            session, await service.get_endpoint(session, endpoint_id)
        )
        log = await service.list_deliveries(session, endpoint_id, limit=PAGE_SIZE, before=before)
    return render(
        request,
        "webhook.html",
        section="webhooks",
        endpoint=endpoint,
        created=created,
        log=log,
        first_url=f"{router.prefix}/{endpoint_id}" if before else None,
        next_url=f"{router.prefix}/{endpoint_id}?before={log.next_before}"
        if log.next_before
        else None,
        **context,
    )


@router.get("/{endpoint_id}")
async def show_webhook(
    request: Request,
    endpoint_id: str,
    _: ConsoleAdmin,
    parts: PartsDep,
    before: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    done: str = "",
) -> Response:
    """The endpoint and its delivery log, newest first, paged by `before`."""
    return await _detail(request, parts, endpoint_id, before, notice=NOTICES.get(done))


@router.post("/{endpoint_id}/enabled")
async def set_enabled(
    endpoint_id: str, actor: ConsoleActor, form: CheckedForm, parts: PartsDep
) -> Response:
    """On (which clears an automatic disable's reason and sends what waited) or off."""
    body = EndpointPatch(enabled=form.text("enabled") == "true")
    async with transaction(parts.sessions) as session:
        await service.patch_endpoint(session, endpoint_id, body, actor)
    return redirect(f"{router.prefix}/{endpoint_id}?done=saved")


@router.post("/{endpoint_id}/rotate")
async def rotate_secret(
    request: Request, endpoint_id: str, actor: ConsoleActor, form: CheckedForm, parts: PartsDep
) -> Response:
    async with transaction(parts.sessions) as session:
        created = await service.rotate_secret(session, parts.endpoints.box, endpoint_id, actor)
    return await _detail(request, parts, endpoint_id, created=created)


@router.post("/{endpoint_id}/test")
async def send_test(
    endpoint_id: str, _: ConsoleAdmin, form: CheckedForm, parts: PartsDep
) -> Response:
    async with transaction(parts.sessions) as session:
        await service.queue_test(session, endpoint_id)
    return redirect(f"{router.prefix}/{endpoint_id}?done=tested")


@router.get("/{endpoint_id}/delete")
async def confirm_delete(
    request: Request, endpoint_id: str, _: ConsoleAdmin, parts: PartsDep
) -> Response:
    async with parts.sessions() as session:
        endpoint = await service.get_endpoint(session, endpoint_id)
        target = await service.endpoint_out(session, endpoint)
    return render(request, "webhook_delete.html", section="webhooks", endpoint=target)


@router.post("/{endpoint_id}/delete")
async def delete_webhook(
    endpoint_id: str, actor: ConsoleActor, form: CheckedForm, parts: PartsDep
) -> Response:
    async with transaction(parts.sessions) as session:
        await service.delete_endpoint(session, endpoint_id, actor)
    return redirect(router.prefix)
