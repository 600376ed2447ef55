"""The endpoints API: the secret shown once, URLs checked against the egress policy, PATCH,
delete, rotation, and who may call it."""

from __future__ import annotations

import asyncio
import base64

import httpx
import pytest
from sqlalchemy import func, select

from app.config import Settings
from app.delivery.vocabulary import EVENT_TYPES
from app.main import create_app
from app.webhooks.models import WebhookSubscription
from app.wiring import Core
from tests.conftest import ADMIN, basic, raw_dump
from tests.webhooks.conftest import Receiver, add_endpoint

pytestmark = pytest.mark.anyio


async def test_the_secret_is_shown_once_and_kept_encrypted(
    admin: httpx.AsyncClient, runtime: Core, receiver: Receiver
) -> None:
    created = await add_endpoint(
        admin, receiver, description="billing", eventTypes=["bounced", "complained", "bounced"]
    )
    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert created["eventTypes"] == ["bounced", "complained"]
    assert created["enabled"] is True
    assert created["disabledReason"] is None

    one = await admin.get(f"/api/v1/webhooks/{created['id']}")
    listed = await admin.get("/api/v1/webhooks")
    for response in (one, listed):
        assert response.status_code == 200
        assert "secret" not in response.text
        assert secret.removeprefix("whsec_") not in response.text
    assert one.json() == {k: v for k, v in created.items() if k != "secret"}
    assert [e["id"] for e in listed.json()["items"]] == [created["id"]]
    assert secret.removeprefix("whsec_").encode() not in await asyncio.to_thread(
        raw_dump, runtime.settings
    )

    rotated = await admin.post(f"/api/v1/webhooks/{created['id']}/rotate-secret")
    assert rotated.status_code == 200
    assert rotated.json()["secret"].startswith("whsec_")
    assert rotated.json()["secret"] != secret
    assert "secret" not in (await admin.get(f"/api/v1/webhooks/{created['id']}")).json()


async def test_every_event_type_by_default_and_patch_changes_what_is_given(
    admin: httpx.AsyncClient, runtime: Core, receiver: Receiver
) -> None:
    created = await add_endpoint(admin, receiver)
    assert created["eventTypes"] == list(EVENT_TYPES)
    assert (await admin.get(f"/api/v1/webhooks/{created['id']}")).json()["eventTypes"] == list(
        EVENT_TYPES
    )
    endpoint = f"/api/v1/webhooks/{created['id']}"
    response = await admin.patch(endpoint, json={"eventTypes": ["sent"], "description": "x"})
    assert response.status_code == 200, response.text
    assert response.json()["eventTypes"] == ["sent"]
    assert response.json()["description"] == "x"
    assert response.json()["url"] == receiver.url
    response = await admin.patch(endpoint, json={"enabled": False})
    assert response.json()["enabled"] is False
    assert response.json()["disabledReason"] is None, "an admin's choice has no reason"
    assert response.json()["disabledAt"] is not None

    assert (await admin.delete(endpoint)).status_code == 204
    assert (await admin.get(endpoint)).status_code == 404
    async with runtime.sessions() as session:
        left = await session.scalar(select(func.count()).select_from(WebhookSubscription))
    assert left == 0


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[fe80::1]/hook",
        "https://user:pw@example.com/hook",
        "https://example.com/hook#part",
        "not a url",
    ],
)
async def test_a_url_that_cannot_or_may_not_be_reached_is_a_422_naming_url(
    admin: httpx.AsyncClient, receiver: Receiver, url: str
) -> None:
    response = await admin.post("/api/v1/webhooks", json={"url": url})
    assert response.status_code == 422, response.text
    assert [d["field"] for d in response.json()["error"]["details"]] == ["url"]

    created = await add_endpoint(admin, receiver)
    response = await admin.patch(f"/api/v1/webhooks/{created['id']}", json={"url": url})
    assert response.status_code == 422, response.text
    assert [d["field"] for d in response.json()["error"]["details"]] == ["url"]
    kept = await admin.get(f"/api/v1/webhooks/{created['id']}")
    assert kept.json()["url"] == receiver.url


async def test_a_name_that_resolves_to_a_denied_address_is_refused(settings: Settings) -> None:
    """The deny list (POSTROOM_EGRESS_DENY) is checked on the resolved address, not the text."""
    settings = settings.model_copy(update={"egress_deny": "169.254.0.0/16,127.0.0.0/8"})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://postroom.test", headers=basic(ADMIN)
        ) as admin:
            response = await admin.post("/api/v1/webhooks", json={"url": "http://localhost:9/hook"})
    assert response.status_code == 422, response.text
    assert [d["field"] for d in response.json()["error"]["details"]] == ["url"]
    assert "POSTROOM_EGRESS_DENY" in response.json()["error"]["message"]


async def test_bad_event_types_and_unknown_ids(
    admin: httpx.AsyncClient, receiver: Receiver
) -> None:
    response = await admin.post(
        "/api/v1/webhooks", json={"url": receiver.url, "eventTypes": ["sent", "bounce"]}
    )
    assert response.status_code == 422
    assert [d["field"] for d in response.json()["error"]["details"]] == ["eventTypes[1]"]
    response = await admin.post("/api/v1/webhooks", json={"url": receiver.url, "eventTypes": []})
    assert response.status_code == 422
    for path in ("", "/deliveries"):
        response = await admin.get(f"/api/v1/webhooks/{'0' * 32}{path}")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    assert (await admin.post("/api/v1/webhooks/nope/test")).status_code == 404


async def test_senders_may_not_manage_webhooks(
    sender: httpx.AsyncClient, anon: httpx.AsyncClient, receiver: Receiver
) -> None:
    assert (await sender.post("/api/v1/webhooks", json={"url": receiver.url})).status_code == 403
    assert (await sender.get("/api/v1/webhooks")).status_code == 403
    assert (await anon.get("/api/v1/webhooks")).status_code == 401
