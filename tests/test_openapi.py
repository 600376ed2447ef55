"""openapi/openapi.json is the app's document: regenerate it with `make openapi` when this fails."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from app import openapi_export

DOCUMENT = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"


def test_openapi_json_is_up_to_date() -> None:
    assert DOCUMENT.exists(), "openapi/openapi.json is missing: run `make openapi`"
    assert DOCUMENT.read_text() == openapi_export.render(), (
        "openapi/openapi.json is stale: run `make openapi` and commit the result"
    )


def test_the_document_covers_the_foundation() -> None:
    document = json.loads(openapi_export.render())
    paths = document["paths"]
    for path, methods in {
        "/api/v1/settings/email_server": {"get", "post"},
        "/api/branding": {"get", "post"},
        "/api/v1/servers": {"get", "post"},
        "/api/v1/servers/{name}": {"get", "put", "patch", "delete"},
        "/api/v1/servers/{name}/duplicate": {"post"},
        "/api/v1/users": {"get", "post"},
        "/api/v1/messages": {"get", "post"},
        "/healthz": {"get"},
        "/readyz": {"get"},
    }.items():
        assert methods <= set(paths[path]), path
    # PUT and PATCH take a whole profile / a merge patch, documented as the profile body
    schemas = document["components"]["schemas"]
    put = json.dumps(paths["/api/v1/servers/{name}"]["put"]["requestBody"])
    assert "#/components/schemas/SmtpProfile" in put
    assert {"SmtpProfile", "MandrillProfile", "SesProfile"} <= set(schemas)
    assert "passSet" in schemas["EmailServerOut"]["properties"]
    assert "pass" not in schemas["EmailServerOut"]["properties"]


# --- additionalProperties: false wherever the app refuses unknown fields --------------------------

OPEN_ON_PURPOSE = {
    "DuplicateBody.settings",  # the copy's secrets: their names depend on the profile's type
    "MessageIn.data",  # template data: any names
    "GroupRecipientIn.data",
    "RenderIn.data",
    "BatchIn.messages[]",  # each item is checked alone and answered in the batch's own result
    "POST /api/v1/hooks/{profile}/events",  # the provider's own request, checked by its parser
    "POST /api/v1/suppressions/import",  # a multipart form: only `file` is read
}
"""Object fields of request bodies that take any keys."""


def _forbidding_models() -> dict[str, type[BaseModel]]:
    import app.main  # noqa: F401 - every router and so every body model is imported

    found: dict[str, type[BaseModel]] = {}
    stack: list[type[BaseModel]] = [BaseModel]
    while stack:
        for model in stack.pop().__subclasses__():
            stack.append(model)
            if model.__module__.startswith("app.") and model.model_config.get("extra") == "forbid":
                found[model.__name__] = model
    return found


def test_every_model_that_forbids_extras_is_documented_closed() -> None:
    schemas = json.loads(DOCUMENT.read_text())["components"]["schemas"]
    documented = {name: m for name, m in _forbidding_models().items() if name in schemas}
    assert len(documented) >= 40, sorted(documented)
    open_ = [name for name in documented if schemas[name].get("additionalProperties") is not False]
    assert open_ == []


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _open_objects(
    document: dict[str, Any], schema: dict[str, Any], where: str, seen: set[str]
) -> list[str]:
    """Object schemas reachable from `schema` that accept any key with any value."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        if name in seen:
            return []
        seen.add(name)
        return _open_objects(document, _resolve(document, schema), name, seen)
    found = []
    is_object = schema.get("type") == "object" or "properties" in schema
    open_ = schema.get("additionalProperties", True) is True  # a typed map (headers) is fine
    if is_object and "oneOf" not in schema and open_ and where not in OPEN_ON_PURPOSE:
        found.append(where)
    for key, sub in schema.get("properties", {}).items():
        found += _open_objects(document, sub, f"{where}.{key}", seen)
    for keyword in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(keyword, []):
            found += _open_objects(document, sub, where, seen)
    for keyword in ("items", "additionalProperties"):
        if isinstance(schema.get(keyword), dict):
            found += _open_objects(document, schema[keyword], f"{where}[]", seen)
    return found


def test_no_request_body_accepts_fields_the_app_refuses() -> None:
    """PUT and the merge-patch PATCH bodies were open objects though a model forbidding extras
    validates them: a fuzzer's positive phase sent fields that were then refused with 422."""
    document = json.loads(DOCUMENT.read_text())
    open_ = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            for media in content.values():
                where = f"{method.upper()} {path}"
                open_ += _open_objects(document, media["schema"], where, set())
    assert open_ == []


@pytest.mark.anyio
async def test_the_served_document_is_the_file(anon: httpx.AsyncClient) -> None:
    response = await anon.get("/openapi.json")
    assert response.status_code == 200
    assert response.json() == json.loads(DOCUMENT.read_text())
