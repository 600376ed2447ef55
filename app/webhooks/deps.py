"""The part of the running service the webhook endpoints declare, set by the lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends

from app.crypto import SecretBox
from app.deps import Part
from app.egress import EgressPolicy


@dataclass(frozen=True, slots=True)
class Endpoints:
    """The box their signing secrets are sealed in, and the egress policy their URLs obey."""

    box: SecretBox
    egress: EgressPolicy


ENDPOINTS: Part[Endpoints] = Part("webhook_endpoints")
EndpointsDep = Annotated[Endpoints, Depends(ENDPOINTS.dependency())]
