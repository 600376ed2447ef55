"""The send side checked against the providers' own published specs (issue 14, point 7).

The other transport tests answer with mocks written here; this one validates every request body
each HTTP transport really builds (captured with respx) against the provider's schema in
../shared/reference/provider-specs (see its README.md), and answers with the responses the specs
document, checking the transport maps them as the contract says: 2xx success, 401/403 refused
credentials, 429 and 5xx temporary, any other 4xx permanent.

The messages come from the service's own parts: the API model, the dispatcher's grouping and the
composer, so a BCC group reaches the transports as the dispatcher hands it over.

The documented corrections in that folder are applied: Mandrill's allOf merged (done in the file),
Mailgun's 401 `Forbidden` sent as plain text (the spec says a JSON string), SendGrid's required
subject/content kept (Postroom sends no templates), Graph checked on its MIME variant (the one
Postroom uses; the JSON schema covers only the JSON variant).
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import respx
from jsonschema import Draft202012Validator

from app.delivery.compose import compose
from app.delivery.grouping import plan
from app.delivery.stored import StoredMessage
from app.messages.schemas import MessageIn
from app.transports import mailgun, mandrill, msgraph, sendgrid, ses
from app.transports.base import Address, OutgoingMessage, Transport
from app.transports.errors import (
    CredentialsError,
    PermanentError,
    TemporaryError,
    UnsupportedFeature,
)
from app.transports.result import SendResult
from tests.transports._messages import context
from tests.transports._provider_specs import (
    KEY,
    MANDRILL,
    SENDGRID,
    SPECS,
    assert_valid,
    check_graph,
    check_mailgun,
    check_mandrill,
    check_sendgrid,
    check_ses,
    example_answers,
    fail_if,
    graph_refusals,
    mailgun_accepted,
    mailgun_refusals,
    mandrill_accepted,
    mandrill_answer_schema,
    sendgrid_accepted,
    ses_accepted,
    ses_refusals,
    spec,
    validator,
)

pytestmark = pytest.mark.anyio

MESSAGE_ID = "<contract.1@example.com>"
DATE = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def specs() -> Path:
    """The spec folder; missing, the tests skip, except in CI where they fail."""
    if (SPECS / "README.md").is_file():
        return SPECS
    if os.environ.get("CI") == "true":
        pytest.fail(f"provider specs not found at {SPECS}: check out ../shared next to the repo")
    pytest.skip(f"provider specs not found at {SPECS} (set POSTROOM_PROVIDER_SPECS)")


needs_specs = pytest.mark.usefixtures("specs")


# The messages: API bodies, planned and composed as the dispatcher does.

SENDER = {"email": "sender@example.com", "name": "Sender Name"}
CASES: dict[str, dict[str, Any]] = {
    "plain": {"to": ["to@example.com"], "subject": "Hello", "text": "Hello, world."},
    "html and text": {
        "to": [{"email": "to@example.com", "name": "To Person"}],
        "subject": "Hello",
        "text": "Hello, world.",
        "html": "<p>Hello, <b>world</b>.</p>",
    },
    "attachments": {
        "to": ["to@example.com"],
        "subject": "Your files",
        "text": "Two files attached.",
        "attachments": [
            {
                "filename": "report.pdf",
                "contentType": "application/pdf",
                "content": base64.b64encode(b"%PDF-1.4 fake").decode(),
            },
            {
                "filename": "Überweisung März €.txt",
                "contentType": "text/plain",
                "content": base64.b64encode("Grüße".encode()).decode(),
            },
        ],
    },
    "bcc group": {
        "recipients": [
            {"email": "one@example.com", "name": "One"},
            "two@example.com",
            {"email": "three@example.com", "name": "Trois Ü"},
        ],
        "subject": "Newsletter",
        "text": "Hello, group.",
    },
    "to, cc and bcc": {
        "to": ["to@example.com"],
        "cc": [{"email": "cc@example.com", "name": "Cc Person"}],
        "bcc": ["hidden@example.com"],
        "subject": "Hello",
        "text": "Hello.",
    },
    "custom headers": {
        "to": ["to@example.com"],
        "subject": "Hello",
        "text": "Hello.",
        "headers": {"X-Entity-Ref-ID": "abc-123", "X-Campaign": "Frühling 2024"},
    },
    "reply-to": {
        "to": ["to@example.com"],
        "replyTo": [{"email": "help@example.com", "name": "Help Desk"}],
        "subject": "Hello",
        "text": "Hello.",
    },
    "two reply-to": {
        "to": ["to@example.com"],
        "replyTo": ["help@example.com", {"email": "sales@example.com", "name": "Sales"}],
        "subject": "Hello",
        "text": "Hello.",
    },
    "non-ascii names and subject": {
        "from": {"email": "sender@example.com", "name": "Müller, Jörg (Café)"},
        "to": [{"email": "zoe@example.com", "name": "Zoë Ørsted"}],
        "cc": [{"email": "li@example.com", "name": "李小龍"}],
        "subject": "Grüße aus Köln 🎉, ça va?",
        "text": "Schöne Grüße.",
        "html": "<p>Schöne Grüße.</p>",
    },
    "internationalised domains": {
        "to": [{"email": "info@bücher.example", "name": "Bücher"}],
        "cc": ["post@münchen.example"],
        "replyTo": ["antwort@köln.example"],
        "subject": "Hello",
        "text": "Hello.",
    },
}


def outgoing(body: dict[str, Any]) -> list[OutgoingMessage]:
    """The transactions the dispatcher would hand a profile's transport for this API body."""
    message = MessageIn.model_validate({"from": SENDER} | body)
    payload = message.model_dump(
        mode="json", by_alias=True, exclude_none=True, exclude={"from_", "recipients"}
    )
    assert message.from_ is not None
    sender = Address(message.from_.email, message.from_.name or "")
    payload["from"] = {"email": sender.email, "name": sender.name}
    if message.recipients is not None:
        payload["group"] = [{"email": r.email, "name": r.name or ""} for r in message.recipients]
        pending = [r.email for r in message.recipients]
    else:
        visible = (*message.to, *message.cc, *message.bcc)
        pending = list(dict.fromkeys(a.email for a in visible))
    batches = plan(
        group=message.recipients is not None,
        group_size=len(pending),
        pending=pending,
        chunk=None,
        builtin=False,
    )
    return [
        compose(StoredMessage.of(payload), batch=b, message_id=MESSAGE_ID, date=DATE)
        for b in batches
    ]


