"""A Postroom app in this process, for the in-process benches (intake_cpu.py, drain_cpu.py): a
fresh data directory, the dispatcher off, the lifespan running, and the admin's HTTP client over
ASGI. It uses only create_app, its lifespan and Settings; copy it with them into an older
checkout for an A/B."""

from __future__ import annotations

import base64
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from checkout import require_own_app
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app

require_own_app()

ADMIN = ("admin", "bench-password-123")


def message(i: int) -> dict[str, Any]:
    """The benches' small message number `i`, as POST /api/v1/messages takes it."""
    return {
        "from": {"email": "sender@example.com", "name": "Bench"},
        "to": [{"email": f"rcpt{i}@example.com"}],
        "subject": f"bench {i}",
        "text": "Hello from the bench.",
    }


@asynccontextmanager
async def running_app(
    database_url: str | None = None,
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app (on the embedded SQLite unless `database_url`) and an admin client, for the
    block's duration."""
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(
            data_dir=Path(folder),
            database_url=database_url,
            admin_user=ADMIN[0],
            admin_password=ADMIN[1],
            dispatcher=False,
            _env_file=None,
        )
        app = create_app(settings)
        token = base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
            async with httpx.AsyncClient(
                transport=transport,
                base_url="http://postroom.bench",
                headers={"Authorization": f"Basic {token}"},
            ) as client:
                yield app, client
