"""A transport never sees FastAPI or an ORM row: app.transports imports without FastAPI,
Starlette or SQLAlchemy (import-linter holds it statically; this checks a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys


def test_the_transports_import_without_the_web_app_or_the_orm() -> None:
    code = (
        "import sys, app.transports.registry, app.transports.smtp\n"
        "print(sorted(m for m in ('fastapi', 'starlette', 'sqlalchemy') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
