"""One-click unsubscribe (RFC 8058): the page a signed link opens, and what a POST to it does:
an `unsubscribed` event, recorded as every event is (recording it suppresses the address for the
profile). The link itself is made by delivery (app/delivery/links.py) when it composes a message.
"""

from __future__ import annotations

from html import escape
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.delivery.deps import LinksDep
from app.delivery.links import Unsubscribe
from app.delivery.models import Recipient
from app.delivery.vocabulary import DeliveryEvent
from app.deps import SessionDep
from app.events.service import record_events


async def unsubscribe(session: AsyncSession, link: Unsubscribe) -> bool:
    """Record the `unsubscribed` event of `link`; recording it suppresses the address for the
    profile (events.service -> suppressions). False when it was already recorded: a second POST
    (a mail client retrying, a person clicking twice) changes nothing."""
    recipient = await session.scalar(
        select(Recipient.id).where(
            Recipient.message_pk == link.message_pk, Recipient.email == link.address
        )
    )
    event = DeliveryEvent(
        message_pk=link.message_pk if recipient is not None else None,
        type="unsubscribed",
        recipient_pk=recipient,
        email=link.address,
        source="unsubscribe",
        profile=link.profile,
        provider_event_id=f"{link.message_pk}:{link.address}"[:255],
        reason="one-click unsubscribe (RFC 8058)",
    )
    return bool(await record_events(session, [event]))


unsubscribe_router = APIRouter(prefix="/u", tags=["unsubscribe"])
_HTML: dict[int | str, dict[str, Any]] = {
    200: {"description": "A page for a person", "content": {"text/html": {}}}
}
"""The pages are HTML; errors (a link this service did not sign: 404) are JSON as everywhere."""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: sans-serif; max-width: 32em; margin: 3em auto">
<h1>{title}</h1>
{body}
</body></html>
"""


@unsubscribe_router.get("/{token}", responses=_HTML)
async def unsubscribe_page(token: str, links: LinksDep) -> HTMLResponse:
    """A page with the button that unsubscribes. Nothing changes on GET: mail scanners fetch
    links to look at them."""
    link = links.read(token)
    form = (
        f"<p>Stop mail to <b>{escape(link.address)}</b> from this sender?</p>\n"
        '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Unsubscribe</button></form>'
    )
    return HTMLResponse(_PAGE.format(title="Unsubscribe", body=form))


@unsubscribe_router.post("/{token}", responses=_HTML)
async def unsubscribe_now(token: str, links: LinksDep, session: SessionDep) -> HTMLResponse:
    """RFC 8058 one-click: a mail client POSTs `List-Unsubscribe=One-Click` here. The address is
    suppressed for the profile the mail came through (reason `unsubscribe`) and an
    `unsubscribed` event recorded. No login: the signed token is the authority."""
    link = links.read(token)
    await unsubscribe(session, link)
    done = f"<p>{escape(link.address)} will get no more mail from this sender.</p>"
    return HTMLResponse(_PAGE.format(title="Unsubscribed", body=done))
