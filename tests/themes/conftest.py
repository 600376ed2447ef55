from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.delivery.dispatcher import Dispatcher
from app.wiring import Core

RESET = {
    "name": "password_reset",
    "description": "Sent when a user asks to reset a password",
    "subject": "Reset your password, {{ name }}",
    "text": "Hello {{ name }},\nreset it here: {{ link }}",
    "html": '<p>Hello {{ name }},</p><p><a href="{{ link }}">Reset it</a></p>',
}

BRAND = {
    "name": "brand",
    "description": "Acme's look",
    "html": (
        '<html><body style="color: {{ colors.primary }}"><img src="{{ logoUrl }}" alt="Acme">'
        '<div class="content">{{ content }}</div><footer>{{ footer }}</footer></body></html>'
    ),
    "text": "{{ content }}\n\n{{ footer }}",
    "logoUrl": "https://example.com/logo.png",
    "colors": {"primary": "#336699", "background": "rgb(250, 250, 250)"},
    "footer": "Acme Inc. <unsubscribe>",
}


@pytest.fixture
def dispatcher(runtime: Core) -> Dispatcher:
    return Dispatcher(
        runtime.sessions, runtime.settings, runtime.transports, runtime.metrics, runtime.ledger
    )


async def create(admin: httpx.AsyncClient, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await admin.post(f"/api/v1/{kind}", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created
