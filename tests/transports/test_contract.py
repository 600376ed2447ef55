"""The contract every registered HTTP transport keeps, checked on each through the registry:

- a send answers one status from the closed vocabulary for every envelope recipient;
- an option it cannot honour raises UnsupportedFeature before any request;
- HTTP statuses and httpx errors map onto the error tree the same way everywhere, with Retry-After;
- redirects are never followed, even when the shared client would follow them;
- secrets appear in no log line and no error.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import get_args

import httpx
import pytest
import respx

from app.transports.base import Address, Transport
from app.transports.errors import (
    ConfigError,
    CredentialsError,
    PermanentError,
    TemporaryError,
    Throttled,
    TransportError,
    UnsupportedFeature,
)
from app.transports.registry import TRANSPORTS, build
from app.transports.result import RecipientStatus
from tests.transports._messages import context, outgoing

pytestmark = pytest.mark.anyio

NOT_HTTP = frozenset({"smtp", "file", "memory"})


@dataclass(frozen=True)
class Case:
    settings: dict[str, object]
    url: str
    """The send endpoint."""
    accepted: Callable[[], httpx.Response]
    refused: Callable[[int, dict[str, str]], httpx.Response]
    """A refusal in the provider's error format, with no provider code that outranks the status."""
    secrets: tuple[str, ...]
    routes: Callable[[respx.MockRouter], object] = lambda router: None
    """Other endpoints a send needs (Graph's token)."""
    extra_secrets: tuple[str, ...] = field(default=())


def _json(body: object) -> Callable[[int, dict[str, str]], httpx.Response]:
    return lambda status, headers: httpx.Response(status, headers=headers, json=body)


CASES: dict[str, Case] = {
    "mandrill": Case(
        settings={"apiKey": "md-contract-secret"},
        url="https://mandrillapp.com/api/1.0/messages/send-raw.json",
        accepted=lambda: httpx.Response(
            200,
            json=[
                {"email": r, "status": "sent", "_id": f"id-{i}"}
                for i, r in enumerate(["to@example.com", "cc@example.com", "bcc@example.com"])
            ],
        ),
        refused=_json({"status": "error", "code": -99, "name": "Unlisted", "message": "no"}),
        secrets=("md-contract-secret",),
    ),
    "ses": Case(
        settings={
            "accessKeyId": "AKIACONTRACT0000",
            "secretAccessKey": "ses-contract-secret",
            "region": "eu-west-1",
        },
        url="https://email.eu-west-1.amazonaws.com/v2/email/outbound-emails",
        accepted=lambda: httpx.Response(200, json={"MessageId": "ses-id"}),
        refused=_json({"message": "no"}),
        secrets=("ses-contract-secret",),
    ),
    "sendgrid": Case(
        settings={"apiKey": "SG.contract-secret"},
        url="https://api.sendgrid.com/v3/mail/send",
        accepted=lambda: httpx.Response(202, headers={"X-Message-Id": "sg-id"}),
        refused=_json({"errors": [{"message": "no", "field": None, "help": None}]}),
        secrets=("SG.contract-secret",),
    ),
    "mailgun": Case(
        settings={"apiKey": "mg-contract-secret", "domain": "mg.example.com"},
        url="https://api.mailgun.net/v3/mg.example.com/messages.mime",
        accepted=lambda: httpx.Response(200, json={"id": "<mg-id>", "message": "Queued."}),
        refused=_json({"message": "no"}),
        secrets=("mg-contract-secret",),
    ),
    "msgraph": Case(
        settings={
            "tenantId": "tenant",
            "clientId": "client",
            "clientSecret": "graph-contract-secret",
            "userId": "sender@example.com",
        },
        url="https://graph.microsoft.com/v1.0/users/sender@example.com/sendMail",
        accepted=lambda: httpx.Response(202),
        refused=_json({"error": {"code": "Unlisted", "message": "no"}}),
        secrets=("graph-contract-secret", "graph-contract-token"),
        routes=lambda router: router.post(
            "https://login.microsoftonline.com/tenant/oauth2/v2.0/token"
        ).respond(200, json={"access_token": "graph-contract-token", "expires_in": 3599}),
    ),
}


def test_every_registered_http_transport_has_a_case() -> None:
    assert set(CASES) == set(TRANSPORTS) - NOT_HTTP


@pytest.fixture(params=sorted(CASES))
def case_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def case(case_name: str, respx_mock: respx.MockRouter) -> Case:
    chosen = CASES[case_name]
    chosen.routes(respx_mock)
    return chosen


@pytest.fixture
async def transport(case_name: str, case: Case) -> AsyncIterator[Transport]:
    config = TRANSPORTS[case_name].config.model_validate(case.settings)
    # A client that would follow redirects: transports must refuse to, request by request.
    async with httpx.AsyncClient(follow_redirects=True) as http:
        transport = build(case_name, "contract", config, context(http))
        yield transport
        await transport.aclose()


