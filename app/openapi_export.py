"""Prints the API's OpenAPI document: `python -m app.openapi_export > openapi/openapi.json`
(`make openapi`). An entry point of its own: it builds the whole app (app.openapi only tightens
the document the app serves)."""

from __future__ import annotations

import json

from app.config import Settings
from app.main import create_app
from app.openapi import Document


def document() -> Document:
    return create_app(Settings(_env_file=None)).openapi()


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(render(), end="")  # noqa: T201
