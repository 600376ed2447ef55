"""Webhook endpoints: the rules for creating, changing, disabling them, their secrets and their
delivery log."""

from __future__ import annotations

import base64
import secrets
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, event, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.audit.service import Secret
from app.crypto import SecretBox
from app.db import new_id, utcnow
from app.delivery.vocabulary import EVENT_TYPES, EventType
from app.egress import EgressPolicy, check_host_setting
from app.errors import NotFound
from app.identity import Actor
from app.webhooks.enqueue import SUBSCRIBED
from app.webhooks.models import SUBSCRIPTIONS, WebhookDelivery, WebhookEndpoint
from app.webhooks.schemas import (
    DeliveryList,
    DeliveryOut,
    EndpointCreated,
    EndpointIn,
    EndpointOut,
    EndpointPatch,
    TestEventData,
    WebhookEvent,
)

SECRET_BYTES = 32
"""The signing key's length (the spec asks for 24 to 64 random bytes)."""
_ID = "secret"
"""The key of the signing secret in the endpoint's encrypted secrets."""


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_of(endpoint: WebhookEndpoint, box: SecretBox) -> str:
    return box.decrypt(endpoint.secret)[_ID]


async def check_url(policy: EgressPolicy, url: str | None) -> None:
    """A URL whose host resolves to an address the egress policy denies is a 422 naming `url`.
    It resolves DNS: call it before the request's transaction does any work."""
    if url is not None:
        await check_host_setting(policy, urlsplit(url).hostname or "", field="url")


def _changed(session: AsyncSession) -> None:
    """Endpoints or their types changed: this process reads the subscribed types afresh once the
    change is committed (other replicas within enqueue.FRESH_FOR)."""

    def forget(_: Session) -> None:
        SUBSCRIBED.forget(session)

    event.listen(session.sync_session, "after_commit", forget, once=True)


async def create_endpoint(
    session: AsyncSession, box: SecretBox, body: EndpointIn, actor: Actor
) -> EndpointCreated:
    secret = new_secret()
    now = utcnow()
    endpoint = WebhookEndpoint(
        id=new_id(),
        url=body.url,
        description=body.description,
        enabled=body.enabled,
        secret=box.encrypt({_ID: secret}),
        disabled_at=None if body.enabled else now,
        created_at=now,
        updated_at=now,
    )
    session.add(endpoint)
    await session.flush()
    await _set_types(session, endpoint.id, body.event_types)
    _changed(session)
    what = audit.changes(None, await _audited(session, endpoint))
    await audit.record(session, actor, "webhook.create", endpoint.id, what)
    out = to_out(endpoint, body.event_types)
    return EndpointCreated(**out.model_dump(), secret=secret)


async def _audited(session: AsyncSession, endpoint: WebhookEndpoint) -> dict[str, Any]:
    """The endpoint as the audit log compares it (its secret only as whether it changed)."""
    out = await endpoint_out(session, endpoint)
    return out.model_dump(
        by_alias=True, include={"url", "description", "event_types", "enabled"}
    ) | {"secret": Secret(endpoint.secret)}


async def _set_types(session: AsyncSession, endpoint_id: str, types: list[EventType]) -> None:
    await session.execute(delete(SUBSCRIPTIONS).where(SUBSCRIPTIONS.c.endpoint_id == endpoint_id))
    await session.execute(
        insert(SUBSCRIPTIONS), [{"endpoint_id": endpoint_id, "event_type": t} for t in types]
    )


async def get_endpoint(session: AsyncSession, endpoint_id: str) -> WebhookEndpoint:
    endpoint = await session.get(WebhookEndpoint, endpoint_id) if len(endpoint_id) == 32 else None
    if endpoint is None:
        raise NotFound(f"no webhook endpoint {endpoint_id!r}")
    return endpoint


async def types_of(session: AsyncSession, endpoint_ids: list[str]) -> dict[str, list[EventType]]:
    rows = await session.execute(
        select(SUBSCRIPTIONS.c.endpoint_id, SUBSCRIPTIONS.c.event_type).where(
            SUBSCRIPTIONS.c.endpoint_id.in_(endpoint_ids)
        )
    )
    found: dict[str, list[EventType]] = {endpoint_id: [] for endpoint_id in endpoint_ids}
    for endpoint_id, event_type in rows:
        found[endpoint_id].append(event_type)
    return found


def to_out(endpoint: WebhookEndpoint, types: list[EventType]) -> EndpointOut:
    return EndpointOut(
        id=endpoint.id,
        url=endpoint.url,
        description=endpoint.description,
        event_types=sorted(types, key=EVENT_TYPES.index),
        enabled=endpoint.enabled,
        disabled_reason=endpoint.disabled_reason,
        disabled_at=endpoint.disabled_at,
        failing_since=endpoint.failing_since,
        created_at=endpoint.created_at,
        updated_at=endpoint.updated_at,
    )


async def endpoint_out(session: AsyncSession, endpoint: WebhookEndpoint) -> EndpointOut:
    return to_out(endpoint, (await types_of(session, [endpoint.id]))[endpoint.id])


