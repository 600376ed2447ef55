"""The API's OpenAPI document, as served at /openapi.json and kept in openapi/openapi.json.

Print it: `python -m app.openapi_export > openapi/openapi.json` (`make openapi`).

Every body model forbids unknown fields (CamelModel: extra="forbid"), and pydantic says so
(`additionalProperties: false`). A few bodies are read as plain objects and validated by such a
model after merging (PUT and the JSON merge patches of PATCH): FastAPI documents those as open
objects, so a client or a fuzzer reading the document would send fields that are then refused.
`tighten` closes them, and a dict whose keys must match a pattern (pydantic's patternProperties).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from app.servers.schemas import PROFILE_MODELS

if TYPE_CHECKING:
    from fastapi import FastAPI

Document = dict[str, Any]

PROFILES = [model.__name__ for model in PROFILE_MODELS]
"""The component schemas of the profile union."""
MERGE_PATCHES: dict[tuple[str, str], list[str]] = {
    ("/api/v1/servers/{name}", "patch"): PROFILES,
    ("/api/v1/themes/{name}", "patch"): ["ThemeIn"],
    ("/api/v1/templates/{name}", "patch"): ["TemplateIn"],
}
"""PATCH operations taking a JSON merge patch of these component schemas."""
MERGE_PATCH_FIELDS: dict[tuple[str, str], list[str]] = {
    ("ProbeBody", "changes"): PROFILES,
    ("TestBody", "changes"): PROFILES,
}
"""Fields of body models that hold a merge patch (the unsaved changes verify and test try)."""


def tighten(document: Document) -> Document:
    """Close what the app closes: idempotent, changes `document` in place and returns it."""
    schemas = document.get("components", {}).get("schemas", {})
    for (path, method), names in MERGE_PATCHES.items():
        operation = document.get("paths", {}).get(path, {}).get(method)
        if operation is not None and all(name in schemas for name in names):
            body = operation["requestBody"]["content"]["application/json"]
            body["schema"] = merge_patch_schema(schemas, names)
    for (model, field), names in MERGE_PATCH_FIELDS.items():
        properties = schemas.get(model, {}).get("properties", {})
        if field in properties and all(name in schemas for name in names):
            patch = merge_patch_schema(schemas, names)
            kept = {k: v for k, v in properties[field].items() if k in ("default", "description")}
            properties[field] = patch | kept
    _close(document)
    return document


def merge_patch_schema(schemas: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """A JSON merge patch (RFC 7396) of any of `names`: their fields, each optional and nullable
    (null resets it); a field whose schema differs between them (a profile's `settings`, whose
    fields depend on its type) takes any value here and is checked once merged."""
    properties: dict[str, Any] = {}
    differ: set[str] = set()
    for name in names:
        for key, schema in schemas[name].get("properties", {}).items():
            if key in properties and properties[key] != schema:
                differ.add(key)
            properties.setdefault(key, schema)
    return {
        "type": "object",
        "title": f"{names[0] if len(names) == 1 else 'Profile'}Patch",
        "properties": {
            key: {} if key in differ else _nullable(schema)
            for key, schema in sorted(properties.items())
        },
        "additionalProperties": False,
    }


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema`, or null: as it is when it already allows null (no anyOf nested in an anyOf)."""
    if {"type": "null"} in schema.get("anyOf", []):
        return schema
    return {"anyOf": [schema, {"type": "null"}]}


def _close(node: Any) -> None:
    """A dict with patternProperties refuses other keys; a oneOf of closed schemas is closed."""
    if isinstance(node, dict):
        if "patternProperties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        if "oneOf" in node and node.get("additionalProperties") is True:
            del node["additionalProperties"]
        for value in node.values():
            _close(value)
    elif isinstance(node, list):
        for item in node:
            _close(item)


def install(app: FastAPI) -> None:
    """Serve the tightened document at /openapi.json too."""
    generate: Callable[[], Document] = app.openapi

    def openapi() -> Document:
        return tighten(generate())

    app.openapi = openapi  # type: ignore[method-assign]
