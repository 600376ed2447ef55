"""The guard of the in-process benches: they measure this checkout's `app/`, never another's.

A .venv shared between worktrees is an editable install of one of them, and a script under
bench/ imports that one's app whatever the current folder: an A/B would compare one tree with
itself. Copy this file with the script when an A/B runs it in an older checkout."""

from __future__ import annotations

from pathlib import Path

import app


def require_own_app() -> None:
    """Exit unless `app` is imported from the checkout this file is in; name the PYTHONPATH to
    set (from the checkout's root: `PYTHONPATH=. .venv/bin/python bench/...`)."""
    tree = Path(__file__).resolve().parent.parent
    imported = Path(app.__file__ or "").resolve()
    if not imported.is_relative_to(tree):
        raise SystemExit(f"bench in {tree} imports app from {imported}: set PYTHONPATH={tree}")
