from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, status

from app.deps import RuntimeDep, SenderUser, SessionDep, client_address
from app.errors import BadRequest
from app.events.models import EventType
from app.messages import records, service
from app.messages.records import RecordFilter
from app.messages.schemas import (
    Accepted,
    BatchIn,
    BatchOut,
    MessageIn,
    MessageOut,
    MessagePage,
    MessageStatus,
)
from app.messages.service import Caller
from app.schemas import IsoDateTime

router = APIRouter(prefix="/api/v1/messages", tags=["messages"])

MAX_KEY_LENGTH = 255


@router.post("", response_model=Accepted, status_code=status.HTTP_202_ACCEPTED)
async def send_message(
    body: MessageIn,
    request: Request,
    response: Response,
    principal: SenderUser,
    runtime: RuntimeDep,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> Accepted:
    """Queue one message. The 202 means it is stored: it will be delivered or its failure recorded.

    With an `Idempotency-Key`, the same key and body answer the first answer again (for 24 h).
    """
    if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_KEY_LENGTH:
        raise BadRequest(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters",
            details=[{"field": "Idempotency-Key", "message": "too long"}],
        )
    if runtime.sends is not None:
        await runtime.sends.hit(principal.name)
    caller = Caller(principal, client_address(request))
    accepted, replayed = await runtime.intake.submit(caller, body, idempotency_key)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    else:
        runtime.queued()
        runtime.metrics.count_events(accepted.events)
    return accepted


@router.post("/batch", response_model=BatchOut)
async def send_batch(
    body: BatchIn,
    request: Request,
    principal: SenderUser,
    session: SessionDep,
    runtime: RuntimeDep,
) -> BatchOut:
    """Queue many messages in one request and one transaction. Each item is checked on its own:
    its result is 202 with the id, or the 4xx error it would have had when posted alone."""
    if runtime.sends is not None:  # all of the batch fits, or none of it is counted
        await runtime.sends.hit(principal.name, len(body.messages))
    caller = Caller(principal, client_address(request))
    results = await service.enqueue_batch(session, runtime.settings, caller, body.messages)
    if any(item.status == 202 for item in results):
        runtime.queued()
    for item in results:
        runtime.metrics.count_events(item.events)
    accepted = sum(item.status == 202 for item in results)
    return BatchOut(accepted=accepted, rejected=len(results) - accepted, results=results)


@router.get("", response_model=MessagePage)
async def search_messages(
    principal: SenderUser,
    session: SessionDep,
    sender: str | None = None,
    created_by: Annotated[str | None, Query(alias="createdBy")] = None,
    recipient: str | None = None,
    template: str | None = None,
    theme: str | None = None,
    resource: str | None = None,
    server: str | None = None,
    status: MessageStatus | None = None,
    event: EventType | None = None,
    created_from: Annotated[IsoDateTime | None, Query(alias="createdFrom")] = None,
    created_to: Annotated[IsoDateTime | None, Query(alias="createdTo")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> MessagePage:
    """The sending records, newest first; pass `nextCursor` back as `cursor` for the next page.
    `event` keeps the messages with at least one event of that type (e.g. `bounced`).

    A sender sees the messages it posted; an admin sees all, or one user's with `createdBy`."""
    where = RecordFilter(
        sender=sender,
        created_by=created_by,
        recipient=recipient,
        template=template,
        theme=theme,
        resource=resource,
        server=server,
        status=status,
        event=event,
        created_from=created_from,
        created_to=created_to,
    )
    return await records.search(session, principal, where, limit=limit, cursor=cursor)


@router.get("/{message_id}", response_model=MessageOut)
async def get_message(message_id: str, principal: SenderUser, session: SessionDep) -> MessageOut:
    """A message's status, its recipients' results and events, and every attempt."""
    return await records.detail(session, message_id, principal)
