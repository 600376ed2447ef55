"""Console fixtures: browsers-free HTTP clients without Basic auth (a console session instead)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.wiring import Core
from tests.console.browser import axe_source, browser, live_server

__all__ = ["axe_source", "browser", "live_server"]


@pytest.fixture
async def browser_client(app_runtime: tuple[Any, Core]) -> AsyncIterator[httpx.AsyncClient]:
    """A client that keeps cookies, as a browser does, and sends no Authorization header."""
    transport = httpx.ASGITransport(app=app_runtime[0], client=("203.0.113.20", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://postroom.test") as client:
        yield client
