"""Mailgun messages.mime and domains against respx, fed the answers of provider-apis.md §4."""

from __future__ import annotations

from collections.abc import AsyncIterator
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP

import httpx
import pytest
import respx

from app.transports import mailgun
from app.transports.base import Address
from app.transports.errors import ConfigError, CredentialsError, PermanentError, TemporaryError
from tests.transports._messages import context, outgoing

pytestmark = pytest.mark.anyio

KEY = "key-123"
SEND_URL = "https://api.mailgun.net/v3/mg.example.com/messages.mime"
DOMAIN_URL = "https://api.mailgun.net/v3/domains/mg.example.com"
QUEUED = {"id": "<20240101000000.1.ABCDEF@mg.example.com>", "message": "Queued. Thank you."}


def config(**settings: str) -> mailgun.MailgunConfig:
    return mailgun.MailgunConfig.model_validate(
        {"apiKey": KEY, "domain": "mg.example.com"} | settings
    )


@pytest.fixture
async def transport() -> AsyncIterator[mailgun.MailgunTransport]:
    async with httpx.AsyncClient() as http:
        yield mailgun.create("mailgun", config(), context(http))


def form_parts(request: httpx.Request) -> list[Message]:
    """The multipart/form-data body, parsed back into its parts."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    parsed = BytesParser(policy=HTTP).parsebytes(head + request.content)
    return [part for part in parsed.iter_parts() if isinstance(part, Message)]


async def test_send_posts_the_mime_as_a_file_with_one_to_per_recipient(
    transport: mailgun.MailgunTransport, respx_mock: respx.MockRouter
) -> None:
    message = outgoing(cc=(Address("cc@example.com"),), bcc=(Address("hidden@example.com"),))
    route = respx_mock.post(SEND_URL).respond(200, json=QUEUED)

    result = await transport.send(message)

    request = route.calls.last.request
    assert request.method == "POST"
    assert request.url == SEND_URL
    assert request.headers["authorization"] == "Basic YXBpOmtleS0xMjM="
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    parts = form_parts(request)
    fields = [(p.get_param("name", header="content-disposition"), p) for p in parts]
    assert [(name, p.get_payload(decode=True)) for name, p in fields if name == "to"] == [
        ("to", b"to@example.com"),
        ("to", b"cc@example.com"),
        ("to", b"hidden@example.com"),
    ]
    files = [p for name, p in fields if name == "message"]
    assert len(files) == 1
    assert files[0].get_filename() == "message.mime"
    assert files[0].get_content_type() == "message/rfc822"
    assert request.content.count(message.mime) == 1
    assert b"hidden@example.com" not in message.mime
    assert result.provider_id == "<20240101000000.1.ABCDEF@mg.example.com>"
    assert {(r, s.status, s.message) for r, s in result.recipients.items()} == {
        ("to@example.com", "sent", "Queued. Thank you."),
        ("cc@example.com", "sent", "Queued. Thank you."),
        ("hidden@example.com", "sent", "Queued. Thank you."),
    }


@pytest.mark.parametrize(
    ("settings", "url"),
    [
        ({"region": "eu"}, "https://api.eu.mailgun.net/v3/mg.example.com/messages.mime"),
        (
            {"baseUrl": "http://127.0.0.1:8025/"},
            "http://127.0.0.1:8025/v3/mg.example.com/messages.mime",
        ),
    ],
)
async def test_region_and_base_url_pick_the_host(
    respx_mock: respx.MockRouter, settings: dict[str, str], url: str
) -> None:
    route = respx_mock.post(url).respond(200, json=QUEUED)
    async with httpx.AsyncClient() as http:
        await mailgun.create("mailgun", config(**settings), context(http)).send(outgoing())

    assert route.called


async def test_plain_text_forbidden_explains_the_region_trap(
    transport: mailgun.MailgunTransport, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(SEND_URL).respond(401, text="Forbidden")

    with pytest.raises(CredentialsError) as caught:
        await transport.send(outgoing())

    assert caught.value.reply == "Forbidden"
    assert "wrong apiKey, or an EU domain on the US region" in str(caught.value)
    assert KEY not in str(caught.value)


async def test_a_bad_parameter_is_permanent(
    transport: mailgun.MailgunTransport, respx_mock: respx.MockRouter
) -> None:
    text = "'to' parameter is not a valid address. please check documentation"
    respx_mock.post(SEND_URL).respond(400, json={"message": text})

    with pytest.raises(PermanentError) as caught:
        await transport.send(outgoing())

    assert type(caught.value) is PermanentError
    assert caught.value.reply == text


async def test_an_unknown_domain_blames_the_domain_field(
    transport: mailgun.MailgunTransport, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(SEND_URL).respond(404, json={"message": "Domain not found: mg.example.com"})

    with pytest.raises(ConfigError) as caught:
        await transport.send(outgoing())

    assert caught.value.field == "domain"
    assert caught.value.reply_code == 404


async def test_rate_limit_honours_retry_after(
    transport: mailgun.MailgunTransport, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(SEND_URL).respond(
        429, headers={"Retry-After": "12"}, json={"message": "slow down"}
    )

    with pytest.raises(TemporaryError) as caught:
        await transport.send(outgoing())

    assert caught.value.retry_after == 12.0


async def test_verify_reads_the_domain(
    transport: mailgun.MailgunTransport, respx_mock: respx.MockRouter
) -> None:
    route = respx_mock.get(DOMAIN_URL).respond(
        200,
        json={
            "domain": {"name": "mg.example.com", "state": "active"},
            "receiving_dns_records": [],
            "sending_dns_records": [],
        },
    )

    report = await transport.verify()

    assert route.calls.last.request.headers["authorization"] == "Basic YXBpOmtleS0xMjM="
    assert report.ok
    assert "mg.example.com is active" in report.steps[0].detail
    assert report.unchecked


async def test_verify_fails_for_an_unverified_domain(
    transport: mailgun.MailgunTransport, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(DOMAIN_URL).respond(
        200, json={"domain": {"name": "mg.example.com", "state": "unverified"}}
    )

    report = await transport.verify()

    assert not report.ok
    assert "unverified" in report.steps[0].detail


async def test_verify_fails_with_forbidden(
    transport: mailgun.MailgunTransport, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(DOMAIN_URL).respond(401, text="Forbidden")

    report = await transport.verify()

    assert not report.ok
    assert report.error_code == "EAUTH"
    assert "region" in report.steps[0].detail
