"""What a sender may send: the From addresses and domains, and the server profiles, an admin gave
it (users.allowed_from / users.allowed_servers), or the defaults when they are null.

The rules come with the caller's credential: app.security reads them from the user row with the
role and the password hash, and reads that row again every half second, so a change an admin
makes on any replica binds every replica within a second and POST /messages reads nothing more
for them. Admins are not bounded and cost nothing here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.errors import Forbidden
from app.identity import Principal
from app.schemas import comparable

if TYPE_CHECKING:
    from app.messages.lookups import Lookups
    from app.servers.models import ServerProfile


@dataclass(frozen=True, slots=True)
class Bounds:
    """A sender's rules as stored: None means the default."""

    user: str
    allowed_from: tuple[str, ...] | None
    allowed_servers: frozenset[str] | None

    def from_allowed(self, email: str) -> bool:
        """Whether allowedFrom lets `email` through: an exact address or its domain, ignoring
        case (an address's local part is matched case-blind too: a bound, not a mailbox)."""
        assert self.allowed_from is not None
        email = comparable(email)
        domain = email.rpartition("@")[2]
        return any(entry in (email, domain) for entry in self.allowed_from)

    def may_use(self, profile: str, is_default: bool) -> bool:
        """Whether the sender may send through this profile: one of allowedServers, or, when
        that is null, the default profile only."""
        if self.allowed_servers is not None:
            return profile in self.allowed_servers
        return is_default


def bounds_of(principal: Principal) -> Bounds:
    """The caller's bounds as read with its credential (app.security re-reads them with the
    role), each entry in its comparable spelling."""
    allowed_from = principal.allowed_from
    return Bounds(
        user=principal.name,
        allowed_from=None if allowed_from is None else tuple(map(comparable, allowed_from)),
        allowed_servers=principal.allowed_servers,
    )


async def enforce(
    lookups: Lookups,
    principal: Principal,
    *,
    server: str | None,
    profile: ServerProfile | None,
    sender: str,
    from_named: bool,
) -> None:
    """Refuse (403) a message its sender may not send: through `profile` (named in `server`, or
    the default), or from `sender` when the message chose it (`from_named`).

    The From a message gets when it gives none (its profile's sender, else the branding's) is
    an admin's choice, never a forgery: it is always allowed, given or not. A `from` of the
    sender's own must match allowedFrom, or when that is null, be the branding sender or the
    sender of a profile it may use."""
    bounds = lookups.caller_bounds(principal)
    await _check_server(lookups, bounds, server, profile)
    if not from_named:
        return
    if bounds.allowed_from is not None and bounds.from_allowed(sender):
        return
    if comparable(sender) == comparable(await _implicit_sender(lookups, profile)):
        return
    if bounds.allowed_from is not None:
        raise _refused_from(bounds, sender, ", ".join(bounds.allowed_from))
    if not await _default_sender(lookups, bounds, profile, sender):
        allowed = ", ".join(await _default_senders(lookups, bounds, profile))
        raise _refused_from(bounds, sender, allowed)


async def _implicit_sender(lookups: Lookups, profile: ServerProfile | None) -> str:
    if profile is not None and profile.sender_email:
        return profile.sender_email
    return (await lookups.branding_sender())[0] or ""


async def _check_server(
    lookups: Lookups, bounds: Bounds, server: str | None, profile: ServerProfile | None
) -> None:
    if profile is None:
        return  # the built-in server: it writes files, nothing leaves
    which = f"server {profile.name}" if server is not None else f"the default server {profile.name}"
    default_id = await lookups.default_profile_id() if bounds.allowed_servers is None else None
    if bounds.may_use(profile.name, profile.id == default_id):
        return
    if bounds.allowed_servers is not None:
        listed = ", ".join(sorted(bounds.allowed_servers)) or "none"
        why = f"allowed are {listed} (allowedServers)"
        hint = "name an allowed one in `server`, or " if bounds.allowed_servers else ""
    else:
        default = await lookups.profile(None) if default_id is not None else None
        why = "allowed is the default server only" + (
            f" ({default.name})" if default is not None else ", and there is none"
        )
        hint = "leave `server` out, or " if default is not None else ""
    message = (
        f"user {bounds.user} may not send through {which}: {why}; "
        f"{hint}set allowedServers on the user"
    )
    raise Forbidden(message, details=[{"field": "server", "message": message}])


async def _default_sender(
    lookups: Lookups, bounds: Bounds, profile: ServerProfile | None, sender: str
) -> bool:
    """Whether `sender` is one a sender without allowedFrom may use, looking up no more than
    it takes (the profile in use, then the branding, then the other allowed profiles)."""
    sender = comparable(sender)
    if profile is not None and comparable(profile.sender_email or "") == sender:
        return True
    if comparable((await lookups.branding_sender())[0] or "") == sender:
        return True
    return sender in {comparable(e) for e in await _default_senders(lookups, bounds, profile)}


async def _default_senders(
    lookups: Lookups, bounds: Bounds, profile: ServerProfile | None
) -> list[str]:
    """The From addresses a sender without allowedFrom may use: the branding sender and the
    senders of the profiles it may use (the default profile, unless allowedServers says)."""
    allowed: list[str] = []
    if profile is not None and profile.sender_email:
        allowed.append(profile.sender_email)
    branding, _ = await lookups.branding_sender()
    if branding:
        allowed.append(branding)
    if bounds.allowed_servers:
        senders = await lookups.profile_senders(bounds.allowed_servers)
        allowed += [email for _, email in sorted(senders.items()) if email]
    return list(dict.fromkeys(allowed))


def _refused_from(bounds: Bounds, sender: str, allowed: str) -> Forbidden:
    if bounds.allowed_from is not None:
        why = f"allowed are {allowed} (allowedFrom)" if allowed else "allowedFrom is empty"
    else:
        why = "allowed are the branding sender and the senders of the profiles it may use: " + (
            allowed or "none is set"
        )
    message = (
        f"user {bounds.user} may not send from {sender}: {why}, or no `from` for its "
        "profile's own sender; set allowedFrom on the user"
    )
    return Forbidden(message, details=[{"field": "from", "message": message}])
