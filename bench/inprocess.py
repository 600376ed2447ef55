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
from fastapi import FastAPI

import app
from app.config import Settings
from app.main import create_app


def _own_tree() -> None:
    """Refuse to measure another checkout's app: a .venv shared between worktrees (an editable
    install) imports the tree it was installed from, and an A/B would compare one tree with
    itself. Run from the tree's root as `PYTHONPATH=. .venv/bin/python bench/...`."""
    tree = Path(__file__).resolve().parent.parent
    imported = Path(app.__file__ or "").resolve()
    if not imported.is_relative_to(tree):
        raise SystemExit(f"bench in {tree} imports app from {imported}: set PYTHONPATH={tree}")


_own_tree()

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
