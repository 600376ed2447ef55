"""POST /servers/{name}/verify and /servers/{name}/test through the HTTP API for every provider API
type, with respx playing the provider as documented (provider-apis.md):

- verify calls the provider's credential check only (Mandrill users/ping2, SES GetAccount,
  SendGrid scopes, Mailgun domain lookup, a Microsoft Entra ID token) and sends nothing;
- test sends exactly one documented send request, carrying the test mail to the given address;
- a refused key gives a report that says so: EAUTH, the provider's status, the field to check,
  a hint, and never the secret.

respx replaces httpx's network layer (httpcore); the admin client talks to the app through
httpx.ASGITransport, which does not use it, so only the app's provider calls are mocked.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import respx

from app.delivery.probe import TEST_SUBJECT
from tests.servers.helpers import BODIES, SECRETS, body, create

pytestmark = pytest.mark.anyio

TO = "admin@example.net"
KEYS = {type_: BODIES[type_]["settings"][SECRETS[type_][0]] for type_ in BODIES}
GRAPH_TENANT = BODIES["msgraph"]["settings"]["tenantId"]
GRAPH_TOKEN_URL = f"https://login.microsoftonline.com/{GRAPH_TENANT}/oauth2/v2.0/token"


def jwt(claims: dict[str, object]) -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.signature"


GRAPH_TOKEN = jwt({"aud": "https://graph.microsoft.com", "roles": ["Mail.Send"]})


def graph_token(token: str = GRAPH_TOKEN) -> httpx.Response:
    return httpx.Response(
        200, json={"token_type": "Bearer", "expires_in": 3599, "access_token": token}
    )


# --- what each provider's requests must carry ---------------------------------------------------


def mandrill_key(request: httpx.Request) -> None:
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content)["key"] == KEYS["mandrill"]


def ses_signature(request: httpx.Request) -> None:
    authorization = request.headers["authorization"]
    assert authorization.startswith("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/")
    assert "/eu-west-1/ses/aws4_request, SignedHeaders=" in authorization
    assert "x-amz-date" in request.headers


def sendgrid_bearer(request: httpx.Request) -> None:
    assert request.headers["authorization"] == f"Bearer {KEYS['sendgrid']}"


def mailgun_basic(request: httpx.Request) -> None:
    expected = base64.b64encode(f"api:{KEYS['mailgun']}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {expected}"


def graph_client_credentials(request: httpx.Request) -> None:
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    form = dict(httpx.QueryParams(request.content.decode()))
    assert form == {
        "grant_type": "client_credentials",
        "client_id": BODIES["msgraph"]["settings"]["clientId"],
        "client_secret": KEYS["msgraph"],
        "scope": "https://graph.microsoft.com/.default",
    }


def carries_the_test_mail(mime: bytes) -> None:
    assert f"Subject: {TEST_SUBJECT}".encode() in mime
    assert f"To: {TO}".encode() in mime


def mandrill_send(request: httpx.Request) -> None:
    mandrill_key(request)
    sent = json.loads(request.content)
    assert sent["to"] == [TO]
    assert sent["from_email"] == BODIES["mandrill"]["senderEmail"]
    carries_the_test_mail(sent["raw_message"].encode())


def ses_send(request: httpx.Request) -> None:
    ses_signature(request)
    sent = json.loads(request.content)
    assert sent["FromEmailAddress"] == BODIES["ses"]["senderEmail"]
    assert sent["Destination"] == {"ToAddresses": [TO]}
    assert sent["ConfigurationSetName"] == "bi-reports"
    carries_the_test_mail(base64.b64decode(sent["Content"]["Raw"]["Data"]))


def sendgrid_send(request: httpx.Request) -> None:
    sendgrid_bearer(request)
    sent = json.loads(request.content)
    assert sent["personalizations"] == [{"to": [{"email": TO}]}]
    assert sent["from"] == {"email": BODIES["sendgrid"]["senderEmail"]}
    assert sent["subject"] == TEST_SUBJECT
    [text] = sent["content"]
    assert text["type"] == "text/plain"
    assert "Type: sendgrid" in text["value"]


def mailgun_send(request: httpx.Request) -> None:
    mailgun_basic(request)
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    content = request.content
    assert b'name="to"\r\n\r\n' + TO.encode() + b"\r\n" in content
    assert b'name="message"; filename="message.mime"' in content
    carries_the_test_mail(content)


def graph_send(request: httpx.Request) -> None:
    assert request.headers["authorization"] == f"Bearer {GRAPH_TOKEN}"
    assert request.headers["content-type"] == "text/plain"
    carries_the_test_mail(base64.b64decode(request.content))


@dataclass(frozen=True)
class Provider:
    check: tuple[str, str]
    """The credential check verify calls: method and URL."""
    check_answer: Callable[[], httpx.Response]
    check_request: Callable[[httpx.Request], None]
    steps: list[str]
    """verify's step names when all is well."""
    send_url: str
    send_answer: Callable[[], httpx.Response]
    send_request: Callable[[httpx.Request], None]
    provider_id: str | None
    """What the test outcome reports as the provider's message id."""
    refused: tuple[str, str, Callable[[], httpx.Response]]
    """Where a bad key is refused (method, URL) and how, in the provider's own format."""
    fix: str
    """The setting the refusal tells the admin to check."""
    before_send: Callable[[respx.MockRouter], object] = lambda router: None


