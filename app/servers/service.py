"""Server profiles: the rules for creating, changing, copying and choosing them."""

from __future__ import annotations

import contextlib
import copy
import re
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app import secret_fields as secret_settings
from app.audit import service as audit
from app.audit.service import Secret
from app.crypto import SecretBox
from app.db import utcnow
from app.egress import EgressPolicy, check_host_setting, check_port_setting
from app.errors import Conflict, Invalid, NotFound
from app.identity import Actor
from app.schemas import CamelModel
from app.servers.carriage import CARRIAGE
from app.servers.models import MailRouting, ServerProfile
from app.servers.schemas import Health, ProfileBody, ProfileList, ProfileOut
from app.themes.models import Theme
from app.transports.registry import TRANSPORTS
from app.transports.smtp import SmtpConfig, default_port

PROFILE_BODY: TypeAdapter[ProfileBody] = TypeAdapter(ProfileBody)
PROFILE_NAME = re.compile(r"[A-Za-z0-9_]{1,50}")
COMMON_FIELDS = (
    "description",
    "senderEmail",
    "senderName",
    "signature",
    "maxRecipientsPerMessage",
    "fallback",
    "theme",
    "listUnsubscribe",
    "rateLimit",
)


@dataclass(frozen=True, slots=True)
class Profiles:
    """What the profile rules need beyond the session: the secret box and the egress policy."""

    box: SecretBox
    egress: EgressPolicy
    public_url: str | None = None
    """POSTROOM_PUBLIC_URL: one-click unsubscribe cannot be turned on without it."""


PUBLIC_URL_NEEDED = (
    "one-click unsubscribe needs POSTROOM_PUBLIC_URL, the address recipients reach this "
    "service at (its links go in List-Unsubscribe)"
)


def config_of(profile: ServerProfile, box: SecretBox) -> CamelModel:
    """The profile's typed, decrypted settings, as its transport takes them."""
    stored = box.decrypt(profile.secrets) if profile.secrets else {}
    whole = secret_settings.join(profile.settings, stored)
    return TRANSPORTS[profile.type].config.model_validate(whole)


def as_body(profile: ServerProfile, box: SecretBox) -> dict[str, Any]:
    """The whole stored profile as the API takes it, secrets included: the base of a PATCH."""
    stored = box.decrypt(profile.secrets) if profile.secrets else {}
    body: dict[str, Any] = {"type": profile.type, "name": profile.name}
    body |= {key: getattr(profile, _attr(key)) for key in COMMON_FIELDS}
    body["settings"] = secret_settings.join(profile.settings, stored)
    return body


def _audited(profile: ServerProfile, routing: MailRouting, box: SecretBox) -> dict[str, Any]:
    """The profile as the audit log compares it: its fields as the API names them, whether it
    is the default, each secret as a Secret (only whether it changed is recorded)."""
    body = as_body(profile, box)
    for path in secret_settings.secret_paths(TRANSPORTS[profile.type].config):
        *parents, leaf = path.split(".")
        node: Any = body["settings"]
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            node[leaf] = Secret(node[leaf])
    return body | {"isDefault": routing.profile_id == profile.id}


def _attr(key: str) -> str:
    return "".join(f"_{ch.lower()}" if ch.isupper() else ch for ch in key)


async def get_routing(session: AsyncSession) -> MailRouting:
    routing = await session.get(MailRouting, 1)
    if routing is None:
        session.add(MailRouting(id=1, profile_id=None, builtin=True))
        with contextlib.suppress(IntegrityError):  # another transaction made it first
            async with session.begin_nested():
                await session.flush()
        routing = await session.get(MailRouting, 1)
        assert routing is not None
    return routing


async def get_profile(session: AsyncSession, name: str) -> ServerProfile:
    profile = None
    if PROFILE_NAME.fullmatch(name):  # a name no profile can have is not looked up (NUL, say)
        profile = await session.scalar(select(ServerProfile).where(ServerProfile.name == name))
    if profile is None:
        raise NotFound(f"no server profile {name!r}")
    return profile


async def list_profiles(session: AsyncSession, box: SecretBox) -> ProfileList:
    profiles = list(await session.scalars(select(ServerProfile).order_by(ServerProfile.name)))
    routing = await get_routing(session)
    default = next((p.name for p in profiles if p.id == routing.profile_id), None)
    return ProfileList(
        items=[to_out(p, routing, box) for p in profiles],
        default=default,
        builtin_default=routing.profile_id is None and routing.builtin,
    )


