"""Imports every domain's tables, so Base.metadata is whole (for Alembic and tests)."""

from app import throttle
from app.audit import models as audit
from app.branding import models as branding
from app.console import models as console
from app.db import Base
from app.delivery import models as delivery
from app.events import models as events
from app.events.bounces import models as bounces
from app.events.hooks import models as hooks
from app.servers import models as servers
from app.suppressions import models as suppressions
from app.themes import models as themes
from app.users import models as users
from app.webhooks import models as webhooks

__all__ = [
    "Base",
    "audit",
    "bounces",
    "branding",
    "console",
    "delivery",
    "events",
    "hooks",
    "servers",
    "suppressions",
    "themes",
    "throttle",
    "users",
    "webhooks",
]
