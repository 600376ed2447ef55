from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body, status
from sqlalchemy.ext.asyncio import AsyncSession

from app.deps import AdminActor, AdminUser, SessionDep
from app.identity import Actor
from app.servers import service, sisense
from app.servers.deps import ProfilesDep
from app.servers.models import ServerProfile
from app.servers.schemas import (
    PROFILE_MODELS,
    PROFILE_TYPES,
    DuplicateBody,
    ProfileBody,
    ProfileList,
    ProfileOut,
)
from app.servers.sisense import EmailServerBody, EmailServerOut

router = APIRouter(tags=["servers"])

_TYPES = {type_: model.__name__ for type_, model in zip(PROFILE_TYPES, PROFILE_MODELS, strict=True)}
_WHOLE_PROFILE = {
    "requestBody": {
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [{"$ref": f"#/components/schemas/{s}"} for s in _TYPES.values()],
                    "discriminator": {
                        "propertyName": "type",
                        "mapping": {t: f"#/components/schemas/{s}" for t, s in _TYPES.items()},
                    },
                }
            }
        }
    }
}
"""PUT reads its body as a dict (to keep the secrets it omits) but documents the profile union."""

RawProfile = Annotated[dict[str, Any], Body()]
"""PUT's and PATCH's body, a JSON object read as it is: what it leaves out matters."""

_Change = Callable[
    [AsyncSession, service.Profiles, str, dict[str, Any], Actor | None], Awaitable[ServerProfile]
]
"""service.replace_profile (PUT) or service.patch_profile (PATCH)."""


async def _out(
    session: AsyncSession, profiles: service.Profiles, profile: ServerProfile
) -> ProfileOut:
    """The profile as every endpoint answers it: with whether it is the default."""
    return service.to_out(profile, await service.get_routing(session), profiles.box)


async def _change(
    change: _Change,
    session: AsyncSession,
    profiles: service.Profiles,
    name: str,
    body: dict[str, Any],
    actor: Actor,
) -> ProfileOut:
    """PUT and PATCH: the host checked first, then the change, answered with the profile."""
    await service.check_host(profiles, body.get("settings"))
    profile = await change(session, profiles, name, body, actor)
    return await _out(session, profiles, profile)


@router.get("/api/v1/settings/email_server", response_model=EmailServerOut)
async def get_email_server(
    _: AdminUser, session: SessionDep, profiles: ProfilesDep
) -> EmailServerOut:
    """Sisense v1.0: the custom SMTP server's settings (`pass` is never returned)."""
    return await sisense.read(session, profiles)


@router.post("/api/v1/settings/email_server", response_model=EmailServerOut)
async def post_email_server(
    body: EmailServerBody, actor: AdminActor, session: SessionDep, profiles: ProfilesDep
) -> EmailServerOut:
    """Sisense v1.0: set the custom SMTP server; `enable: false` uses the built-in server again."""
    await service.check_host(profiles, body, field="host")
    return await sisense.write(session, profiles, body, actor)


@router.get("/api/v1/servers", response_model=ProfileList)
async def list_servers(_: AdminUser, session: SessionDep, profiles: ProfilesDep) -> ProfileList:
    return await service.list_profiles(session, profiles.box)


@router.post("/api/v1/servers", response_model=ProfileOut, status_code=status.HTTP_201_CREATED)
async def create_server(
    body: ProfileBody, actor: AdminActor, session: SessionDep, profiles: ProfilesDep
) -> ProfileOut:
    await service.check_host(profiles, body.settings)
    profile = await service.create_profile(session, profiles, body, actor)
    return await _out(session, profiles, profile)


@router.get("/api/v1/servers/{name}", response_model=ProfileOut)
async def get_server(
    name: str, _: AdminUser, session: SessionDep, profiles: ProfilesDep
) -> ProfileOut:
    profile = await service.get_profile(session, name)
    return await _out(session, profiles, profile)


@router.put("/api/v1/servers/{name}", response_model=ProfileOut, openapi_extra=_WHOLE_PROFILE)
async def replace_server(
    name: str, body: RawProfile, actor: AdminActor, session: SessionDep, profiles: ProfilesDep
) -> ProfileOut:
    """Replace the whole profile; secrets the body does not mention are kept, `null` clears one."""
    return await _change(service.replace_profile, session, profiles, name, body, actor)


@router.patch("/api/v1/servers/{name}", response_model=ProfileOut)
async def patch_server(
    name: str, body: RawProfile, actor: AdminActor, session: SessionDep, profiles: ProfilesDep
) -> ProfileOut:
    """A JSON merge patch: the fields given change, `null` resets one (and clears a secret)."""
    return await _change(service.patch_profile, session, profiles, name, body, actor)


@router.delete("/api/v1/servers/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_server(
    name: str, actor: AdminActor, session: SessionDep, profiles: ProfilesDep
) -> None:
    await service.delete_profile(session, profiles, name, actor)


@router.post(
    "/api/v1/servers/{name}/duplicate",
    response_model=ProfileOut,
    status_code=status.HTTP_201_CREATED,
)
async def duplicate_server(
    name: str, body: DuplicateBody, actor: AdminActor, session: SessionDep, profiles: ProfilesDep
) -> ProfileOut:
    """Copy a profile without its secrets: the body gives the copy's secrets (and maybe a name)."""
    await service.check_host(profiles, body.settings)
    profile = await service.duplicate_profile(
        session, profiles, name, body.name, body.settings, actor
    )
    return await _out(session, profiles, profile)
