"""The part of the running service the unsubscribe links need, set by the lifespan."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from app.deps import Part
from app.suppressions.unsubscribe import Links

LINKS: Part[Links] = Part("unsubscribe_links")
LinksDep = Annotated[Links, Depends(LINKS.dependency())]
"""Makes and checks the signed one-click unsubscribe links."""
