"""The part of the running service the profile endpoints declare, set by the lifespan."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from app.deps import Part
from app.servers.service import Profiles

PROFILES: Part[Profiles] = Part("profiles")
ProfilesDep = Annotated[Profiles, Depends(PROFILES.dependency())]
"""The profile rules' secret box, egress policy and public URL."""
