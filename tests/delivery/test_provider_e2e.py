"""POST /messages naming an API profile -> outbox -> dispatcher -> the provider (respx, the exact
contracts of provider-apis.md) for Amazon SES, Mailgun and Microsoft Graph: the request on the
wire, and the record the API then shows; one documented temporary and one permanent refusal each.
(SendGrid and Mandrill go the same way in tests/reliability/test_http_faults.py.)
"""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import json
import re
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
import respx

from app.delivery.dispatcher import Dispatcher
from app.wiring import Core
from tests.delivery.conftest import end_throttles, make_due, record, send
from tests.servers.helpers import BODIES, body, create

pytestmark = pytest.mark.anyio

ANN, BOB, HIDDEN = "ann@example.com", "bob@example.com", "hidden@example.com"

SES_URL = "https://email.eu-west-1.amazonaws.com/v2/email/outbound-emails"
SES_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/\d{8}/eu-west-1/ses/aws4_request, "
    r"SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date, "
    r"Signature=[0-9a-f]{64}"
)
MAILGUN_URL = "https://api.mailgun.net/v3/mg.contoso.example/messages.mime"
GRAPH_TOKEN_URL = "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
GRAPH_SEND_URL = "https://graph.microsoft.com/v1.0/users/reports@contoso.example/sendMail"


