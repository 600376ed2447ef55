"""The part of the running service the provider event hooks declare, set by the lifespan."""

from __future__ import annotations

from app.deps import Part
from app.events.hooks.service import EventHooks

HOOKS: Part[EventHooks] = Part("hooks")
