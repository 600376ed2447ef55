"""The parts of the running service that delivery's endpoints declare, set by the lifespan: the
test and verify endpoints' Probing, and the unsubscribe links (the messages API and the one-click
pages read them too)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import dns.asyncresolver
from fastapi import Depends

from app.delivery.events import Ledger
from app.delivery.links import Links
from app.deps import Part
from app.metrics import Metrics
from app.servers.service import Profiles
from app.throttle import Throttle
from app.transports.base import TransportContext


@dataclass(frozen=True, slots=True)
class Probing:
    """What a test send or a verify of a profile needs, beside a session."""

    profiles: Profiles
    context: TransportContext
    resolver: dns.asyncresolver.Resolver
    """For the DKIM record checks of a verify."""
    throttle: Throttle
    """Test sends per profile per minute, shared by every replica."""
    metrics: Metrics
    ledger: Ledger
    """Where a test send's event is recorded (app.events.service's LEDGER)."""


PROBING: Part[Probing] = Part("probing")
ProbingDep = Annotated[Probing, Depends(PROBING.dependency())]

LINKS: Part[Links] = Part("unsubscribe_links")
LinksDep = Annotated[Links, Depends(LINKS.dependency())]
"""Makes and checks the signed one-click unsubscribe links."""
