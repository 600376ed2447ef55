"""Realistic profile bodies of every type, and a look at what a profile really stores."""

from __future__ import annotations

import copy
from typing import Any

import httpx
from pydantic import BaseModel

from app.servers import service
from app.wiring import Core

SECRETS: dict[str, list[str]] = {
    "smtp": ["pass"],
    "mandrill": ["apiKey"],
    "ses": ["secretAccessKey"],
    "sendgrid": ["apiKey"],
    "mailgun": ["apiKey"],
    "msgraph": ["clientSecret"],
}
"""The secret settings of each type's body below."""

BODIES: dict[str, dict[str, Any]] = {
    "smtp": {
        "type": "smtp",
        "description": "Office 365 relay for reports",
        "senderEmail": "reports@contoso.example",
        "senderName": "Contoso Reports",
        "signature": "-- \nContoso BI",
        "maxRecipientsPerMessage": 40,
        "settings": {
            "host": "smtp.office365.example",
            "port": 587,
            "requireTLS": True,
            "user": "reports@contoso.example",
            "pass": "Smtp-Pa55word!#&",
            "authMethod": "login",
            "name": "bi.contoso.example",
            "connectionTimeout": 10_000,
            "pool": True,
            "maxConnections": 3,
            "maxMessages": 50,
        },
    },
    "mandrill": {
        "type": "mandrill",
        "description": "Mailchimp transactional",
        "senderEmail": "noreply@contoso.example",
        "settings": {"apiKey": "md-Mandr1llKey0123456789"},
    },
    "ses": {
        "type": "ses",
        "description": "Amazon SES in Ireland",
        "senderEmail": "alerts@contoso.example",
        "maxRecipientsPerMessage": 50,
        "settings": {
            "accessKeyId": "AKIAIOSFODNN7EXAMPLE",
            "secretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSesSecretKey",
            "region": "eu-west-1",
            "configurationSetName": "bi-reports",
        },
    },
    "sendgrid": {
        "type": "sendgrid",
        "senderEmail": "news@contoso.example",
        "settings": {"apiKey": "SG.Sendgr1dKeyPart.AnotherPartOfTheKey"},
    },
    "mailgun": {
        "type": "mailgun",
        "senderEmail": "postmaster@mg.contoso.example",
        "settings": {"apiKey": "key-Mailgun0123456789abcdef", "domain": "mg.contoso.example"},
    },
    "msgraph": {
        "type": "msgraph",
        "senderEmail": "reports@contoso.example",
        "settings": {
            "tenantId": "contoso.onmicrosoft.com",
            "clientId": "6731de76-14a6-49ae-97bc-6eba6914391e",
            "clientSecret": "Gr~aph8Q~ClientSecretValue",
            "userId": "reports@contoso.example",
        },
    },
}


def body(type_: str, name: str, **changes: Any) -> dict[str, Any]:
    """A copy of the type's body named `name`, with top-level `changes`."""
    result = copy.deepcopy(BODIES[type_])
    result["name"] = name
    result.update(changes)
    return result


async def create(admin: httpx.AsyncClient, payload: dict[str, Any]) -> dict[str, Any]:
    response = await admin.post("/api/v1/servers", json=payload)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def stored_config(runtime: Core, name: str) -> BaseModel:
    """The profile's typed, decrypted settings, as the transport would get them."""
    async with runtime.sessions() as session:
        profile = await service.get_profile(session, name)
        return service.config_of(profile, runtime.box)


def secret(config: BaseModel, key: str) -> str | None:
    """A secret of a config by its camelCase key (None when not set)."""
    for name, info in type(config).model_fields.items():
        if (info.alias or name) == key:
            value = getattr(config, name)
            return None if value is None else str(value.get_secret_value())
    raise KeyError(key)


async def defaults(admin: httpx.AsyncClient) -> tuple[str | None, bool, list[str]]:
    """The list's `default`, `builtinDefault`, and the names whose item says isDefault."""
    listed = await admin.get("/api/v1/servers")
    assert listed.status_code == 200, listed.text
    data = listed.json()
    flagged = [item["name"] for item in data["items"] if item["isDefault"]]
    return data["default"], data["builtinDefault"], flagged
