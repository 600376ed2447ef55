from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, status

from app.deps import AdminActor, AdminUser, SessionDep
from app.servers import service, sisense
from app.servers.deps import ProfilesDep
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
    return service.to_out(profile, await service.get_routing(session), profiles.box)


@router.get("/api/v1/servers/{name}", response_model=ProfileOut)
async def get_server(
    name: str, _: AdminUser, session: SessionDep, profiles: ProfilesDep
) -> ProfileOut:
    profile = await service.get_profile(session, name)
    return service.to_out(profile, await service.get_routing(session), profiles.box)


@router.put("/api/v1/servers/{name}", response_model=ProfileOut, openapi_extra=_WHOLE_PROFILE)
async def replace_server(
    name: str,
    actor: AdminActor,
    session: SessionDep,
    profiles: ProfilesDep,
    body: dict[str, Any] = Body(),
) -> ProfileOut:
    """Replace the whole profile; secrets the body does not mention are kept, `null` clears one."""
    await service.check_host(profiles, body.get("settings"))
    profile = await service.replace_profile(session, profiles, name, body, actor)
    return service.to_out(profile, await service.get_routing(session), profiles.box)


@router.patch("/api/v1/servers/{name}", response_model=ProfileOut)
async def patch_server(
    name: str,
    actor: AdminActor,
    session: SessionDep,
    profiles: ProfilesDep,
    body: dict[str, Any] = Body(),
) -> ProfileOut:
    """A JSON merge patch: the fields given change, `null` resets one (and clears a secret)."""
    await service.check_host(profiles, body.get("settings"))
    profile = await service.patch_profile(session, profiles, name, body, actor)
    return service.to_out(profile, await service.get_routing(session), profiles.box)


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
    return service.to_out(profile, await service.get_routing(session), profiles.box)
