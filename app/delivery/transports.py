"""The profiles' live transports, one per profile version, so pooled connections are reused; and
their DKIM signers, one per key version, so a key is parsed once and not per message."""

from __future__ import annotations

from datetime import datetime

from app.config import Settings
from app.crypto import SecretBox
from app.delivery.verp import PURPOSE as VERP_PURPOSE
from app.delivery.verp import Verp
from app.dkim.service import signer_of
from app.dkim.signer import Signer
from app.servers.models import ServerProfile
from app.servers.service import config_of
from app.transports import registry
from app.transports.base import Transport, TransportContext
from app.transports.file import FileConfig

BUILTIN = "builtin"


class TransportCache:
    """Builds a profile's transport on first use and keeps it until the profile changes."""

    def __init__(self, settings: Settings, box: SecretBox, context: TransportContext) -> None:
        self._box = box
        self._context = context
        self.verp = Verp(box.derive(VERP_PURPOSE))
        """Signs the envelope senders of profiles with a bounce domain."""
        self._builtin = registry.build(
            "file", BUILTIN, FileConfig(directory=settings.outbox_dir), context
        )
        self._live: dict[int, tuple[datetime, Transport]] = {}
        self._signers: dict[int, tuple[tuple[str, str | None], Signer | None]] = {}
        self._retired: list[Transport] = []

    @property
    def box(self) -> SecretBox:
        """The secret keys the profiles' secrets (and the unsubscribe links) are keyed on."""
        return self._box

    @property
    def builtin(self) -> Transport:
        """The built-in default server: .eml files in the data dir's outbox/."""
        return self._builtin

    def get(self, profile: ServerProfile) -> Transport:
        """The profile's live transport. One built from an older version of the profile is retired,
        not closed: sends in flight on it finish, and its idle connections close by themselves."""
        live = self._live.get(profile.id)
        if live is not None and live[0] == profile.updated_at:
            return live[1]
        if live is not None:
            self._retired.append(live[1])
        transport = registry.build(
            profile.type, profile.name, config_of(profile, self._box), self._context
        )
        self._live[profile.id] = (profile.updated_at, transport)
        return transport

    def signer(self, profile: ServerProfile | None) -> Signer | None:
        """The profile's DKIM signer (None: mail through it goes unsigned), rebuilt when its keys
        or its type change: keyed on the encrypted keys as stored, so a rotation made by any
        replica takes effect at the next message here."""
        if profile is None:
            return None
        version = (profile.type, profile.dkim_keys)
        cached = self._signers.get(profile.id)
        if cached is not None and cached[0] == version:
            return cached[1]
        signer = signer_of(profile, self._box)
        self._signers[profile.id] = (version, signer)
        return signer

    async def aclose(self) -> None:
        for transport in [*self._retired, *(live for _, live in self._live.values())]:
            await transport.aclose()
        self._live.clear()
        self._retired.clear()
        await self._builtin.aclose()
