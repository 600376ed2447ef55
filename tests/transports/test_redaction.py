"""A provider's error body is stored and shown with the profile's secrets redacted, cut to 1 KiB.

Each HTTP provider (and each OAuth2 token endpoint) answers with a 5 KiB body that echoes the
secret it was sent, raw and JSON-escaped, once across the 1 KiB mark: the error the transport
raises, the verify report and the per-recipient answers must not hold any of it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
import respx

from app.transports import registry
from app.transports.base import VerifyReport
from app.transports.errors import TransportError
from app.transports.oauth import TokenCache, TokenRequest
from tests.servers.helpers import BODIES, SECRETS
from tests.transports._messages import context, outgoing

pytestmark = pytest.mark.anyio

MAX_TEXT_BYTES = 1024
REDACTED = "[REDACTED]"

HOSTS = {
    "mandrill": "mandrillapp.com",
    "sendgrid": "api.sendgrid.com",
    "mailgun": "api.mailgun.net",
    "ses": "email.eu-west-1.amazonaws.com",
    "msgraph": "login.microsoftonline.com",
}
"""Where each type's requests go (Microsoft Graph: its token endpoint comes first)."""


def echo(secret: str) -> str:
    """5 KiB that echo `secret`: near the start, JSON-escaped, across byte 1024, and at the end."""
    head = f"invalid credentials: you sent {secret!r} as {json.dumps(secret)[1:-1]}; "
    pad = "x" * (MAX_TEXT_BYTES - 9 - len(head.encode()))
    body = f"{head}{pad} {secret} " + "y" * 4000 + f" {secret}"
    assert len(body.encode()) > 5000
    return body


def assert_scrubbed(text: str | None, secret: str) -> None:
    assert text is not None
    assert len(text.encode()) <= MAX_TEXT_BYTES, len(text.encode())
    assert secret[:8] not in text, text  # not even the part before the 1 KiB cut
    assert json.dumps(secret)[1:9] not in text
    assert REDACTED in text


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.mark.parametrize("type_", sorted(HOSTS))
async def test_a_send_error_never_shows_the_secret(
    type_: str, http: httpx.AsyncClient, respx_mock: respx.MockRouter
) -> None:
    secret = BODIES[type_]["settings"][SECRETS[type_][0]]
    respx_mock.route(host=HOSTS[type_]).respond(400, text=echo(secret))
    config = registry.TRANSPORTS[type_].config.model_validate(BODIES[type_]["settings"])
    transport = registry.build(type_, type_, config, context(http))

    with pytest.raises(TransportError) as caught:
        await transport.send(outgoing())

    assert caught.value.reply_code == 400
    assert_scrubbed(caught.value.reply, secret)
    assert secret not in str(caught.value)
    assert secret not in caught.value.message


@pytest.mark.parametrize("type_", sorted(HOSTS))
async def test_a_verify_report_never_shows_the_secret(
    type_: str, http: httpx.AsyncClient, respx_mock: respx.MockRouter
) -> None:
    secret = BODIES[type_]["settings"][SECRETS[type_][0]]
    respx_mock.route(host=HOSTS[type_]).respond(400, text=echo(secret))
    config = registry.TRANSPORTS[type_].config.model_validate(BODIES[type_]["settings"])
    transport = registry.build(type_, type_, config, context(http))

    report: VerifyReport = await transport.verify()

    assert not report.ok
    failed = [step for step in report.steps if not step.ok]
    assert failed
    for step in failed:
        assert_scrubbed(step.detail, secret)


async def test_a_graph_send_error_never_shows_the_client_secret(
    http: httpx.AsyncClient, respx_mock: respx.MockRouter
) -> None:
    secret = BODIES["msgraph"]["settings"]["clientSecret"]
    respx_mock.route(host="login.microsoftonline.com").respond(
        200, json={"access_token": "token", "expires_in": 3600}
    )
    respx_mock.route(host="graph.microsoft.com").respond(400, text=echo(secret))
    config = registry.TRANSPORTS["msgraph"].config.model_validate(BODIES["msgraph"]["settings"])
    transport = registry.build("msgraph", "graph", config, context(http))

    with pytest.raises(TransportError) as caught:
        await transport.send(outgoing())

    assert_scrubbed(caught.value.reply, secret)


@pytest.mark.parametrize("status", [400, 200])
async def test_a_token_endpoint_answer_never_shows_the_client_secret_or_refresh_token(
    status: int, http: httpx.AsyncClient, respx_mock: respx.MockRouter
) -> None:
    """XOAUTH2 for SMTP fetches its token through the same cache: refused (400) or an answer
    without a token (200), the error hides both secrets."""
    secret, refresh = "oauth-Client-Secret-1234", "1//refresh-Token-5678"
    respx_mock.post("https://oauth2.example/token").respond(
        status, text=echo(secret) + echo(refresh)
    )
    tokens = TokenCache(
        http,
        TokenRequest(
            token_url="https://oauth2.example/token",
            client_id="client",
            client_secret=secret,
            scope=None,
            refresh_token=refresh,
        ),
    )

    with pytest.raises(TransportError) as caught:
        await tokens.get()

    assert_scrubbed(caught.value.reply, secret)
    assert refresh[:8] not in str(caught.value)
