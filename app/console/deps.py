"""The part of the running service the console declares, set by the lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.delivery.deps import Probing
from app.deps import Authenticating, Part
from app.servers.service import Profiles
from app.webhooks.deps import Endpoints


@dataclass(frozen=True, slots=True)
class Parts:
    """What the pages need beside the services they call: they open their own sessions (a page
    that failed to save renders its form again), and take the same parts as the API routers."""

    sessions: async_sessionmaker[AsyncSession]
    settings: Settings
    auth: Authenticating
    profiles: Profiles
    endpoints: Endpoints
    probing: Probing


PARTS: Part[Parts] = Part("console")
PartsDep = Annotated[Parts, Depends(PARTS.dependency())]
