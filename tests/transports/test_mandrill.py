"""Mandrill send-raw and users/ping2 against respx, fed the answers of provider-apis.md §1."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace

import httpx
import pytest
import respx

from app.transports import mandrill
from app.transports.base import Address
from app.transports.errors import (
    CredentialsError,
    PermanentError,
    TemporaryError,
    Throttled,
    TransportError,
    UnsupportedFeature,
)
from tests.transports._messages import context, outgoing

pytestmark = pytest.mark.anyio

KEY = "md-secret-key-123"
SEND_URL = "https://mandrillapp.com/api/1.0/messages/send-raw.json"
PING_URL = "https://mandrillapp.com/api/1.0/users/ping2.json"


@pytest.fixture
async def transport() -> AsyncIterator[mandrill.MandrillTransport]:
    config = mandrill.MandrillConfig.model_validate({"apiKey": KEY})
    async with httpx.AsyncClient() as http:
        yield mandrill.create("mandrill", config, context(http))


def error(status: int, code: int, name: str, message: str) -> httpx.Response:
    body = {"status": "error", "code": code, "name": name, "message": message}
    return httpx.Response(status, json=body)


async def test_send_posts_the_raw_mime_with_the_envelope(
    transport: mandrill.MandrillTransport, respx_mock: respx.MockRouter
) -> None:
    message = outgoing(
        cc=(Address("cc@example.com"),), bcc=(Address("hidden@example.com", "Hidden"),)
    )
    route = respx_mock.post(SEND_URL).respond(
        200,
        json=[
            {"email": "to@example.com", "status": "sent", "_id": "id-1", "reject_reason": None},
            {"email": "cc@example.com", "status": "sent", "_id": "id-2", "reject_reason": None},
            {"email": "hidden@example.com", "status": "sent", "_id": "id-3"},
        ],
    )

    result = await transport.send(message)

    request = route.calls.last.request
    assert request.method == "POST"
    assert request.url == SEND_URL
    assert request.headers["content-type"] == "application/json"
    assert "authorization" not in request.headers
    assert json.loads(request.content) == {
        "key": KEY,
        "raw_message": message.mime.decode(),
        "from_email": "sender@example.com",
        "to": ["to@example.com", "cc@example.com", "hidden@example.com"],
    }
    assert b"hidden@example.com" not in message.mime
    assert {r: s.status for r, s in result.recipients.items()} == {
        "to@example.com": "sent",
        "cc@example.com": "sent",
        "hidden@example.com": "sent",
    }
    assert result.provider_id == "id-1"
    assert result.extra == {"ids": "id-1,id-2,id-3"}


async def test_each_recipient_gets_its_own_status(
    transport: mandrill.MandrillTransport, respx_mock: respx.MockRouter
) -> None:
    rcpts = ("a@example.com", "b@example.com", "c@example.com", "d@example.com", "e@example.com")
    message = outgoing(to=tuple(Address(r) for r in rcpts))
    respx_mock.post(SEND_URL).respond(
        200,
        json=[
            {"email": "a@example.com", "status": "sent", "_id": "1", "reject_reason": None},
            {
                "email": "b@example.com",
                "status": "rejected",
                "_id": "2",
                "reject_reason": "hard-bounce",
            },
            {
                "email": "c@example.com",
                "status": "queued",
                "_id": "3",
                "queued_reason": "attachments",
            },
            {"email": "d@example.com", "status": "scheduled", "_id": "4"},
            {"email": "e@example.com", "status": "invalid", "_id": "5", "reject_reason": "invalid"},
        ],
    )

    result = await transport.send(message)

    statuses = {r: (s.status, s.message) for r, s in result.recipients.items()}
    assert statuses == {
        "a@example.com": ("sent", ""),
        "b@example.com": ("rejected", "hard-bounce"),
        "c@example.com": ("queued", "attachments"),
        "d@example.com": ("queued", ""),
        "e@example.com": ("invalid", "invalid"),
    }
    assert {s.code for s in result.recipients.values()} == {200}


async def test_a_recipient_missing_from_the_answer_is_deferred(
    transport: mandrill.MandrillTransport, respx_mock: respx.MockRouter
) -> None:
    message = outgoing(to=(Address("Mixed.Case@Example.com"), Address("lost@example.com")))
    respx_mock.post(SEND_URL).respond(
        200, json=[{"email": "mixed.case@example.com", "status": "sent", "_id": "x"}]
    )

    result = await transport.send(message)

    assert result.recipients["Mixed.Case@Example.com"].status == "sent"
    assert result.recipients["lost@example.com"].status == "deferred"


@pytest.mark.parametrize(
    ("status", "code", "name", "expected"),
    [
        (500, -1, "Invalid_Key", CredentialsError),  # legacy: every error was a 500
        (401, 401, "Invalid_Key", CredentialsError),
        (500, -2, "ValidationError", PermanentError),
        (422, -2, "ValidationError", PermanentError),
        (402, 10, "PaymentRequired", PermanentError),
        (404, 12, "Unknown_Subaccount", PermanentError),
        (429, 429, "RequestLimitExceeded", Throttled),
        (500, -1, "GeneralError", TemporaryError),
        (503, -2, "ServiceUnavailable", TemporaryError),
        (400, -3, "Some_Future_Error", PermanentError),
        (500, -3, "Some_Future_Error", TemporaryError),
    ],
)
async def test_errors_are_classified_by_name(
    transport: mandrill.MandrillTransport,
    respx_mock: respx.MockRouter,
    status: int,
    code: int,
    name: str,
    expected: type[TransportError],
) -> None:
    respx_mock.post(SEND_URL).mock(return_value=error(status, code, name, "it went wrong"))

    with pytest.raises(expected) as caught:
        await transport.send(outgoing())

    assert type(caught.value) is expected
    assert caught.value.reply_code == status
    assert caught.value.reply == f"{name}: it went wrong"


async def test_invalid_key_names_the_field_to_fix(
    transport: mandrill.MandrillTransport, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(SEND_URL).mock(return_value=error(500, -1, "Invalid_Key", "Invalid API key"))

    with pytest.raises(CredentialsError) as caught:
        await transport.send(outgoing())

    assert caught.value.code == "EAUTH"
    assert "check apiKey" in str(caught.value)
    assert KEY not in str(caught.value)


async def test_validation_error_keeps_mandrills_explanation(
    transport: mandrill.MandrillTransport, respx_mock: respx.MockRouter
) -> None:
    text = (
        'Validation error: {"message":{"to":[{"email":'
        '"An email address must contain a single @"}]}}'
    )
    respx_mock.post(SEND_URL).mock(return_value=error(500, -2, "ValidationError", text))

    with pytest.raises(PermanentError, match="must contain a single @"):
        await transport.send(outgoing())


async def test_an_answer_that_is_not_the_array_is_ambiguous(
    transport: mandrill.MandrillTransport, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(SEND_URL).respond(200, text="<html>maintenance</html>")

    with pytest.raises(TemporaryError) as caught:
        await transport.send(outgoing())

    assert caught.value.code == "EPROTOCOL"
    assert caught.value.ambiguous


async def test_mime_that_is_not_text_is_refused_before_any_request(
    transport: mandrill.MandrillTransport, respx_mock: respx.MockRouter
) -> None:
    route = respx_mock.post(SEND_URL)
    message = outgoing()
    binary = replace(message, mime=message.mime + b"\xff\xfe")

    with pytest.raises(UnsupportedFeature, match="UTF-8"):
        await transport.send(binary)

    assert not route.called


async def test_base_url_is_configurable(respx_mock: respx.MockRouter) -> None:
    config = mandrill.MandrillConfig.model_validate(
        {"apiKey": KEY, "baseUrl": "https://mandrillapp.com/api/1.3/"}
    )
    route = respx_mock.post("https://mandrillapp.com/api/1.3/messages/send-raw.json").respond(
        200, json=[{"email": "to@example.com", "status": "sent", "_id": "x"}]
    )
    async with httpx.AsyncClient() as http:
        result = await mandrill.create("m", config, context(http)).send(outgoing())

    assert route.called
    assert result.recipients["to@example.com"].status == "sent"


async def test_verify_pings_with_the_key(
    transport: mandrill.MandrillTransport, respx_mock: respx.MockRouter
) -> None:
    route = respx_mock.post(PING_URL).respond(200, json={"PING": "PONG!"})

    report = await transport.verify()

    assert json.loads(route.calls.last.request.content) == {"key": KEY}
    assert report.ok
    assert [step.name for step in report.steps] == ["credentials"]
    assert any("sender" in item for item in report.unchecked)


async def test_verify_reports_a_bad_key(
    transport: mandrill.MandrillTransport, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(PING_URL).mock(return_value=error(500, -1, "Invalid_Key", "Invalid API key"))

    report = await transport.verify()

    assert not report.ok
    assert report.error_code == "EAUTH"
    assert "check apiKey" in report.steps[0].detail


async def test_from_email_is_the_from_header_address_not_the_envelope_sender(
    transport: mandrill.MandrillTransport, respx_mock: respx.MockRouter
) -> None:
    route = respx_mock.post(SEND_URL).respond(
        200, json=[{"email": "to@example.com", "status": "sent", "_id": "x"}]
    )

    await transport.send(replace(outgoing(), envelope_from="bounces@example.com"))

    assert json.loads(route.calls.last.request.content)["from_email"] == "sender@example.com"
