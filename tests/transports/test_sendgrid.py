"""SendGrid mail/send and scopes against respx, fed the answers of provider-apis.md §3."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import respx

from app.transports import sendgrid
from app.transports.base import Address, Attachment, OutgoingMessage
from app.transports.errors import (
    CredentialsError,
    PermanentError,
    TemporaryError,
    TransportError,
    UnsupportedFeature,
)
from tests.transports._messages import MESSAGE_ID, context, outgoing

pytestmark = pytest.mark.anyio

KEY = "SG.secret-key.123"
SEND_URL = "https://api.sendgrid.com/v3/mail/send"
SCOPES_URL = "https://api.sendgrid.com/v3/scopes"


@pytest.fixture
async def transport() -> AsyncIterator[sendgrid.SendgridTransport]:
    config = sendgrid.SendgridConfig.model_validate({"apiKey": KEY})
    async with httpx.AsyncClient() as http:
        yield sendgrid.create("sendgrid", config, context(http))


@pytest.fixture
def accepted(respx_mock: respx.MockRouter) -> respx.Route:
    return respx_mock.post(SEND_URL).respond(202, headers={"X-Message-Id": "sg-id-1"})


def sent_json(route: respx.Route) -> dict[str, object]:
    body: dict[str, object] = json.loads(route.calls.last.request.content)
    return body


async def test_send_posts_the_message_as_json(
    transport: sendgrid.SendgridTransport, accepted: respx.Route
) -> None:
    message = outgoing(
        to=(Address("to@example.com", "To Person"), Address("two@example.com")),
        cc=(Address("cc@example.com", "Cc Person"),),
        bcc=(Address("hidden@example.com"),),
        reply_to=(Address("help@example.com", "Help"),),
        subject="Grüße",
        text="Hello",
        html="<p>Hello</p>",
        attachments=(Attachment("a.pdf", "application/pdf", b"%PDF-1.4"),),
        headers=(("X-Entity-Ref-ID", "123"),),
    )

    result = await transport.send(message)

    request = accepted.calls.last.request
    assert request.method == "POST"
    assert request.url == SEND_URL
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    assert sent_json(accepted) == {
        "personalizations": [
            {
                "to": [
                    {"email": "to@example.com", "name": "To Person"},
                    {"email": "two@example.com"},
                ],
                "cc": [{"email": "cc@example.com", "name": "Cc Person"}],
                "bcc": [{"email": "hidden@example.com"}],
            }
        ],
        "from": {"email": "sender@example.com", "name": "Sender Name"},
        "reply_to": {"email": "help@example.com", "name": "Help"},
        "subject": "Grüße",
        "content": [
            {"type": "text/plain", "value": "Hello"},
            {"type": "text/html", "value": "<p>Hello</p>"},
        ],
        "attachments": [
            {
                "content": base64.b64encode(b"%PDF-1.4").decode(),
                "filename": "a.pdf",
                "type": "application/pdf",
                "disposition": "attachment",
            }
        ],
        "headers": {"Message-ID": MESSAGE_ID, "X-Entity-Ref-ID": "123"},
    }
    assert result.provider_id == "sg-id-1"
    assert result.reply_code == 202
    assert {r: s.status for r, s in result.recipients.items()} == {
        "to@example.com": "sent",
        "two@example.com": "sent",
        "cc@example.com": "sent",
        "hidden@example.com": "sent",
    }


async def test_a_bcc_group_is_one_personalization_per_recipient(
    transport: sendgrid.SendgridTransport, accepted: respx.Route
) -> None:
    message = outgoing(
        to=(), bcc=(Address("a@example.com", "A"), Address("b@example.com")), undisclosed=True
    )

    await transport.send(message)

    assert sent_json(accepted)["personalizations"] == [
        {"to": [{"email": "a@example.com", "name": "A"}]},
        {"to": [{"email": "b@example.com"}]},
    ]


async def test_bcc_only_is_sent_privately_too(
    transport: sendgrid.SendgridTransport, accepted: respx.Route
) -> None:
    await transport.send(outgoing(to=(), bcc=(Address("a@example.com"), Address("b@example.com"))))

    assert sent_json(accepted)["personalizations"] == [
        {"to": [{"email": "a@example.com"}]},
        {"to": [{"email": "b@example.com"}]},
    ]


async def test_the_envelope_decides_who_gets_it(
    transport: sendgrid.SendgridTransport, accepted: respx.Route
) -> None:
    """An address listed twice goes once; an envelope-only recipient goes in Bcc."""
    message = outgoing(
        to=(Address("to@example.com"),),
        cc=(Address("TO@example.com"), Address("cc@example.com")),
        recipients=("to@example.com", "cc@example.com", "extra@example.com"),
    )

    await transport.send(message)

    assert sent_json(accepted)["personalizations"] == [
        {
            "to": [{"email": "to@example.com"}],
            "cc": [{"email": "cc@example.com"}],
            "bcc": [{"email": "extra@example.com"}],
        }
    ]


async def test_several_reply_to_and_html_only(
    transport: sendgrid.SendgridTransport, accepted: respx.Route
) -> None:
    message = outgoing(
        reply_to=(Address("a@example.com"), Address("b@example.com", "B")),
        text=None,
        html="<p>only html</p>",
    )

    await transport.send(message)

    body = sent_json(accepted)
    assert "reply_to" not in body
    assert body["reply_to_list"] == [
        {"email": "a@example.com"},
        {"email": "b@example.com", "name": "B"},
    ]
    assert body["content"] == [{"type": "text/html", "value": "<p>only html</p>"}]


@pytest.mark.parametrize(
    ("message", "feature"),
    [
        (outgoing(headers=(("X-SG-ID", "1"),)), "X-SG-ID header"),
        (outgoing(headers=(("DKIM-Signature", "v=1"),)), "DKIM-Signature header"),
        (outgoing(subject=""), "without a subject"),
        (outgoing(text=None, html=None), "without a text or HTML body"),
        (outgoing(to=(), cc=(Address("cc@example.com"),)), "Cc but no To"),
        (
            outgoing(
                to=(Address("done@example.com"), Address("retry@example.com")),
                recipients=("retry@example.com",),
            ),
            "done@example.com",
        ),
    ],
)
async def test_what_sendgrid_cannot_carry_raises(
    transport: sendgrid.SendgridTransport,
    respx_mock: respx.MockRouter,
    message: OutgoingMessage,
    feature: str,
) -> None:
    route = respx_mock.post(SEND_URL)

    with pytest.raises(UnsupportedFeature, match=feature):
        await transport.send(message)

    assert not route.called


async def test_rate_limit_reset_is_the_retry_delay(
    transport: sendgrid.SendgridTransport, respx_mock: respx.MockRouter
) -> None:
    reset = int(time.time()) + 30
    respx_mock.post(SEND_URL).respond(
        429,
        headers={
            "X-RateLimit-Limit": "600",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(reset),
        },
        json={"errors": [{"message": "too many requests", "field": None, "help": None}]},
    )

    with pytest.raises(TemporaryError) as caught:
        await transport.send(outgoing())

    assert caught.value.retry_after is not None
    assert 25 <= caught.value.retry_after <= 30


@pytest.mark.parametrize(
    ("status", "body", "expected", "reply"),
    [
        (
            400,
            {
                "errors": [
                    {
                        "message": "The content value must be a string at least one character"
                        " in length.",
                        "field": "content.0.value",
                        "help": None,
                    }
                ]
            },
            PermanentError,
            "content.0.value: The content value must be a string",
        ),
        (
            401,
            {"errors": [{"message": "authorization required", "field": None, "help": None}]},
            CredentialsError,
            "authorization required",
        ),
        (
            403,
            {
                "errors": [
                    {
                        "message": "The from address does not match a verified Sender Identity.",
                        "field": "from",
                    }
                ]
            },
            CredentialsError,
            "from: The from address",
        ),
        (
            413,
            {"errors": [{"message": "content too large", "field": None}]},
            PermanentError,
            "content too large",
        ),
        (
            500,
            {"errors": [{"message": "internal error", "field": None}]},
            TemporaryError,
            "internal error",
        ),
    ],
)
async def test_errors_keep_sendgrids_explanation(
    transport: sendgrid.SendgridTransport,
    respx_mock: respx.MockRouter,
    status: int,
    body: dict[str, object],
    expected: type[TransportError],
    reply: str,
) -> None:
    respx_mock.post(SEND_URL).respond(status, json=body)

    with pytest.raises(expected) as caught:
        await transport.send(outgoing())

    assert type(caught.value) is expected
    assert caught.value.reply is not None
    assert caught.value.reply.startswith(reply)
    if expected is CredentialsError:
        assert "apiKey" in str(caught.value)


async def test_verify_checks_the_mail_send_scope(
    transport: sendgrid.SendgridTransport, respx_mock: respx.MockRouter
) -> None:
    route = respx_mock.get(SCOPES_URL).respond(200, json={"scopes": ["mail.send", "alerts.read"]})

    report = await transport.verify()

    assert route.calls.last.request.headers["authorization"] == f"Bearer {KEY}"
    assert report.ok
    assert report.unchecked == ["whether the sender address is a verified sender"]


async def test_verify_fails_without_the_mail_send_scope(
    transport: sendgrid.SendgridTransport, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(SCOPES_URL).respond(200, json={"scopes": ["alerts.read"]})

    report = await transport.verify()

    assert not report.ok
    assert report.error_code == "EAUTH"
    assert "mail.send" in report.steps[0].detail


async def test_verify_fails_with_a_bad_key(
    transport: sendgrid.SendgridTransport, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(SCOPES_URL).respond(
        401, json={"errors": [{"message": "authorization required", "field": None}]}
    )

    report = await transport.verify()

    assert not report.ok
    assert "apiKey" in report.steps[0].detail