async def list_endpoints(session: AsyncSession) -> list[EndpointOut]:
    endpoints = list(
        await session.scalars(select(WebhookEndpoint).order_by(WebhookEndpoint.created_at))
    )
    types = await types_of(session, [e.id for e in endpoints])
    return [to_out(e, types[e.id]) for e in endpoints]


async def patch_endpoint(
    session: AsyncSession, endpoint_id: str, body: EndpointPatch, actor: Actor
) -> WebhookEndpoint:
    endpoint = await get_endpoint(session, endpoint_id)
    before = await _audited(session, endpoint)
    given = body.model_fields_set
    if "url" in given and body.url is not None:
        endpoint.url = body.url
    if "description" in given and body.description is not None:
        endpoint.description = body.description
    if "event_types" in given and body.event_types is not None:
        await _set_types(session, endpoint.id, body.event_types)
    if "enabled" in given and body.enabled is not None and body.enabled != endpoint.enabled:
        if body.enabled:
            await enable(session, endpoint)
        else:
            await disable(session, endpoint, None, utcnow())
    endpoint.updated_at = utcnow()
    _changed(session)
    what = audit.changes(before, await _audited(session, endpoint))
    await audit.record(session, actor, "webhook.update", endpoint.id, what)
    return endpoint


async def enable(session: AsyncSession, endpoint: WebhookEndpoint) -> None:
    """On again: the reason and the failure clock are cleared, paused deliveries are due now."""
    endpoint.enabled = True
    endpoint.disabled_reason = endpoint.disabled_at = endpoint.failing_since = None
    await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint.id, WebhookDelivery.status == "paused")
        .values(status="queued", next_attempt_at=utcnow())
    )


async def disable(
    session: AsyncSession, endpoint: WebhookEndpoint, reason: str | None, now: datetime
) -> None:
    """Off, with the reason (None: an admin's choice): its waiting deliveries are paused, kept
    for when it is enabled again; no new ones are queued."""
    endpoint.enabled = False
    endpoint.disabled_reason = reason
    endpoint.disabled_at = now
    await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint.id, WebhookDelivery.status == "queued")
        .values(status="paused")
    )
    _changed(session)


async def delete_endpoint(session: AsyncSession, endpoint_id: str, actor: Actor) -> None:
    endpoint = await get_endpoint(session, endpoint_id)
    before = await _audited(session, endpoint)
    await session.delete(endpoint)
    _changed(session)
    await audit.record(session, actor, "webhook.delete", endpoint.id, audit.changes(before, None))


async def rotate_secret(
    session: AsyncSession, box: SecretBox, endpoint_id: str, actor: Actor
) -> EndpointCreated:
    """A new signing secret, shown this once; deliveries sign with it from now on."""
    endpoint = await get_endpoint(session, endpoint_id)
    before = await _audited(session, endpoint)
    secret = new_secret()
    endpoint.secret = box.encrypt({_ID: secret})
    endpoint.updated_at = utcnow()
    what = audit.changes(before, await _audited(session, endpoint))
    await audit.record(session, actor, "webhook.update", endpoint.id, what)
    out = await endpoint_out(session, endpoint)
    return EndpointCreated(**out.model_dump(), secret=secret)


TEST_TYPE = "webhook.test"


async def queue_test(session: AsyncSession, endpoint_id: str) -> WebhookDelivery:
    """A `webhook.test` delivery, due now, whether the endpoint is enabled or not (it is how an
    admin checks a receiver before enabling it again)."""
    endpoint = await get_endpoint(session, endpoint_id)
    now = utcnow()
    body = WebhookEvent(
        type=TEST_TYPE,
        timestamp=now,
        data=TestEventData(endpoint_id=endpoint.id, message="a test event from Postroom"),
    )
    delivery = WebhookDelivery(
        webhook_id=f"msg_{new_id()}",
        endpoint_id=endpoint.id,
        event_type=TEST_TYPE,
        message_pk=None,
        body=body.model_dump_json(by_alias=True),
        status="queued",
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )
    session.add(delivery)
    await session.flush()
    return delivery


async def list_deliveries(
    session: AsyncSession, endpoint_id: str, *, limit: int, before: int | None
) -> DeliveryList:
    """The endpoint's deliveries, newest first, `limit` at a time (`before`: an id, exclusive)."""
    endpoint = await get_endpoint(session, endpoint_id)
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
    if before is not None:
        query = query.where(WebhookDelivery.id < before)
    rows = list(await session.scalars(query.order_by(WebhookDelivery.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return DeliveryList(
        items=[delivery_out(row) for row in rows],
        next_before=rows[-1].id if more else None,
    )


def delivery_out(row: WebhookDelivery) -> DeliveryOut:
    return DeliveryOut(
        id=row.id,
        webhook_id=row.webhook_id,
        event_type=row.event_type,
        message_id=row.message_pk,
        status=row.status,
        attempts=row.attempts,
        response_code=row.response_code,
        error=row.error,
        duration_ms=row.duration_ms,
        created_at=row.created_at,
        last_attempt_at=row.last_attempt_at,
        next_attempt_at=row.next_attempt_at if row.status == "queued" else None,
        delivered_at=row.delivered_at,
    )