def test_a_group_reaches_the_transports_as_one_undisclosed_batch() -> None:
    [message] = outgoing(CASES["bcc group"])
    assert message.content.undisclosed
    assert message.recipients == ("one@example.com", "two@example.com", "three@example.com")
    assert b"To: undisclosed-recipients:;" in message.mime


# The providers: how to build each transport, its URL, and its documented success answer.

TOKEN_URL = "https://login.microsoftonline.com/tenant-1/oauth2/v2.0/token"
TOKEN = {"token_type": "Bearer", "expires_in": 3599, "access_token": "eyJ0eXAi.e30.c2ln"}
"""graph-sendmail.md, "Token": the success answer."""


@dataclass(frozen=True)
class Provider:
    name: str
    url: str
    transport: Callable[[httpx.AsyncClient], Transport]
    accepted: Callable[[OutgoingMessage], httpx.Response]
    check: Callable[[httpx.Request, OutgoingMessage], None]
    documented: Callable[[], list[tuple[str, httpx.Response]]]
    """The refusals the provider's spec documents, labelled."""


PROVIDERS = {
    "mandrill": Provider(
        "mandrill",
        "https://mandrillapp.com/api/1.0/messages/send-raw.json",
        lambda http: mandrill.create(
            "mandrill", mandrill.MandrillConfig.model_validate({"apiKey": KEY}), context(http)
        ),
        mandrill_accepted,
        check_mandrill,
        lambda: example_answers(spec(MANDRILL)["x-postroom-responses"]["send-raw"]),
    ),
    "sendgrid": Provider(
        "sendgrid",
        "https://api.sendgrid.com/v3/mail/send",
        lambda http: sendgrid.create(
            "sendgrid", sendgrid.SendgridConfig.model_validate({"apiKey": KEY}), context(http)
        ),
        sendgrid_accepted,
        check_sendgrid,
        lambda: example_answers(spec(SENDGRID)["x-postroom-responses"]),
    ),
    "mailgun": Provider(
        "mailgun",
        "https://api.mailgun.net/v3/mg.example.com/messages.mime",
        lambda http: mailgun.create(
            "mailgun",
            mailgun.MailgunConfig.model_validate({"apiKey": KEY, "domain": "mg.example.com"}),
            context(http),
        ),
        mailgun_accepted,
        check_mailgun,
        mailgun_refusals,
    ),
    "ses": Provider(
        "ses",
        "https://email.eu-west-1.amazonaws.com/v2/email/outbound-emails",
        lambda http: ses.create(
            "ses",
            ses.SesConfig.model_validate(
                {"accessKeyId": "AKIDEXAMPLE00000", "secretAccessKey": KEY, "region": "eu-west-1"}
            ),
            context(http),
        ),
        ses_accepted,
        check_ses,
        ses_refusals,
    ),
    "msgraph": Provider(
        "msgraph",
        "https://graph.microsoft.com/v1.0/users/sender@example.com/sendMail",
        lambda http: msgraph.create(
            "msgraph",
            msgraph.MsgraphConfig.model_validate(
                {
                    "tenantId": "tenant-1",
                    "clientId": "client-1",
                    "clientSecret": KEY,
                    "userId": "sender@example.com",
                }
            ),
            context(http),
        ),
        lambda message: httpx.Response(202),
        check_graph,
        graph_refusals,
    ),
}


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def mock(respx_mock: respx.MockRouter, provider: Provider, answer: httpx.Response) -> respx.Route:
    if provider.name == "msgraph":
        respx_mock.post(TOKEN_URL).respond(200, json=TOKEN)
    return respx_mock.post(provider.url).mock(return_value=answer)


