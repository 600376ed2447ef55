"""Logging in to the console over HTTP (no browser): the login form's token, then the session's."""

from __future__ import annotations

import re

import httpx

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found is not None, html[:500]
    return found.group(1)


async def login(client: httpx.AsyncClient, name: str, password: str) -> str:
    """Log in through the form; returns the session's CSRF token (from the dashboard)."""
    page = await client.get("/console/login")
    assert page.status_code == 200
    response = await client.post(
        "/console/login",
        data={"csrf": csrf_of(page.text), "name": name, "password": password, "next": ""},
    )
    assert response.status_code == 303, response.text
    dashboard = await client.get("/console/")
    assert dashboard.status_code == 200, dashboard.text
    return csrf_of(dashboard.text)