async def test_a_send_answers_every_recipient_in_the_vocabulary(
    transport: Transport, case: Case, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(case.url).mock(return_value=case.accepted())
    sent = outgoing(cc=(Address("cc@example.com"),), bcc=(Address("bcc@example.com"),))

    result = await transport.send(sent)

    assert list(result.recipients) == list(sent.recipients)
    assert {r.status for r in result.recipients.values()} <= set(get_args(RecipientStatus))
    assert {r.status for r in result.recipients.values()} <= {"sent", "queued"}


async def test_an_unknown_option_raises_before_any_request(
    transport: Transport, case: Case, respx_mock: respx.MockRouter
) -> None:
    route = respx_mock.post(case.url)

    with pytest.raises(UnsupportedFeature) as caught:
        await transport.send(outgoing(extra={"sendAt": "2030-01-01T00:00:00Z"}))

    assert caught.value.feature == "the option 'sendAt'"
    assert caught.value.code == "EUNSUPPORTED"
    assert not route.called


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, PermanentError),
        (404, PermanentError),
        (422, PermanentError),
        (401, CredentialsError),
        (403, CredentialsError),
        (408, TemporaryError),
        (429, Throttled),
        (500, TemporaryError),
        (502, TemporaryError),
        (503, TemporaryError),
    ],
)
async def test_statuses_map_onto_the_error_tree(
    transport: Transport,
    case: Case,
    respx_mock: respx.MockRouter,
    status: int,
    expected: type[TransportError],
) -> None:
    respx_mock.post(case.url).mock(return_value=case.refused(status, {}))

    with pytest.raises(expected) as caught:
        await transport.send(outgoing())

    # Exactly the class, but a permanent error may name the profile field at fault.
    assert type(caught.value) is expected or type(caught.value) is ConfigError
    assert isinstance(caught.value, expected)
    assert caught.value.reply_code == status
    assert caught.value.reply is not None
    assert caught.value.reply.endswith("no")
    assert caught.value.before_data is (status < 500)


async def test_credentials_errors_name_the_profile_fields(
    transport: Transport, case: Case, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(case.url).mock(return_value=case.refused(401, {}))

    with pytest.raises(CredentialsError) as caught:
        await transport.send(outgoing())

    assert caught.value.code == "EAUTH"
    assert any(field in str(caught.value) for field in case.settings)


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_seconds_and_dates(
    transport: Transport, case: Case, respx_mock: respx.MockRouter, status: int
) -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    respx_mock.post(case.url).mock(
        side_effect=[
            case.refused(status, {"Retry-After": "7"}),
            case.refused(status, {"Retry-After": when}),
        ]
    )

    with pytest.raises(TemporaryError) as seconds:
        await transport.send(outgoing())
    with pytest.raises(TemporaryError) as date:
        await transport.send(outgoing())

    assert seconds.value.retry_after == 7.0
    assert date.value.retry_after is not None
    assert 110 <= date.value.retry_after <= 120


async def test_a_connect_error_is_temporary_and_before_data(
    transport: Transport, case: Case, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(case.url).mock(side_effect=httpx.ConnectError("refused"))

    with pytest.raises(TemporaryError) as caught:
        await transport.send(outgoing())

    assert caught.value.code == "ECONNECTION"
    assert caught.value.before_data
    assert not caught.value.ambiguous
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


async def test_a_lost_answer_is_temporary_and_ambiguous(
    transport: Transport, case: Case, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(case.url).mock(side_effect=httpx.ReadTimeout("no answer"))

    with pytest.raises(TemporaryError) as caught:
        await transport.send(outgoing())

    assert caught.value.code == "ETIMEDOUT"
    assert not caught.value.before_data
    assert caught.value.ambiguous


async def test_redirects_are_not_followed(
    transport: Transport, case: Case, respx_mock: respx.MockRouter
) -> None:
    elsewhere = respx_mock.post("https://attacker.example/collect").respond(200)
    respx_mock.post(case.url).respond(307, headers={"Location": "https://attacker.example/collect"})

    with pytest.raises(PermanentError) as caught:
        await transport.send(outgoing())

    assert caught.value.reply_code == 307
    assert "attacker.example" in str(caught.value)
    assert not elsewhere.called


async def test_secrets_are_never_logged_or_raised(
    transport: Transport,
    case: Case,
    respx_mock: respx.MockRouter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    route = respx_mock.post(case.url).mock(return_value=case.accepted())
    caplog.set_level(logging.DEBUG)
    errors: list[str] = []

    await transport.send(outgoing())
    for status in (401, 500):
        route.mock(return_value=case.refused(status, {}))
        with pytest.raises(TemporaryError) as caught:
            await transport.send(outgoing())
        errors.append(f"{caught.value} {caught.value.reply}")

    assert caplog.records
    for secret in case.secrets:
        assert secret not in caplog.text
        assert not any(secret in text for text in errors)