def test_every_schema_is_a_valid_draft_2020_12_schema(specs: Path) -> None:
    names = sorted(path.name for path in specs.glob("*.schema.json"))
    assert names == [
        "graph-sendmail.schema.json",
        "mandrill-send-raw.schema.json",
        "sendgrid-mail-send.schema.json",
        "ses-v2-send-email.schema.json",
    ]
    for name in names:
        Draft202012Validator.check_schema(spec(name))


@needs_specs
def test_an_invalid_body_fails_with_the_schema_error_path() -> None:
    body = {"key": KEY, "raw_message": "From: a@example.com", "to": ["not-an-address"], "x": 1}
    with pytest.raises(pytest.fail.Exception) as failed:
        assert_valid(validator(MANDRILL), body, "a broken body")
    assert "at $.to[0]: 'not-an-address' is not a 'email'" in str(failed.value)
    assert "at $: Additional properties are not allowed ('x' was unexpected)" in str(failed.value)


@needs_specs
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_every_request_body_matches_the_provider_spec(
    provider: str, case: str, http: httpx.AsyncClient, respx_mock: respx.MockRouter
) -> None:
    p = PROVIDERS[provider]
    [message] = outgoing(CASES[case])
    route = mock(respx_mock, p, p.accepted(message))
    result = await p.transport(http).send(message)
    p.check(route.calls.last.request, message)
    assert statuses(result) == dict.fromkeys(message.recipients, "sent")


def statuses(result: SendResult) -> dict[str, str]:
    return {rcpt: answer.status for rcpt, answer in result.recipients.items()}


def expected_kind(status: int) -> str:
    """The transport contract: 2xx sent; 401/403 refused credentials (retried, and shown on the
    profile's health); 429 and 5xx temporary; any other 4xx permanent."""
    if status < 300:
        return "success"
    if status in (401, 403):
        return "credentials"
    return "temporary" if status == 429 or status >= 500 else "permanent"


async def outcome(transport: Transport, message: OutgoingMessage) -> str:
    try:
        await transport.send(message)
    except CredentialsError:
        return "credentials"
    except TemporaryError:
        return "temporary"
    except PermanentError:
        return "permanent"
    return "success"