PROVIDERS: dict[str, Provider] = {
    "mandrill": Provider(
        check=("POST", "https://mandrillapp.com/api/1.0/users/ping2.json"),
        check_answer=lambda: httpx.Response(200, json={"PING": "PONG!"}),
        check_request=mandrill_key,
        steps=["credentials"],
        send_url="https://mandrillapp.com/api/1.0/messages/send-raw.json",
        send_answer=lambda: httpx.Response(
            200, json=[{"email": TO, "status": "sent", "_id": "abc123", "reject_reason": None}]
        ),
        send_request=mandrill_send,
        provider_id="abc123",
        refused=(
            "POST",
            "https://mandrillapp.com/api/1.0/messages/send-raw.json",
            lambda: httpx.Response(
                500,
                json={"status": "error", "code": -1, "name": "Invalid_Key", "message": "Invalid"},
            ),
        ),
        fix="apiKey",
    ),
    "ses": Provider(
        check=("GET", "https://email.eu-west-1.amazonaws.com/v2/email/account"),
        check_answer=lambda: httpx.Response(
            200,
            json={
                "SendingEnabled": True,
                "ProductionAccessEnabled": False,
                "SendQuota": {"Max24HourSend": 200.0, "MaxSendRate": 1.0, "SentLast24Hours": 3.0},
            },
        ),
        check_request=ses_signature,
        steps=["credentials", "sending"],
        send_url="https://email.eu-west-1.amazonaws.com/v2/email/outbound-emails",
        send_answer=lambda: httpx.Response(200, json={"MessageId": "0102018c-test-000000"}),
        send_request=ses_send,
        provider_id="0102018c-test-000000",
        refused=(
            "POST",
            "https://email.eu-west-1.amazonaws.com/v2/email/outbound-emails",
            lambda: httpx.Response(
                403,
                headers={"x-amzn-ErrorType": "UnrecognizedClientException"},
                json={"message": "The security token included in the request is invalid."},
            ),
        ),
        fix="accessKeyId and secretAccessKey",
    ),
    "sendgrid": Provider(
        check=("GET", "https://api.sendgrid.com/v3/scopes"),
        check_answer=lambda: httpx.Response(
            200, json={"scopes": ["mail.send", "user.profile.read"]}
        ),
        check_request=sendgrid_bearer,
        steps=["credentials"],
        send_url="https://api.sendgrid.com/v3/mail/send",
        send_answer=lambda: httpx.Response(202, headers={"X-Message-Id": "sg-test-id"}),
        send_request=sendgrid_send,
        provider_id="sg-test-id",
        refused=(
            "POST",
            "https://api.sendgrid.com/v3/mail/send",
            lambda: httpx.Response(
                401, json={"errors": [{"message": "authorization required", "field": None}]}
            ),
        ),
        fix="apiKey",
    ),
    "mailgun": Provider(
        check=("GET", "https://api.mailgun.net/v3/domains/mg.contoso.example"),
        check_answer=lambda: httpx.Response(
            200, json={"domain": {"name": "mg.contoso.example", "state": "active"}}
        ),
        check_request=mailgun_basic,
        steps=["domain"],
        send_url="https://api.mailgun.net/v3/mg.contoso.example/messages.mime",
        send_answer=lambda: httpx.Response(
            200, json={"id": "<20240101.1@mg.contoso.example>", "message": "Queued. Thank you."}
        ),
        send_request=mailgun_send,
        provider_id="<20240101.1@mg.contoso.example>",
        refused=(
            "POST",
            "https://api.mailgun.net/v3/mg.contoso.example/messages.mime",
            lambda: httpx.Response(401, text="Forbidden"),
        ),
        fix="apiKey and region",
    ),
    "msgraph": Provider(
        check=("POST", GRAPH_TOKEN_URL),
        check_answer=graph_token,
        check_request=graph_client_credentials,
        steps=["token", "permission"],
        send_url="https://graph.microsoft.com/v1.0/users/reports@contoso.example/sendMail",
        send_answer=lambda: httpx.Response(202),
        send_request=graph_send,
        provider_id=None,
        refused=(
            "POST",
            GRAPH_TOKEN_URL,
            lambda: httpx.Response(
                401,
                json={
                    "error": "invalid_client",
                    "error_description": "AADSTS7000215: Invalid client secret provided.",
                    "error_codes": [7000215],
                },
            ),
        ),
        fix="tenantId, clientId and clientSecret",
        before_send=lambda router: router.post(GRAPH_TOKEN_URL).mock(return_value=graph_token()),
    ),
}


def test_every_api_type_has_a_case() -> None:
    assert set(PROVIDERS) == set(BODIES) - {"smtp"}