def to_out(profile: ServerProfile, routing: MailRouting, box: SecretBox) -> ProfileOut:
    stored = box.decrypt(profile.secrets) if profile.secrets else {}
    settings = secret_settings.view(TRANSPORTS[profile.type].config, profile.settings, stored)
    if profile.type == "smtp" and settings.get("port") is None:
        settings["port"] = default_port(bool(settings.get("secure")))
    return ProfileOut(
        name=profile.name,
        type=profile.type,
        description=profile.description,
        is_default=routing.profile_id == profile.id,
        sender_email=profile.sender_email,
        sender_name=profile.sender_name,
        signature=profile.signature,
        max_recipients_per_message=profile.max_recipients_per_message,
        fallback=profile.fallback,
        theme=profile.theme,
        list_unsubscribe=profile.list_unsubscribe,
        rate_limit=profile.rate_limit,
        settings=settings,
        health=Health.model_validate(
            {
                "status": profile.health,
                "error": profile.health_error,
                "checkedAt": profile.health_at,
            }
        ),
        created_at=profile.created_at,
        updated_at=profile.updated_at,
    )


async def create_profile(
    session: AsyncSession, ctx: Profiles, body: ProfileBody, actor: Actor | None
) -> ServerProfile:
    """A new profile. `actor` None: the caller audits the change (the Sisense mirror)."""
    if body.name is None:
        raise Invalid("name is required", field="name")
    profile = ServerProfile(name=body.name, type=body.type, settings={}, health="unknown")
    await _apply(session, ctx, profile, body)
    profile.created_at = profile.updated_at
    session.add(profile)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError as err:
        raise Conflict(f"a server profile named {body.name!r} already exists") from err
    routing = await get_routing(session)
    has_other = await session.scalar(
        select(ServerProfile.id).where(ServerProfile.id != profile.id).limit(1)
    )
    if body.is_default or has_other is None:
        _make_default(routing, profile)
    await session.flush()
    what = audit.changes(None, _audited(profile, routing, ctx.box))
    await audit.record(session, actor, "server.create", profile.name, what)
    return profile


async def replace_profile(
    session: AsyncSession, ctx: Profiles, name: str, raw: dict[str, Any], actor: Actor | None
) -> ServerProfile:
    """PUT: the body is the whole profile; stored secrets it does not mention are kept."""
    profile = await get_profile(session, name)
    raw = copy.deepcopy(raw)
    if raw.get("type") == profile.type and isinstance(raw.get("settings", {}), dict):
        decrypted = ctx.box.decrypt(profile.secrets) if profile.secrets else {}
        config = TRANSPORTS[profile.type].config
        stored = secret_settings.stored(config, profile.settings, decrypted)
        raw["settings"] = secret_settings.keep_omitted(raw.get("settings", {}), stored)
    return await _update(session, ctx, profile, raw, actor)


