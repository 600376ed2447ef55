"""One JSON error shape for every 4xx and 5xx; fields named by their camelCase path."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from pydantic import BaseModel, ValidationError, field_validator, model_validator

from app.config import Settings
from app.crypto import SecretBox
from app.errors import FieldsError, field_path, validation_details
from app.schemas import CamelModel
from app.servers.deps import PROFILES
from app.wiring import Core
from tests.conftest import ADMIN, basic
from tests.servers.helpers import body, create

pytestmark = pytest.mark.anyio

LIMIT = 4096
CAMEL_PATH = re.compile(r"^(body|[a-z][A-Za-z0-9]*(\.[a-z][A-Za-z0-9]*|\[\d+\])*)$")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """This module's app takes bodies of at most LIMIT bytes."""
    return settings.model_copy(update={"max_message_bytes": LIMIT})


def assert_shape(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    payload = response.json()
    assert set(payload) == {"error"}
    error: dict[str, Any] = payload["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["details"], list)
    return error


async def test_malformed_json_is_400(admin: httpx.AsyncClient) -> None:
    for path in (
        "/api/v1/servers",
        "/api/v1/settings/email_server",
        "/api/branding",
        "/api/v1/users",
    ):
        for content in (b"{", b'{"a": }', b"{'single': 1}", b"\xff\xfe", b"[1,"):
            response = await admin.post(
                path, content=content, headers={"content-type": "application/json"}
            )
            assert response.status_code == 400, (path, content)
            assert_shape(response, 400, "malformed_json")


async def test_a_missing_body_is_422(admin: httpx.AsyncClient) -> None:
    response = await admin.post("/api/v1/servers")
    error = assert_shape(response, 422, "validation_error")
    assert [d["field"] for d in error["details"]] == ["body"]


async def test_a_declared_body_over_the_limit_is_413(admin: httpx.AsyncClient) -> None:
    response = await admin.post(
        "/api/v1/servers",
        content=b'{"name": "' + b"x" * LIMIT + b'"}',
        headers={"content-type": "application/json"},
    )
    assert_shape(response, 413, "payload_too_large")
    assert (await admin.get("/api/v1/servers")).json()["items"] == []


async def test_a_streamed_body_over_the_limit_is_413(admin: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "'
        for _ in range(LIMIT // 1000 + 1):
            yield b"x" * 1000
        yield b'"}'

    response = await admin.post(
        "/api/v1/servers", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_shape(response, 413, "payload_too_large")


async def test_a_body_at_the_limit_is_read(admin: httpx.AsyncClient) -> None:
    payload = body("sendgrid", "fits")
    raw = httpx.Request("POST", "/", json=payload).content
    payload["description"] = "d" * min(1000, LIMIT - len(raw) - 20)
    response = await admin.post("/api/v1/servers", json=payload)
    assert response.status_code == 201, response.text


async def test_unknown_routes_are_404(admin: httpx.AsyncClient, anon: httpx.AsyncClient) -> None:
    for client in (admin, anon):
        error = assert_shape(await client.get("/api/v1/nothing-here"), 404, "not_found")
        assert error["details"] == []
    assert_shape(await admin.get("/api/v1/servers/ghost"), 404, "not_found")
    assert_shape(await admin.get("/api/v1/users/ghost"), 404, "not_found")


async def test_wrong_method_is_405(admin: httpx.AsyncClient) -> None:
    response = await admin.delete("/api/v1/settings/email_server")
    assert_shape(response, 405, "method_not_allowed")
    assert "GET" in response.headers["allow"]
    assert_shape(await admin.put("/api/branding", json={}), 405, "method_not_allowed")
    assert_shape(await admin.post("/healthz"), 405, "method_not_allowed")


async def test_auth_errors_share_the_shape(
    anon: httpx.AsyncClient, sender: httpx.AsyncClient
) -> None:
    assert_shape(await anon.get("/api/v1/servers"), 401, "unauthorized")
    assert_shape(await sender.get("/api/v1/servers"), 403, "forbidden")


async def test_conflicts_share_the_shape(admin: httpx.AsyncClient) -> None:
    await create(admin, body("sendgrid", "one"))
    assert_shape(await admin.post("/api/v1/servers", json=body("sendgrid", "one")), 409, "conflict")


CAMEL_CASES: list[tuple[str, dict[str, Any], set[str]]] = [
    (
        "/api/v1/servers",
        {
            "name": "x",
            "type": "smtp",
            "maxRecipientsPerMessage": 0,
            "senderEmail": "nope",
            "settings": {"oauth2": {"clientId": "c"}, "ignoreTLS": "x", "maxMessages": 0},
        },
        {
            "maxRecipientsPerMessage",
            "senderEmail",
            "settings.oauth2.tokenUrl",
            "settings.ignoreTLS",
            "settings.maxMessages",
        },
    ),
    (
        "/api/v1/servers",
        {"name": "x", "type": "ses", "settings": {"accessKeyId": "lower", "region": "x"}},
        {"settings.accessKeyId", "settings.region", "settings.secretAccessKey"},
    ),
    (
        "/api/v1/messages",
        {
            "to": ["ok@example.com", {"email": "bad"}],
            "replyTo": ["nope"],
            "attachments": [{"filename": "a.txt", "contentType": "bad type", "content": "QQ=="}],
            "text": "t",
        },
        {"to[1].email", "replyTo[0].email", "attachments[0].contentType"},
    ),
    ("/api/branding", {"emails": {"senderEmail": "x"}}, {"emails.senderEmail"}),
    ("/api/v1/users", {"name": "a b", "role": "x"}, {"name", "role"}),
]


async def test_validation_details_name_fields_by_camel_case_path(admin: httpx.AsyncClient) -> None:
    for path, payload, expected in CAMEL_CASES:
        error = assert_shape(await admin.post(path, json=payload), 422, "validation_error")
        named = {d["field"] for d in error["details"]}
        assert named == expected, path
        for detail in error["details"]:
            assert CAMEL_PATH.match(detail["field"]), detail
            assert detail["message"]
            assert "input" not in detail
        for field in expected:
            assert field in error["message"]


async def test_an_unexpected_error_is_a_500_in_the_shape(
    app_runtime: tuple[Any, Core], admin: httpx.AsyncClient
) -> None:
    app = app_runtime[0]
    await create(admin, body("sendgrid", "one"))
    changed = SecretBox([Fernet.generate_key().decode()])  # the keys were changed under us
    PROFILES.set(app, replace(PROFILES.of(app), box=changed))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://postroom.test", headers=basic(ADMIN)
    ) as client:
        response = await client.get("/api/v1/servers")
    error = assert_shape(response, 500, "internal_error")
    assert "SG." not in response.text
    assert error["details"] == []


async def test_text_no_database_can_keep_is_refused(
    admin: httpx.AsyncClient, anon: httpx.AsyncClient
) -> None:
    """A lone surrogate (valid JSON) or a NUL (PostgreSQL) is a 4xx, never a 500."""
    for path, raw, field in [
        ("/api/branding", rb'{"emails": {"senderName": "a\ud800b"}}', "emails.senderName"),
        (
            "/api/v1/servers",
            rb'{"name": "s", "type": "smtp", "settings": {"user": "\ud800"}}',
            "settings.user",
        ),
    ]:
        response = await admin.post(path, content=raw, headers={"content-type": "application/json"})
        error = assert_shape(response, 422, "validation_error")
        assert [d["field"] for d in error["details"]] == [field]
    for changes in ({"description": "a\x00b"}, {"signature": "-- \x00"}):
        response = await admin.post("/api/v1/servers", json={**body("sendgrid", "nul"), **changes})
        error = assert_shape(response, 422, "validation_error")
        assert [d["field"] for d in error["details"]] == list(changes)
    for path in ("/api/v1/servers/a%00b", "/api/v1/users/a%00b"):
        assert_shape(await admin.get(path), 404, "not_found")
    assert_shape(await admin.delete("/api/v1/servers/a%00b"), 404, "not_found")
    nul_user = await anon.get("/api/v1/servers", headers=basic(("ad\x00min", ADMIN[1])))
    assert_shape(nul_user, 401, "unauthorized")
    assert (await admin.get("/api/v1/servers")).json()["items"] == []
    assert (await admin.get("/api/branding")).json()["emails"]["senderName"] is None


class Pair(CamelModel):
    low: int = 0
    high: int = 0

    @field_validator("high")
    @classmethod
    def _order(cls, value: int, info: Any) -> int:
        if value < info.data.get("low", 0):
            raise FieldsError("low must not be above high", "low", "high")
        return value


class Whole(CamelModel):
    mode_name: str = "a"
    pair: Pair = Pair()

    @model_validator(mode="after")
    def _mode(self) -> Whole:
        if self.mode_name == "bad":
            raise FieldsError("bad mode", "modeName")
        return self


def details_of(model: type[BaseModel], data: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return [d["field"] for d in validation_details(caught.value.errors())]


def test_fields_error_names_every_field_it_lists() -> None:
    assert details_of(Whole, {"pair": {"low": 5, "high": 1}}) == ["pair.low", "pair.high"]
    assert details_of(Whole, {"modeName": "bad"}) == ["modeName"]
    assert details_of(Pair, {"low": 5, "high": 1}) == ["low", "high"]


def test_field_path() -> None:
    assert field_path(("body", "settings", "port")) == "settings.port"
    assert field_path(("body", "to", 0, "email")) == "to[0].email"
    assert field_path(("query", "limit")) == "limit"
    assert field_path(()) == ""
