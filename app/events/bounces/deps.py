"""The part of the running service the bounce report endpoint declares, set by the lifespan."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from app.deps import Part
from app.events.bounces.service import Bounces

BOUNCES: Part[Bounces] = Part("bounces")
BouncesDep = Annotated[Bounces, Depends(BOUNCES.dependency())]
