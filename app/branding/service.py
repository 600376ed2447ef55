from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.branding.models import Branding
from app.branding.schemas import BrandingBody, EmailBranding
from app.identity import Actor


async def get_branding(session: AsyncSession) -> Branding:
    return await session.get(Branding, 1) or Branding(id=1)


async def update_branding(session: AsyncSession, body: BrandingBody, actor: Actor) -> Branding:
    """Apply the fields the body names; a field set to null clears it."""
    branding = await session.get(Branding, 1)
    if branding is None:
        branding = Branding(id=1)
        session.add(branding)
    before = _fields(branding)
    given = body.emails.model_fields_set
    if "sender_email" in given:
        branding.sender_email = body.emails.sender_email
    if "sender_name" in given:
        branding.sender_name = body.emails.sender_name
    await audit.record(
        session, actor, "branding.update", None, audit.changes(before, _fields(branding))
    )
    return branding


def _fields(branding: Branding) -> dict[str, str | None]:
    return {"senderEmail": branding.sender_email, "senderName": branding.sender_name}


def to_body(branding: Branding) -> BrandingBody:
    return BrandingBody(
        emails=EmailBranding(sender_email=branding.sender_email, sender_name=branding.sender_name)
    )
