"""What the messages of one request (or one group commit) resolve to, each looked up once: their
profiles, the default route, the branding sender, and the callers' sending bounds."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.branding.service import get_branding
from app.errors import Invalid
from app.identity import Principal
from app.messages.bounds import Bounds, bounds_of
from app.servers.models import ServerProfile
from app.servers.service import get_routing


@dataclass
class Lookups:
    """Per-request memo of the rows every message of a request may need."""

    session: AsyncSession
    profiles: dict[str | None, ServerProfile | None] = field(default_factory=dict)
    branding: tuple[str | None, str | None] | None = None
    routing: tuple[int | None, bool] | None = None
    bounds: dict[Principal, Bounds] = field(default_factory=dict)
    senders: dict[str, str | None] = field(default_factory=dict)

    async def profile(self, name: str | None) -> ServerProfile | None:
        """The profile a message goes through; None is the built-in server."""
        if name not in self.profiles:
            self.profiles[name] = await self._profile_for(name)
        return self.profiles[name]

    async def default_profile_id(self) -> int | None:
        """The default profile's id; None when mail that names no server goes to the built-in
        server or nowhere."""
        return (await self._routing())[0]

    async def branding_sender(self) -> tuple[str | None, str | None]:
        if self.branding is None:
            branding = await get_branding(self.session)
            self.branding = (branding.sender_email, branding.sender_name)
        return self.branding

    def caller_bounds(self, principal: Principal) -> Bounds:
        """The caller's sending bounds, made once per request batch."""
        bounds = self.bounds.get(principal)
        if bounds is None:
            bounds = self.bounds[principal] = bounds_of(principal)
        return bounds

    async def profile_senders(self, names: frozenset[str]) -> dict[str, str | None]:
        """The senderEmail of each named profile that exists."""
        missing = names - self.senders.keys()
        if missing:
            query = select(ServerProfile.name, ServerProfile.sender_email).where(
                ServerProfile.name.in_(sorted(missing))
            )
            self.senders |= dict.fromkeys(missing)
            self.senders |= {name: email for name, email in await self.session.execute(query)}
        return {name: self.senders[name] for name in names}

    async def _routing(self) -> tuple[int | None, bool]:
        if self.routing is None:
            routing = await get_routing(self.session)
            self.routing = (routing.profile_id, routing.builtin)
        return self.routing

    async def _profile_for(self, name: str | None) -> ServerProfile | None:
        if name is not None:
            profile = await self.session.scalar(
                select(ServerProfile).where(ServerProfile.name == name)
            )
            if profile is None:
                raise Invalid(f"no server profile {name!r}", field="server")
            return profile
        profile_id, builtin = await self._routing()
        if profile_id is not None:
            return await self.session.get(ServerProfile, profile_id)
        if builtin:
            return None
        raise Invalid(
            "there is no default server profile: name one in `server`, or make a profile the "
            "default",
            field="server",
        )
