"""Alembic, driven from code: `postroom migrate` and the embedded default's start-up."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from app.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def alembic_config(settings: Settings) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.set_main_option("sqlalchemy.url", settings.url.replace("%", "%%"))
    config.attributes["settings"] = settings
    config.attributes["configure_logger"] = False
    """Logging is Postroom's (POSTROOM_LOG_LEVEL, set up by the CLI): alembic.ini's fileConfig
    would put the root logger back to WARNING mid-start-up, hiding every debug transcript."""
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Bring the database to `revision`; blocking (call it from a thread in async code)."""
    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(settings), revision)


def downgrade(settings: Settings, revision: str) -> None:
    command.downgrade(alembic_config(settings), revision)
