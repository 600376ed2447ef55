"""Print the API's OpenAPI document: `python -m app.openapi > openapi/openapi.json`."""

from __future__ import annotations

import json
from typing import Any

from app.config import Settings
from app.main import create_app


def document() -> dict[str, Any]:
    return create_app(Settings(_env_file=None)).openapi()


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(render(), end="")  # noqa: T201
