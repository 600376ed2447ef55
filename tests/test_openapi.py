"""openapi/openapi.json is the app's document: regenerate it with `make openapi` when this fails."""

from __future__ import annotations

import json
from pathlib import Path

from app import openapi

DOCUMENT = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"


def test_openapi_json_is_up_to_date() -> None:
    assert DOCUMENT.exists(), "openapi/openapi.json is missing: run `make openapi`"
    assert DOCUMENT.read_text() == openapi.render(), (
        "openapi/openapi.json is stale: run `make openapi` and commit the result"
    )


def test_the_document_covers_the_foundation() -> None:
    document = json.loads(openapi.render())
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
