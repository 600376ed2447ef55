from __future__ import annotations

from fastapi import APIRouter

from app.branding import service
from app.branding.schemas import BrandingBody
from app.deps import AdminActor, AdminUser, SessionDep

router = APIRouter(tags=["branding"])


@router.get("/api/branding", response_model=BrandingBody)
async def get_branding(_: AdminUser, session: SessionDep) -> BrandingBody:
    """Sisense 0.9: the system sender."""
    return service.to_body(await service.get_branding(session))


@router.post("/api/branding", response_model=BrandingBody)
async def post_branding(body: BrandingBody, actor: AdminActor, session: SessionDep) -> BrandingBody:
    """Sisense 0.9: set the system sender; fields left out stay as they are."""
    return service.to_body(await service.update_branding(session, body, actor))
