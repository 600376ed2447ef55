"""Mounts the console on the app: its pages, its static files and its security headers."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app.console import (
    audit,
    auth,
    content,
    dashboard,
    probes,
    records,
    servers,
    suppressions,
    users,
    webhooks,
)
from app.console.web import HERE, PREFIX, SecurityHeaders


def install(app: FastAPI) -> None:
    app.add_middleware(SecurityHeaders)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=HERE / "static"), name="console-static")
    for module in (
        auth,
        dashboard,
        servers,
        probes,
        records,
        content,
        users,
        suppressions,
        webhooks,
        audit,
    ):
        app.include_router(module.router)
