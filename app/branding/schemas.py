"""Sisense 0.9's POST /branding body: {"emails": {"senderEmail": ..., "senderName": ...}}."""

from __future__ import annotations

from pydantic import Field

from app.schemas import CamelModel, EmailAddress, SafeStr


class EmailBranding(CamelModel):
    sender_email: EmailAddress | None = None
    sender_name: SafeStr | None = Field(None, max_length=200)


class BrandingBody(CamelModel):
    emails: EmailBranding = Field(default_factory=EmailBranding)
