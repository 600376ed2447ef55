"""/api/v1/servers/{name}/dkim: a profile's DKIM keys, the DNS records to publish, rotation."""

from __future__ import annotations

from fastapi import APIRouter, status

from app.deps import AdminActor, AdminUser, SessionDep, SessionsDep
from app.dkim import service
from app.dkim.deps import KeysDep
from app.dkim.schemas import DkimKeyIn, DkimOut, RotateIn
from app.servers.service import get_profile

router = APIRouter(prefix="/api/v1/servers", tags=["servers"])


@router.get("/{name}/dkim", response_model=DkimOut)
async def get_dkim(name: str, _: AdminUser, session: SessionDep) -> DkimOut:
    """The profile's keys and the TXT record each needs (private keys are never shown)."""
    profile = await get_profile(session, name)
    return service.out(profile.name, profile.type, service.state_of(profile))


@router.post("/{name}/dkim", response_model=DkimOut, status_code=status.HTTP_201_CREATED)
async def add_dkim_key(
    name: str, body: DkimKeyIn, actor: AdminActor, session: SessionDep, keys: KeysDep
) -> DkimOut:
    """Make a key (or import `privateKey`). The profile's first key signs at once: publish its
    record. A later one becomes the next key: publish its record, then rotate."""
    key = await service.make_key(body)
    return await service.add_key(session, keys.box, name, body, key, actor=actor)


@router.post("/{name}/dkim/rotate", response_model=DkimOut)
async def rotate_dkim(
    name: str,
    actor: AdminActor,
    sessions: SessionsDep,
    keys: KeysDep,
    body: RotateIn | None = None,
) -> DkimOut:
    """The next key signs from now on and the active one becomes the next. 409 unless the next
    key's record is found in DNS (or `force`)."""
    force = body is not None and body.force
    return await service.rotate(sessions, keys.box, keys.resolver, name, force=force, actor=actor)


@router.delete("/{name}/dkim", status_code=status.HTTP_204_NO_CONTENT)
async def delete_dkim(name: str, actor: AdminActor, session: SessionDep) -> None:
    """Forget the keys: mail through the profile goes out unsigned from now on."""
    await service.remove(session, name, actor=actor)
