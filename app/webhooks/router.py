from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from app.deps import AdminActor, AdminUser, SessionDep
from app.webhooks import service
from app.webhooks.deps import EndpointsDep
from app.webhooks.schemas import (
    DeliveryList,
    EndpointCreated,
    EndpointIn,
    EndpointList,
    EndpointOut,
    EndpointPatch,
    TestQueued,
    WebhookEvent,
)

router = APIRouter(tags=["webhooks"])


@router.post(
    "/api/v1/webhooks", response_model=EndpointCreated, status_code=status.HTTP_201_CREATED
)
async def create_webhook(
    body: EndpointIn, actor: AdminActor, session: SessionDep, endpoints: EndpointsDep
) -> EndpointCreated:
    """Register an endpoint. The answer holds its signing secret, shown this once."""
    await service.check_url(endpoints.egress, body.url)
    return await service.create_endpoint(session, endpoints.box, body, actor)


@router.get("/api/v1/webhooks", response_model=EndpointList)
async def list_webhooks(_: AdminUser, session: SessionDep) -> EndpointList:
    return EndpointList(items=await service.list_endpoints(session))


@router.get("/api/v1/webhooks/{endpoint_id}", response_model=EndpointOut)
async def get_webhook(endpoint_id: str, _: AdminUser, session: SessionDep) -> EndpointOut:
    endpoint = await service.get_endpoint(session, endpoint_id)
    return await service.endpoint_out(session, endpoint)


@router.patch("/api/v1/webhooks/{endpoint_id}", response_model=EndpointOut)
async def patch_webhook(
    endpoint_id: str,
    body: EndpointPatch,
    actor: AdminActor,
    session: SessionDep,
    endpoints: EndpointsDep,
) -> EndpointOut:
    """The fields given change; `enabled: true` clears an automatic disable's reason."""
    await service.check_url(endpoints.egress, body.url)
    endpoint = await service.patch_endpoint(session, endpoint_id, body, actor)
    return await service.endpoint_out(session, endpoint)


@router.delete("/api/v1/webhooks/{endpoint_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_webhook(endpoint_id: str, actor: AdminActor, session: SessionDep) -> None:
    """Remove the endpoint, its delivery log and what waits for it."""
    await service.delete_endpoint(session, endpoint_id, actor)


@router.post("/api/v1/webhooks/{endpoint_id}/rotate-secret", response_model=EndpointCreated)
async def rotate_webhook_secret(
    endpoint_id: str, actor: AdminActor, session: SessionDep, endpoints: EndpointsDep
) -> EndpointCreated:
    """A new signing secret, shown this once; the old one signs nothing from now on."""
    return await service.rotate_secret(session, endpoints.box, endpoint_id, actor)


@router.post(
    "/api/v1/webhooks/{endpoint_id}/test",
    response_model=TestQueued,
    status_code=status.HTTP_202_ACCEPTED,
)
async def test_webhook(endpoint_id: str, _: AdminUser, session: SessionDep) -> TestQueued:
    """Queue a `webhook.test` event for the endpoint (enabled or not); its delivery log shows
    how it went."""
    delivery = await service.queue_test(session, endpoint_id)
    return TestQueued(delivery_id=delivery.id, webhook_id=delivery.webhook_id)


@router.get("/api/v1/webhooks/{endpoint_id}/deliveries", response_model=DeliveryList)
async def list_webhook_deliveries(
    endpoint_id: str,
    _: AdminUser,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> DeliveryList:
    """The delivery log, newest first: status, attempts, the last answer and when."""
    return await service.list_deliveries(session, endpoint_id, limit=limit, before=before)


events = APIRouter(tags=["webhooks"])
"""The outgoing webhook, for the OpenAPI document's `webhooks` section."""


@events.post("message-event")
async def message_event(body: WebhookEvent) -> None:
    """What Postroom POSTs to every endpoint: minified JSON signed per Standard Webhooks
    (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>` over
    `{id}.{timestamp}.{body}` with the endpoint's `whsec_` secret). Answer 2xx within 10 s;
    anything else is retried with backoff; 410 Gone disables the endpoint."""