async def patch_profile(
    session: AsyncSession, ctx: Profiles, name: str, patch: dict[str, Any], actor: Actor | None
) -> ServerProfile:
    """PATCH: a JSON merge patch (RFC 7396) onto the stored profile; null resets a field."""
    profile = await get_profile(session, name)
    base = as_body(profile, ctx.box)
    if "type" in patch and patch["type"] != profile.type:
        base["settings"] = {}
    return await _update(session, ctx, profile, merge_patch(base, patch), actor)


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge_patch(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


async def _update(
    session: AsyncSession,
    ctx: Profiles,
    profile: ServerProfile,
    raw: dict[str, Any],
    actor: Actor | None,
) -> ServerProfile:
    if raw.get("name", profile.name) != profile.name:
        raise Invalid("a profile cannot be renamed; duplicate it instead", field="name")
    body = PROFILE_BODY.validate_python({**raw, "name": profile.name})
    routing = await get_routing(session)
    before = _audited(profile, routing, ctx.box)
    is_default = routing.profile_id == profile.id
    if "is_default" in body.model_fields_set and not body.is_default and is_default:
        raise Invalid(
            "there is always one default profile: make another profile the default instead",
            field="isDefault",
        )
    await _apply(session, ctx, profile, body)
    if body.is_default:
        _make_default(routing, profile)
    await session.flush()
    what = audit.changes(before, _audited(profile, routing, ctx.box))
    await audit.record(session, actor, "server.update", profile.name, what)
    return profile


async def _apply(
    session: AsyncSession, ctx: Profiles, profile: ServerProfile, body: ProfileBody
) -> None:
    if body.fallback is not None:
        if body.fallback == body.name:
            raise Invalid("a profile cannot be its own fallback", field="fallback")
        exists = await session.scalar(
            select(ServerProfile.id).where(ServerProfile.name == body.fallback)
        )
        if exists is None:
            raise Invalid(f"no server profile {body.fallback!r}", field="fallback")
    if body.theme is not None:
        theme = await session.scalar(select(Theme.id).where(Theme.name == body.theme))
        if theme is None:
            raise Invalid(f"no theme {body.theme!r}", field="theme")
    if body.list_unsubscribe and ctx.public_url is None:
        raise Invalid(PUBLIC_URL_NEEDED, field="listUnsubscribe")
    if profile.dkim and not CARRIAGE[body.type].carried:
        raise Invalid(
            f"the profile signs with DKIM, and a {body.type} profile cannot: "
            f"{CARRIAGE[body.type].note}. Remove its keys first "
            f"(DELETE /api/v1/servers/{profile.name}/dkim)",
            field="type",
        )
    if isinstance(body.settings, SmtpConfig):
        check_port_setting(ctx.egress, body.settings.effective_port, "settings.port")
    public, stored = secret_settings.split(body.settings)
    profile.type = body.type
    profile.description = body.description
    profile.sender_email = body.sender_email
    profile.sender_name = body.sender_name
    profile.signature = body.signature
    profile.max_recipients_per_message = body.max_recipients_per_message
    profile.fallback = body.fallback
    profile.theme = body.theme
    profile.list_unsubscribe = body.list_unsubscribe
    limit = body.rate_limit
    profile.rate_limit = limit.model_dump(by_alias=True, exclude_none=True) if limit else None
    profile.settings = public
    profile.secrets = ctx.box.encrypt(stored) if stored else None
    profile.updated_at = utcnow()


async def check_host(ctx: Profiles, settings: Any, field: str = "settings.host") -> None:
    """The egress check of a host a request sets (an SMTP profile's `host`), before the profile's
    transaction: it resolves DNS, and no transaction is held across network I/O. A host the
    request leaves as it is was checked when it was saved, and is again at every connect."""
    host = settings.get("host") if isinstance(settings, dict) else getattr(settings, "host", None)
    if isinstance(host, str) and host:
        await check_host_setting(ctx.egress, host, field)


def _make_default(routing: MailRouting, profile: ServerProfile) -> None:
    routing.profile_id = profile.id
    routing.builtin = False


async def set_builtin_default(session: AsyncSession) -> None:
    """Route mail that names no server through the built-in server (Sisense's enable: false)."""
    routing = await get_routing(session)
    routing.profile_id = None
    routing.builtin = True
    await session.flush()


async def delete_profile(session: AsyncSession, ctx: Profiles, name: str, actor: Actor) -> None:
    """Delete a profile; if it was the default, none is left and sending without a server fails."""
    profile = await get_profile(session, name)
    routing = await get_routing(session)
    before = _audited(profile, routing, ctx.box)
    if routing.profile_id == profile.id:
        routing.profile_id = None
        routing.builtin = False
    await session.execute(
        update(ServerProfile).where(ServerProfile.fallback == name).values(fallback=None)
    )
    await session.delete(profile)
    await audit.record(session, actor, "server.delete", name, audit.changes(before, None))


async def duplicate_profile(
    session: AsyncSession,
    ctx: Profiles,
    name: str,
    new_name: str | None,
    secrets: dict[str, Any],
    actor: Actor,
) -> ServerProfile:
    """Copy a profile without its secrets; every secret the original had must be given anew."""
    original = await get_profile(session, name)
    body = as_body(original, ctx.box)
    stored = ctx.box.decrypt(original.secrets) if original.secrets else {}
    body["settings"] = merge_patch(secret_settings.join(original.settings, {}), secrets)
    missing = [path for path in stored if _lookup(body["settings"], path) is None]
    if missing:
        raise Invalid(
            "secrets are not copied: give them for the copy",
            details=[{"field": f"settings.{path}", "message": "required"} for path in missing],
        )
    body["name"] = new_name or await _free_name(session, f"{name[:40]}_copied")
    body["isDefault"] = False
    return await create_profile(session, ctx, PROFILE_BODY.validate_python(body), actor)


def _lookup(tree: dict[str, Any], path: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


async def _free_name(session: AsyncSession, base: str) -> str:
    taken = set(
        await session.scalars(select(ServerProfile.name).where(ServerProfile.name.startswith(base)))
    )
    if base not in taken:
        return base
    n = 2
    while f"{base}{n}" in taken:
        n += 1
    return f"{base}{n}"


async def record_health(
    session: AsyncSession, profile_id: int, *, ok: bool, error: str | None = None
) -> None:
    """Remember whether the profile's server took the last send (credentials refused: failing)."""
    await session.execute(
        update(ServerProfile)
        .where(ServerProfile.id == profile_id)
        .values(health="ok" if ok else "failing", health_error=error, health_at=utcnow())
    )
