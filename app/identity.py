"""Who calls: the Principal an authenticated request acts as, the roles an endpoint needs, and
the HTTP Basic credentials a caller presents. Below every package (the request dependencies and
every service that checks a caller read it); app.security verifies the credentials."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Literal

from app.errors import Forbidden, Unauthorized

CHALLENGE = {"WWW-Authenticate": 'Basic realm="postroom", charset="UTF-8", Bearer realm="postroom"'}
"""Basic first: Sisense and curl -u answer it; token clients send their Bearer unasked."""


Via = Literal["basic", "token", "console", "cli", "system"]
"""The door a change came through: HTTP Basic, an API token, the console, `postroom` on the
command line, or Postroom itself (the first admin, created at start-up)."""


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes a change, through which door, from which client address."""

    name: str
    via: Via
    address: str | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, with the sending bounds of its user row (None: the defaults; see
    app.messages.bounds), read with the role so a change to either reaches every replica within
    app.security.RECHECK_SECONDS."""

    name: str
    role: str
    allowed_from: tuple[str, ...] | None = None
    allowed_servers: frozenset[str] | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def parse_basic(header: str | None) -> tuple[str, str]:
    if not header or not header[:6].lower() == "basic ":
        raise Unauthorized("HTTP Basic credentials required", headers=CHALLENGE)
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as err:
        raise Unauthorized("malformed Basic credentials", headers=CHALLENGE) from err
    name, sep, password = decoded.partition(":")
    if not sep:
        raise Unauthorized("malformed Basic credentials", headers=CHALLENGE)
    return name, password


def require_role(principal: Principal, *roles: str) -> Principal:
    if principal.role not in roles:
        raise Forbidden(f"this needs the {' or '.join(roles)} role")
    return principal
