from __future__ import annotations

from fastapi import APIRouter, status

from app.deps import AdminActor, AdminUser, RuntimeDep, SessionDep
from app.users import service
from app.users.schemas import UserCreate, UserCreated, UserList, UserOut, UserUpdate

router = APIRouter(prefix="/api/v1/users", tags=["users"])


@router.get("", response_model=UserList)
async def list_users(_: AdminUser, session: SessionDep) -> UserList:
    users = await service.list_users(session)
    return UserList(items=[UserOut.model_validate(u, from_attributes=True) for u in users])


@router.post("", response_model=UserCreated, status_code=status.HTTP_201_CREATED)
async def create_user(body: UserCreate, actor: AdminActor, session: SessionDep) -> UserCreated:
    """Create a user; when no password is given one is generated and shown in this answer only."""
    user, generated = await service.create_user(
        session,
        body.name,
        body.role,
        body.password,
        allowed_from=body.allowed_from,
        allowed_servers=body.allowed_servers,
        actor=actor,
    )
    out = UserOut.model_validate(user, from_attributes=True)
    return UserCreated(**out.model_dump(), password=generated)


@router.get("/{name}", response_model=UserOut)
async def get_user(name: str, _: AdminUser, session: SessionDep) -> UserOut:
    return UserOut.model_validate(await service.get_user(session, name), from_attributes=True)


@router.patch("/{name}", response_model=UserOut)
async def update_user(
    name: str, body: UserUpdate, actor: AdminActor, session: SessionDep, runtime: RuntimeDep
) -> UserOut:
    given = body.model_fields_set
    user = await service.update_user(
        session,
        name,
        role=body.role,
        password=body.password,
        allowed_from=body.allowed_from if "allowed_from" in given else service.KEEP,
        allowed_servers=body.allowed_servers if "allowed_servers" in given else service.KEEP,
        actor=actor,
    )
    runtime.auth.changed(name)
    return UserOut.model_validate(user, from_attributes=True)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_user(
    name: str, actor: AdminActor, session: SessionDep, runtime: RuntimeDep
) -> None:
    await service.delete_user(session, name, actor=actor)
    runtime.auth.changed(name)
