"""POST /api/v1/hooks/{profile}/events: where a profile's provider posts its delivery events.

No Basic auth: the provider's own signature authenticates each request (SES through SNS, SendGrid,
Mailgun, Mandrill; see app/events/providers). Unsigned or badly signed is a 401, a replay a 409,
a malformed body a 400, over 1 MiB a 413; none of them changes anything. 200 only after commit."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.errors import ErrorBody
from app.events.hooks.deps import HOOKS
from app.schemas import CamelModel

router = APIRouter(prefix="/api/v1/hooks", tags=["events"])

ANY_BODY = {
    "requestBody": {
        "required": True,
        "description": "The provider's request as it sends it: JSON (SES/SNS, SendGrid, Mailgun)"
        " or a form with `mandrill_events` (Mandrill), at most 1 MiB.",
        "content": {
            "application/json": {"schema": {}},
            "text/plain": {"schema": {"type": "string"}},
            "application/x-www-form-urlencoded": {"schema": {"type": "object"}},
        },
    }
}


class HookOut(CamelModel):
    received: int
    """Events in the request."""
    recorded: int
    """Events stored now: a retried event was stored before and is not stored again."""
    unknown: int
    """Of those, events about no message Postroom knows, stored as `unknown`."""
    note: str | None = None
    """What a request without events did (an SNS subscription confirmed, say)."""


@router.post(
    "/{profile}/events",
    openapi_extra=ANY_BODY,
    responses={
        503: {"model": ErrorBody, "description": "SNS could not be reached: SNS retries later"}
    },
)
async def receive_events(profile: str, request: Request) -> HookOut:
    """Record a provider's delivery events for this profile (SES via SNS, SendGrid, Mailgun,
    Mandrill), authenticated by the provider's signature with the keys in the profile's settings.
    Events are matched to messages by the provider's message id, else by Message-ID; an event
    about no known message is stored as `unknown`."""
    outcome = await HOOKS.of(request.app).receive(profile, request.stream(), request.headers)
    return HookOut(
        received=outcome.received,
        recorded=outcome.recorded,
        unknown=outcome.unknown,
        note=outcome.note,
    )


@router.head("/{profile}/events", status_code=200, response_class=Response)
async def check_events_url(profile: str, request: Request) -> Response:
    """Mandrill checks a new webhook URL with an unsigned HEAD before it issues the key: 200 when
    the profile receives events, 404 otherwise."""
    await HOOKS.of(request.app).receiver_of(profile)
    return Response(status_code=200)
