"""DKIM at the API's edge: a key to make or import, the records to publish, the DNS checks."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, SecretStr, StrictBool

from app.dkim.keys import Algorithm
from app.dkim.lookup import Status
from app.schemas import CamelModel

Selector = Annotated[
    str,
    Field(
        min_length=1,
        max_length=63,
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$",
    ),
]
"""A selector is a DNS name of its own under _domainkey: letters, digits, inner hyphens, dots."""
Slot = Literal["active", "next"]


class DkimKeyIn(CamelModel):
    selector: Selector
    """Must differ from the active key's: rotation takes two selectors."""
    domain: str | None = Field(None, min_length=1, max_length=253)
    """The signing domain (d=); default: the active key's, else the profile's sender domain.
    It must be the sender's domain, a parent of it or a subdomain (DMARC alignment)."""
    algorithm: Algorithm | None = None
    """rsa-sha256 (every receiver verifies it) or ed25519-sha256 (RFC 8463: short records, not
    verified everywhere yet). Default: the imported key's, else rsa-sha256."""
    bits: Literal[2048, 3072, 4096] | None = None
    """The size of an RSA key made here; default 2048."""
    private_key: SecretStr | None = Field(None, max_length=16_384)
    """An existing key to import (PEM, PKCS#1 or PKCS#8, unencrypted) instead of making one.
    Never shown again."""


class RotateIn(CamelModel):
    force: StrictBool = False
    """Rotate even though the next key's DNS record is not found (or the lookup fails)."""


class DnsRecord(CamelModel):
    name: str
    """<selector>._domainkey.<domain>"""
    type: Literal["TXT"] = "TXT"
    value: str
    """v=DKIM1; k=...; p=...: what to publish."""
    strings: list[str]
    """The value cut into strings of at most 255 characters, for DNS tools that take a TXT
    record's strings one by one (a zone file: "..." "...")."""


class DkimKeyOut(CamelModel):
    domain: str
    selector: str
    algorithm: Algorithm
    bits: int
    imported: bool
    created_at: datetime
    dns: DnsRecord


class DkimOut(CamelModel):
    server: str
    signing: bool
    """True while there is an active key: every message through this profile is signed."""
    carried: bool
    note: str
    """What this profile's transport does with the signature."""
    active: DkimKeyOut | None
    """The key that signs. Its record must stay published while it does."""
    next: DkimKeyOut | None
    """The key rotation switches to: publish its record first. After a rotation it is the
    previous key: keep its record until mail signed with it has been read, then replace it."""


class DkimCheck(CamelModel):
    """One key's DNS record, looked up by verify."""

    slot: Slot
    name: str
    status: Status
    detail: str
    found: list[str]
    """The TXT records found at the name."""
