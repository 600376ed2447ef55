from __future__ import annotations

from fastapi import APIRouter, status

from app.deps import AdminActor, AdminUser, AuthDep, SessionDep
from app.users import service, tokens
from app.users.schemas import (
    TokenCreate,
    TokenCreated,
    TokenList,
    TokenOut,
    UserCreate,
    UserCreated,
    UserList,
    UserOut,
    UserUpdate,
)

router = APIRouter(prefix="/api/v1/users", tags=["users"])


@router.get("", response_model=UserList)
async def list_users(_: AdminUser, session: SessionDep) -> UserList:
    users = await service.list_users(session)
    return UserList(items=[UserOut.model_validate(u, from_attributes=True) for u in users])


@router.post("", response_model=UserCreated, status_code=status.HTTP_201_CREATED)
async def create_user(body: UserCreate, actor: AdminActor, session: SessionDep) -> UserCreated:
    """Create a user; when no password is given one is generated and shown in this answer only."""
    user, generated = await service.create_from(session, body, actor=actor)
    out = UserOut.model_validate(user, from_attributes=True)
    return UserCreated(**out.model_dump(), password=generated)


@router.get("/{name}", response_model=UserOut)
async def get_user(name: str, _: AdminUser, session: SessionDep) -> UserOut:
    return UserOut.model_validate(await service.get_user(session, name), from_attributes=True)


@router.patch("/{name}", response_model=UserOut)
async def update_user(
    name: str, body: UserUpdate, actor: AdminActor, session: SessionDep, auth: AuthDep
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
    auth.changed(name)
    return UserOut.model_validate(user, from_attributes=True)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_user(name: str, actor: AdminActor, session: SessionDep, auth: AuthDep) -> None:
    await service.delete_user(session, name, actor=actor)
    auth.changed(name)


@router.post("/{name}/tokens", response_model=TokenCreated, status_code=status.HTTP_201_CREATED)
async def issue_token(
    name: str, body: TokenCreate, actor: AdminActor, session: SessionDep
) -> TokenCreated:
    """Issue an API token for the user: `Authorization: Bearer <token>` then acts as the user
    (its role and sending bounds). The token is in this answer only; Postroom keeps its hash."""
    row, token = await tokens.issue(session, name, body.name, body.expires_at, actor=actor)
    out = TokenOut.model_validate(row, from_attributes=True)
    return TokenCreated(**out.model_dump(exclude={"status"}), token=token)


@router.get("/{name}/tokens", response_model=TokenList)
async def list_tokens(name: str, _: AdminUser, session: SessionDep) -> TokenList:
    """The user's tokens, revoked and expired ones included (never the token itself)."""
    rows = await tokens.list_tokens(session, name)
    return TokenList(items=[TokenOut.model_validate(r, from_attributes=True) for r in rows])


@router.delete("/{name}/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_token(
    name: str, token_id: str, actor: AdminActor, session: SessionDep, auth: AuthDep
) -> None:
    """Revoke a token: refused here at once, on every other replica within a second."""
    await tokens.revoke(session, name, token_id, actor=actor)
    auth.changed(name)