@needs_specs
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_documented_answers_are_mapped_as_the_contract_says(
    provider: str, http: httpx.AsyncClient, respx_mock: respx.MockRouter
) -> None:
    p = PROVIDERS[provider]
    [message] = outgoing(CASES["plain"])
    transport = p.transport(http)
    answers = [("2xx, documented success", p.accepted(message)), *p.documented()]
    route = mock(respx_mock, p, answers[0][1])
    wrong = []
    for label, answer in answers:
        route.return_value = answer
        got, want = await outcome(transport, message), expected_kind(answer.status_code)
        if got != want:
            wrong.append(f"{label}: mapped to {got}, the contract says {want}")
    assert route.call_count == len(answers)
    fail_if(wrong, f"{provider}'s answer mapping")


@needs_specs
async def test_mandrill_per_recipient_statuses_from_the_spec(
    http: httpx.AsyncClient, respx_mock: respx.MockRouter
) -> None:
    """Mandrill answers 200 with a status per recipient, rejections included."""
    item = mandrill_answer_schema()["items"]["properties"]
    documented = item["status"]["enum"]
    expected = {
        "sent": "sent",
        "queued": "queued",
        "scheduled": "queued",
        "rejected": "rejected",
        "invalid": "invalid",
    }
    assert set(documented) == set(expected), "Mandrill documents a status not mapped here"
    [message] = outgoing({"to": [f"{s}@example.com" for s in documented], "text": "Hi"})
    answer: list[dict[str, object]] = []
    for status in documented:
        entry: dict[str, object] = {
            "email": f"{status}@example.com",
            "status": status,
            "_id": status,
        }
        if status == "rejected":
            entry["reject_reason"] = item["reject_reason"]["enum"][0]
        if status == "queued":
            entry["queued_reason"] = item["queued_reason"]["enum"][0]
        answer.append(entry)
    assert_valid(Draft202012Validator(mandrill_answer_schema()), answer, "our Mandrill 200 answer")
    mock(respx_mock, PROVIDERS["mandrill"], httpx.Response(200, json=answer))
    result = await PROVIDERS["mandrill"].transport(http).send(message)
    assert statuses(result) == {f"{s}@example.com": expected[s] for s in documented}
    assert result.recipients["rejected@example.com"].message == "hard-bounce"


async def test_graph_token_request_is_the_documented_client_credentials_form(
    http: httpx.AsyncClient, respx_mock: respx.MockRouter
) -> None:
    """graph-sendmail.md, "Token": the form, the scope, and the documented answers."""
    p = PROVIDERS["msgraph"]
    [message] = outgoing(CASES["plain"])
    send = mock(respx_mock, p, httpx.Response(202))
    token = respx_mock.post(TOKEN_URL).respond(200, json=TOKEN)
    transport = p.transport(http)
    await transport.send(message)
    request = token.calls.last.request
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qs(request.content.decode(), strict_parsing=True) == {
        "client_id": ["client-1"],
        "scope": ["https://graph.microsoft.com/.default"],
        "client_secret": [KEY],
        "grant_type": ["client_credentials"],
    }
    assert send.calls.last.request.headers["authorization"] == f"Bearer {TOKEN['access_token']}"
    error = {
        "error": "invalid_scope",
        "error_description": "AADSTS70011: The provided value for the input parameter 'scope'",
        "error_codes": [70011],
        "timestamp": "2024-01-01 00:00:00Z",
        "trace_id": "t",
        "correlation_id": "c",
    }
    token.return_value = httpx.Response(400, json=error)
    fresh = p.transport(http)
    with pytest.raises(CredentialsError, match="Microsoft Entra ID refused the credentials"):
        await fresh.send(message)


@pytest.mark.parametrize("provider", ["mandrill", "sendgrid", "ses"])
async def test_a_non_ascii_local_part_is_refused_before_any_request(
    provider: str, http: httpx.AsyncClient, respx_mock: respx.MockRouter
) -> None:
    """Those specs take ASCII addresses only, and a Unicode local part has no ASCII form: the
    message is refused before data, so a profile's fallback (SMTP with SMTPUTF8) may carry it."""
    [message] = outgoing({"to": ["jörg@bücher.example"], "subject": "Hi", "text": "Hi"})
    with pytest.raises(UnsupportedFeature, match=r"jörg@bücher\.example") as refused:
        await PROVIDERS[provider].transport(http).send(message)
    assert refused.value.before_data
    assert not respx_mock.calls