def mime(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def when(value: str | None) -> datetime:
    assert value is not None
    return datetime.fromisoformat(value)


async def queue(admin: httpx.AsyncClient, sender: httpx.AsyncClient, type_: str) -> str:
    """Save the type's realistic profile under its type's name and queue one message through it:
    To ann, Cc bob, Bcc hidden."""
    await create(admin, body(type_, type_))
    return await send(
        sender,
        server=type_,
        to=[ANN],
        cc=[BOB],
        bcc=[HIDDEN],
        subject="Quarterly figures",
        text="The figures are attached.",
    )


def assert_sent(saved: dict[str, Any], server: str, provider_id: str | None, code: int) -> None:
    assert saved["status"] == "sent"
    assert saved["sentAt"] is not None
    assert saved["lastError"] is None
    assert saved["server"] == server
    assert {r["email"]: r["status"] for r in saved["recipients"]} == {
        ANN: "sent",
        BOB: "sent",
        HIDDEN: "sent",
    }
    attempt = saved["attemptLog"][-1]
    assert (attempt["server"], attempt["outcome"]) == (server, "sent")
    assert attempt["providerId"] == provider_id
    assert attempt["replyCode"] == code
    assert attempt["errorCode"] is None
    assert attempt["recipients"] == 3


def assert_deferred(saved: dict[str, Any], code: int, reply: str, *, at_least: float) -> None:
    """Still queued, its next attempt at least `at_least` seconds after this one."""
    assert saved["status"] == "queued"
    assert saved["attempts"] == 1
    [attempt] = saved["attemptLog"]
    assert attempt["outcome"] == "deferred"
    assert attempt["replyCode"] == code
    assert reply in attempt["reply"]
    assert attempt["providerId"] is None
    assert {r["status"] for r in saved["recipients"]} == {"deferred"}
    wait = when(saved["nextAttemptAt"]) - when(attempt["startedAt"])
    assert wait >= timedelta(seconds=at_least)
    assert saved["lastError"]


def assert_failed(saved: dict[str, Any], code: int, reply: str) -> None:
    assert saved["status"] == "failed"
    assert saved["sentAt"] is None
    assert saved["attempts"] == 1
    [attempt] = saved["attemptLog"]
    assert attempt["outcome"] == "failed"
    assert attempt["replyCode"] == code
    assert reply in attempt["reply"]
    assert {r["status"] for r in saved["recipients"]} == {"failed"}
    assert {r["code"] for r in saved["recipients"]} == {code}


# --- Amazon SES v2 SendEmail ----------------------------------------------------------------------


async def test_ses_sends_the_raw_mime_signed_and_records_the_message_id(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    respx_mock: respx.MockRouter,
) -> None:
    route = respx_mock.post(SES_URL).respond(
        200,
        headers={"x-amzn-RequestId": "req-1"},
        json={"MessageId": "0102018c-ses-e2e-000000"},
    )
    message_id = await queue(admin, sender, "ses")

    await dispatcher.drain()

    request = route.calls.last.request
    assert route.call_count == 1
    assert (request.method, str(request.url)) == ("POST", SES_URL)
    assert request.headers["content-type"] == "application/json"
    assert SES_AUTHORIZATION.fullmatch(request.headers["authorization"])
    assert request.headers["x-amz-content-sha256"] == hashlib.sha256(request.content).hexdigest()
    sent = json.loads(request.content)
    raw = base64.b64decode(sent.pop("Content")["Raw"]["Data"], validate=True)
    assert sent == {
        "FromEmailAddress": BODIES["ses"]["senderEmail"],
        "Destination": {"ToAddresses": [ANN, BOB, HIDDEN]},
        "ConfigurationSetName": "bi-reports",
    }
    mail = mime(raw)
    assert (mail["From"], mail["To"], mail["Cc"]) == (BODIES["ses"]["senderEmail"], ANN, BOB)
    assert mail["Bcc"] is None
    assert HIDDEN.encode() not in raw
    assert mail["Subject"] == "Quarterly figures"
    saved = await record(sender, message_id)
    assert mail["Message-ID"] == saved["messageId"]
    assert_sent(saved, "ses", "0102018c-ses-e2e-000000", 200)
    assert saved["attempts"] == 1


async def test_ses_throttling_is_retried_and_then_sent(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    respx_mock: respx.MockRouter,
) -> None:
    route = respx_mock.post(SES_URL).mock(
        side_effect=[
            httpx.Response(
                429,
                headers={"x-amzn-ErrorType": "TooManyRequestsException"},
                json={"message": "Maximum sending rate exceeded."},
            ),
            httpx.Response(200, json={"MessageId": "0102018c-second-try"}),
        ]
    )
    message_id = await queue(admin, sender, "ses")

    await dispatcher.drain()

    saved = await record(sender, message_id)
    base = runtime.settings.retry_base
    assert_deferred(saved, 429, "TooManyRequestsException", at_least=base * 0.75)
    assert saved["attemptLog"][0]["errorCode"] == "EAPI"
    assert when(saved["nextAttemptAt"]) - when(saved["attemptLog"][0]["startedAt"]) <= timedelta(
        seconds=base * 1.25 + 1
    ), "SES sends no Retry-After: the backoff decides"

    await dispatcher.drain()
    assert route.call_count == 1, "not due yet"
    await make_due(runtime)
    await dispatcher.drain()
    assert route.call_count == 1, "the profile waits a minute (Throttled.DEFAULT_WAIT)"
    assert (await record(sender, message_id))["attempts"] == 1, "held back, not an attempt"
    await end_throttles(runtime)
    await make_due(runtime)
    await dispatcher.drain()

    saved = await record(sender, message_id)
    assert_sent(saved, "ses", "0102018c-second-try", 200)
    assert [a["outcome"] for a in saved["attemptLog"]] == ["deferred", "sent"]
    first, second = (route.calls[i].request for i in (0, 1))
    assert json.loads(first.content) == json.loads(second.content), "the same message again"


async def test_ses_a_rejected_message_fails_at_once(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    respx_mock: respx.MockRouter,
) -> None:
    route = respx_mock.post(SES_URL).respond(
        400,
        headers={"x-amzn-ErrorType": "MessageRejected:http://internal.amazon.com/coral/x/"},
        json={"message": "Email address is not verified. The following identities failed"},
    )
    message_id = await queue(admin, sender, "ses")

    await dispatcher.drain()
    await make_due(runtime)
    await dispatcher.drain()

    saved = await record(sender, message_id)
    assert_failed(saved, 400, "MessageRejected: Email address is not verified.")
    assert "verify the sender" in saved["attemptLog"][0]["error"]
    assert route.call_count == 1, "never retried"


# --- Mailgun messages.mime ---------------------------------------------------------------------


def form_data(request: httpx.Request) -> list[tuple[str, dict[str, str], bytes]]:
    """(field name, part headers, exact value) of a multipart/form-data body, in order."""
    content_type = request.headers["content-type"]
    assert content_type.startswith("multipart/form-data; boundary=")
    boundary = b"--" + content_type.split("boundary=", 1)[1].encode()
    chunks = request.content.split(boundary)
    assert chunks[0] == b""
    assert chunks[-1] == b"--\r\n"
    fields = []
    for chunk in chunks[1:-1]:
        assert chunk.startswith(b"\r\n")
        assert chunk.endswith(b"\r\n")
        head, _, value = chunk[2:-2].partition(b"\r\n\r\n")
        headers = dict(
            (name.strip().lower(), text.strip())
            for name, _, text in (line.decode().partition(":") for line in head.split(b"\r\n"))
        )
        found = re.search(r'; name="([^"]+)"', headers["content-disposition"])
        assert found is not None
        fields.append((found[1], headers, value))
    return fields


async def test_mailgun_posts_the_mime_with_one_to_per_recipient(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    respx_mock: respx.MockRouter,
) -> None:
    route = respx_mock.post(MAILGUN_URL).respond(
        200, json={"id": "<20240101000000.1.E2E@mg.contoso.example>", "message": "Queued."}
    )
    message_id = await queue(admin, sender, "mailgun")

    await dispatcher.drain()

    request = route.calls.last.request
    assert route.call_count == 1
    assert (request.method, str(request.url)) == ("POST", MAILGUN_URL)
    key = BODIES["mailgun"]["settings"]["apiKey"]
    assert (
        request.headers["authorization"]
        == "Basic " + base64.b64encode(f"api:{key}".encode()).decode()
    )
    fields = form_data(request)
    assert [(name, value) for name, _, value in fields if name == "to"] == [
        ("to", ANN.encode()),
        ("to", BOB.encode()),
        ("to", HIDDEN.encode()),
    ]
    assert [name for name, _, _ in fields] == ["to", "to", "to", "message"]
    _, headers, raw = fields[-1]
    assert headers["content-disposition"] == 'form-data; name="message"; filename="message.mime"'
    assert headers["content-type"] == "message/rfc822"
    mail = mime(raw)
    assert (mail["To"], mail["Cc"], mail["Bcc"]) == (ANN, BOB, None)
    assert HIDDEN.encode() not in raw
    assert mail["Subject"] == "Quarterly figures"
    saved = await record(sender, message_id)
    assert mail["Message-ID"] == saved["messageId"]
    assert_sent(saved, "mailgun", "<20240101000000.1.E2E@mg.contoso.example>", 200)


async def test_mailgun_rate_limit_honours_retry_after(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    respx_mock: respx.MockRouter,
) -> None:
    respx_mock.post(MAILGUN_URL).respond(
        429, headers={"Retry-After": "300"}, json={"message": "Too many requests"}
    )
    message_id = await queue(admin, sender, "mailgun")

    await dispatcher.drain()

    saved = await record(sender, message_id)
    assert runtime.settings.retry_base * 1.25 < 300, "longer than any backoff of a 1st attempt"
    assert_deferred(saved, 429, "Too many requests", at_least=300)


async def test_mailgun_a_bad_parameter_fails_at_once(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    respx_mock: respx.MockRouter,
) -> None:
    route = respx_mock.post(MAILGUN_URL).respond(
        400, json={"message": "'to' parameter is not a valid address. please check documentation"}
    )
    message_id = await queue(admin, sender, "mailgun")

    await dispatcher.drain()
    await make_due(runtime)
    await dispatcher.drain()

    saved = await record(sender, message_id)
    assert_failed(saved, 400, "'to' parameter is not a valid address")
    assert route.call_count == 1


# --- Microsoft Graph sendMail --------------------------------------------------------------------


def graph_token(respx_mock: respx.MockRouter) -> respx.Route:
    return respx_mock.post(GRAPH_TOKEN_URL).respond(
        200, json={"token_type": "Bearer", "expires_in": 3599, "access_token": "graph-e2e-token"}
    )


def graph_error(status: int, code: str, message: str, **headers: str) -> httpx.Response:
    inner = {"date": "2024-01-01T00:00:00", "request-id": "r-1", "client-request-id": "c-1"}
    error = {"error": {"code": code, "message": message, "innerError": inner}}
    return httpx.Response(status, headers=headers, json=error)


async def test_graph_fetches_a_token_and_posts_base64_mime_with_bcc(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    respx_mock: respx.MockRouter,
) -> None:
    token = graph_token(respx_mock)
    route = respx_mock.post(GRAPH_SEND_URL).respond(202, headers={"request-id": "graph-req-1"})
    message_id = await queue(admin, sender, "msgraph")

    await dispatcher.drain()

    settings = BODIES["msgraph"]["settings"]
    assert token.call_count == 1
    assert dict(httpx.QueryParams(token.calls.last.request.content.decode())) == {
        "grant_type": "client_credentials",
        "client_id": settings["clientId"],
        "client_secret": settings["clientSecret"],
        "scope": "https://graph.microsoft.com/.default",
    }
    request = route.calls.last.request
    assert route.call_count == 1
    assert (request.method, str(request.url)) == ("POST", GRAPH_SEND_URL)
    assert request.headers["authorization"] == "Bearer graph-e2e-token"
    assert request.headers["content-type"] == "text/plain"
    mail = mime(base64.b64decode(request.content, validate=True))
    assert (mail["To"], mail["Cc"], mail["Bcc"]) == (ANN, BOB, HIDDEN), "Graph reads the headers"
    assert mail["From"] == "reports@contoso.example"
    assert mail["Subject"] == "Quarterly figures"
    saved = await record(sender, message_id)
    assert mail["Message-ID"] == saved["messageId"]
    assert_sent(saved, "msgraph", None, 202)  # Graph answers 202 with no message id


async def test_graph_unavailable_honours_retry_after(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    respx_mock: respx.MockRouter,
) -> None:
    graph_token(respx_mock)
    respx_mock.post(GRAPH_SEND_URL).mock(
        return_value=graph_error(
            503, "serviceNotAvailable", "Service unavailable", **{"Retry-After": "240"}
        )
    )
    message_id = await queue(admin, sender, "msgraph")

    await dispatcher.drain()

    saved = await record(sender, message_id)
    assert_deferred(saved, 503, "serviceNotAvailable: Service unavailable", at_least=240)
    assert saved["attemptLog"][0]["errorCode"] == "EAPI"


async def test_graph_invalid_recipients_fail_at_once(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    respx_mock: respx.MockRouter,
) -> None:
    graph_token(respx_mock)
    route = respx_mock.post(GRAPH_SEND_URL).mock(
        return_value=graph_error(400, "ErrorInvalidRecipients", "At least one recipient is bad.")
    )
    message_id = await queue(admin, sender, "msgraph")

    await dispatcher.drain()
    await make_due(runtime)
    await dispatcher.drain()

    saved = await record(sender, message_id)
    assert_failed(saved, 400, "ErrorInvalidRecipients: At least one recipient is bad.")
    assert route.call_count == 1
