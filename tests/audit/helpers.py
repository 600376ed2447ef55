"""Reading the audit log in tests: through the API, and as stored (to grep it for secrets)."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import Text, cast, select

from app.audit.models import AuditEntry
from app.wiring import Core

ADMIN_ADDRESS = "203.0.113.8"
"""The `admin` client's address (tests/conftest.py)."""
CONSOLE_ADDRESS = "203.0.113.20"
"""The console's `browser_client` address (tests/console/conftest.py)."""


async def entries(admin: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    """The log through GET /api/v1/audit, newest first."""
    response = await admin.get("/api/v1/audit", params={"limit": 1000, **params})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def latest(admin: httpx.AsyncClient, action: str) -> dict[str, Any]:
    found = await entries(admin, action=action)
    assert found, f"no {action} entry"
    return found[0]


async def stored(runtime: Core) -> str:
    """Every audit row as the database holds it, as text."""
    async with runtime.sessions() as session:
        rows = await session.execute(
            select(
                AuditEntry.actor,
                AuditEntry.action,
                AuditEntry.target_name,
                cast(AuditEntry.changes, Text),
            )
        )
        return "\n".join(" ".join(str(value) for value in row) for row in rows)


async def count(runtime: Core) -> int:
    async with runtime.sessions() as session:
        return len(list(await session.scalars(select(AuditEntry.id))))
