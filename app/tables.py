"""Imports every domain's tables, so Base.metadata is whole (for Alembic and tests)."""

from app import throttle
from app.branding import models as branding
from app.db import Base
from app.delivery import models as delivery
from app.events import models as events
from app.events.bounces import models as bounces
from app.servers import models as servers
from app.themes import models as themes
from app.users import models as users

__all__ = [
    "Base",
    "bounces",
    "branding",
    "delivery",
    "events",
    "servers",
    "themes",
    "throttle",
    "users",
]
