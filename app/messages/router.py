from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status

from app.delivery.deps import LinksDep
from app.delivery.vocabulary import EventType, tally
from app.deps import AdminUser, SenderUser, SessionDep, SettingsDep, client_address
from app.errors import BadRequest, ErrorBody
from app.messages import content, lifecycle, records, service
from app.messages.deps import SendingDep
from app.messages.records import RecordFilter
from app.messages.schemas import (
    Accepted,
    BatchIn,
    BatchOut,
    MessageIn,
    MessageOut,
    MessagePage,
    MessageStatus,
    Rendered,
    Resent,
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
    sending: SendingDep,
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
    await sending.hit(principal.name)
    caller = Caller(principal, client_address(request))
    taken = await sending.intake.submit(caller, body, idempotency_key)
    if taken.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    else:
        sending.metrics.count_events(taken.events)
    return taken.answer


@router.post("/batch", response_model=BatchOut)
async def send_batch(
    body: BatchIn,
    request: Request,
    principal: SenderUser,
    session: SessionDep,
    settings: SettingsDep,
    sending: SendingDep,
) -> BatchOut:
    """Queue many messages in one request and one transaction. Each item is checked on its own:
    its result is 202 with the id, or the 4xx error it would have had when posted alone."""
    await sending.hit(principal.name, len(body.messages))  # all of the batch fits, or none
    caller = Caller(principal, client_address(request))
    results, events = await service.enqueue_batch(session, settings, caller, body.messages)
    if any(item.status == 202 for item in results):
        sending.notifier.after_commit(session)
    sending.metrics.count_events(events)
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


PURGED: dict[int | str, dict[str, Any]] = {
    410: {"model": ErrorBody, "description": "Its body was purged (POSTROOM_RETENTION_BODY_DAYS)"}
}


@router.post("/{message_id}/cancel", response_model=MessageOut)
async def cancel_message(
    message_id: str, principal: SenderUser, session: SessionDep, sending: SendingDep
) -> MessageOut:
    """Cancel a queued or scheduled message: it is not sent, and its record says `cancelled`.

    A 409 when it is being sent (that attempt finishes; its result will be in the record) or is
    finished; the current status is in `details`. Cancelling it again answers the same again."""
    events = await lifecycle.cancel(session, message_id, principal)
    if events:
        sending.metrics.count_events(tally(events))
        sending.metrics.ended("cancelled")
    return await records.detail(session, message_id, principal)


@router.post("/{message_id}/retry", response_model=MessageOut)
async def retry_message(
    message_id: str, principal: SenderUser, session: SessionDep, sending: SendingDep
) -> MessageOut:
    """Try a deferred message now rather than at its `nextAttemptAt`. A 409 for a message that
    is not deferred (scheduled, never tried, being sent, or finished)."""
    await lifecycle.retry(session, message_id, principal, sending.notifier)
    return await records.detail(session, message_id, principal)


@router.post(
    "/{message_id}/resend",
    response_model=Resent,
    status_code=status.HTTP_202_ACCEPTED,
    responses=PURGED,
)
async def resend_message(
    message_id: str,
    request: Request,
    principal: SenderUser,
    session: SessionDep,
    settings: SettingsDep,
    sending: SendingDep,
) -> Resent:
    """Send a failed or bounced message again, as a new message (its `resentFrom` names this one,
    and this one's `resentAs` names it), to the recipients it did not reach: the same content,
    through the same checks as POST /messages. Once per message."""
    await sending.hit(principal.name)
    caller = Caller(principal, client_address(request))
    resent, events = await lifecycle.resend(session, settings, caller, message_id, sending.notifier)
    sending.metrics.count_events(events)
    return resent


@router.get(
    "/{message_id}/raw",
    response_class=Response,
    responses={
        200: {"content": {"message/rfc822": {}}, "description": "The message as sent"},
        **PURGED,
    },
)
async def raw_message(
    message_id: str,
    principal: AdminUser,
    session: SessionDep,
    links: LinksDep,
    recipient: str | None = None,
) -> Response:
    """The message as it went to `recipient` (default: its first), as RFC 5322 bytes,
    recomposed from the stored message (no Bcc header: it is never sent; no DKIM-Signature: it
    was made at send time, and this is what it signed)."""
    outgoing, _ = await content.composed(session, links, message_id, recipient)
    return Response(
        outgoing.mime,
        media_type="message/rfc822",
        headers={
            "Content-Disposition": f'attachment; filename="{message_id}.eml"',
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.get("/{message_id}/rendered", response_model=Rendered, responses=PURGED)
async def rendered_message(
    message_id: str,
    principal: AdminUser,
    session: SessionDep,
    links: LinksDep,
    recipient: str | None = None,
) -> Rendered:
    """The subject, text and HTML as they went to `recipient` (default: its first): the template
    rendered, the theme and the profile's signature applied; attachments by name and size."""
    outgoing, address = await content.composed(session, links, message_id, recipient)
    return content.rendered(outgoing, address)