@pytest.fixture(params=sorted(PROVIDERS))
async def type_(request: pytest.FixtureRequest, admin: httpx.AsyncClient) -> str:
    name: str = request.param
    await create(admin, body(name, "api"))
    return name


def calls(router: respx.MockRouter) -> list[tuple[str, str]]:
    return [(call.request.method, str(call.request.url)) for call in router.calls]


async def test_verify_calls_the_credential_check_only(
    admin: httpx.AsyncClient, type_: str, respx_mock: respx.MockRouter
) -> None:
    case = PROVIDERS[type_]
    respx_mock.route(method=case.check[0], url=case.check[1]).mock(return_value=case.check_answer())
    anything_else = respx_mock.route().respond(500)

    response = await admin.post("/api/v1/servers/api/verify", json={})

    assert response.status_code == 200, response.text
    report = response.json()
    assert report["ok"] is True, report
    assert report["server"] == "api"
    assert report["errorCode"] is None
    assert [step["name"] for step in report["steps"]] == case.steps
    assert all(step["ok"] for step in report["steps"])
    assert report["unchecked"], "says what it could not check without sending"
    assert calls(respx_mock) == [case.check], "nothing but the credential check"
    assert not anything_else.called
    case.check_request(respx_mock.calls.last.request)
    assert KEYS[type_] not in response.text


async def test_verify_reports_a_refused_key(
    admin: httpx.AsyncClient, type_: str, respx_mock: respx.MockRouter
) -> None:
    case = PROVIDERS[type_]
    answer = case.refused[2]()
    status = answer.status_code
    respx_mock.route(method=case.check[0], url=case.check[1]).mock(return_value=answer)
    anything_else = respx_mock.route().respond(500)

    report = (await admin.post("/api/v1/servers/api/verify", json={})).json()

    assert report["ok"] is False
    assert report["errorCode"] == "EAUTH"
    [failed] = report["steps"]
    assert failed["name"] == case.steps[0]
    assert failed["ok"] is False
    assert "refused the credentials" in failed["detail"]
    assert case.fix in failed["detail"]
    assert str(status) in failed["detail"]
    assert "credentials" in report["hint"]
    assert _first_setting(case.fix) in report["hint"], "the hint names the profile's settings"
    assert not anything_else.called
    assert KEYS[type_] not in json.dumps(report)


async def test_test_sends_exactly_one_documented_request(
    admin: httpx.AsyncClient, type_: str, respx_mock: respx.MockRouter
) -> None:
    case = PROVIDERS[type_]
    case.before_send(respx_mock)
    answer = case.send_answer()
    send = respx_mock.post(case.send_url).mock(return_value=answer)
    anything_else = respx_mock.route().respond(500)

    response = await admin.post("/api/v1/servers/api/test", json={"to": TO})

    assert response.status_code == 200, response.text
    outcome = response.json()
    assert outcome["ok"] is True, outcome
    assert (outcome["server"], outcome["to"]) == ("api", TO)
    assert outcome["errorCode"] is None
    assert outcome["reply"] == case.provider_id
    assert outcome["replyCode"] == answer.status_code
    assert send.call_count == 1
    assert not anything_else.called
    case.send_request(send.calls.last.request)
    assert outcome["messageId"].encode() in _mime_of(type_, send.calls.last.request)
    assert KEYS[type_] not in response.text


def _first_setting(fix: str) -> str:
    """The first setting a provider's refusal names: "tenantId, clientId and ..." -> tenantId."""
    return fix.split(" ")[0].rstrip(",")


def _mime_of(type_: str, request: httpx.Request) -> bytes:
    """Where the request carries the message: the MIME, or SendGrid's JSON (headers included)."""
    if type_ == "mandrill":
        raw: str = json.loads(request.content)["raw_message"]
        return raw.encode()
    if type_ == "ses":
        return base64.b64decode(json.loads(request.content)["Content"]["Raw"]["Data"])
    if type_ == "msgraph":
        return base64.b64decode(request.content)
    return request.content


async def test_test_reports_a_refused_key(
    admin: httpx.AsyncClient, type_: str, respx_mock: respx.MockRouter
) -> None:
    case = PROVIDERS[type_]
    method, url, refusal = case.refused
    answer = refusal()
    refused = respx_mock.route(method=method, url=url).mock(return_value=answer)
    anything_else = respx_mock.route().respond(500)

    response = await admin.post("/api/v1/servers/api/test", json={"to": TO})

    assert response.status_code == 200, response.text
    outcome: dict[str, Any] = response.json()
    assert outcome["ok"] is False
    assert outcome["errorCode"] == "EAUTH"
    assert outcome["replyCode"] == answer.status_code
    assert "refused the credentials" in outcome["error"]
    assert case.fix in outcome["error"]
    assert "credentials" in outcome["hint"]
    assert _first_setting(case.fix) in outcome["hint"], "the hint names the profile's settings"
    assert refused.call_count == 1, "refused once, not retried in a loop"
    assert not anything_else.called, "nothing sent after the refusal"
    assert KEYS[type_] not in response.text
