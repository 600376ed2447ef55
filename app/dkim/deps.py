"""The part of the running service the DKIM key endpoints declare, set by the lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import dns.asyncresolver
from fastapi import Depends

from app.crypto import SecretBox
from app.deps import Part


@dataclass(frozen=True, slots=True)
class Keys:
    """The box the private keys are sealed in, and the resolver that checks their records."""

    box: SecretBox
    resolver: dns.asyncresolver.Resolver


KEYS: Part[Keys] = Part("dkim_keys")
KeysDep = Annotated[Keys, Depends(KEYS.dependency())]
