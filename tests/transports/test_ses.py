"""SES v2 SendEmail and GetAccount against respx, fed the answers of provider-apis.md §2, and the
SigV4 signature checked against the §2.4 vectors and against botocore's signer."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import re
from collections.abc import AsyncIterator
from types import SimpleNamespace

import httpx
import pytest
import respx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from httpx_auth import _aws
from pydantic import SecretStr

from app.transports import ses
from app.transports.base import Address
from app.transports.errors import (
    ConfigError,
    CredentialsError,
    PermanentError,
    TemporaryError,
    Throttled,
    TransportError,
)
from tests.transports._messages import context, outgoing

pytestmark = pytest.mark.anyio

AKID = "AKIDEXAMPLE00000"
VECTOR_AKID = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SEND_URL = "https://email.us-east-1.amazonaws.com/v2/email/outbound-emails"
ACCOUNT_URL = "https://email.us-east-1.amazonaws.com/v2/email/account"
AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<akid>\w+)/(?P<date>\d{8})/us-east-1/ses/aws4_request, "
    r"SignedHeaders=(?P<signed>[a-z0-9;-]+), "
    r"Signature=(?P<signature>[0-9a-f]{64})"
)


def config(**settings: object) -> ses.SesConfig:
    base = {"accessKeyId": AKID, "secretAccessKey": SECRET, "region": "us-east-1"}
    return ses.SesConfig.model_validate(base | settings)


@pytest.fixture
async def transport() -> AsyncIterator[ses.SesTransport]:
    async with httpx.AsyncClient() as http:
        yield ses.create("ses", config(), context(http))


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> str:
    """Freeze httpx-auth's clock at 2024-01-01T00:00:00Z, the time of the §2.4 vectors."""

    class Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz: datetime.tzinfo | None = None) -> Frozen:
            return cls(2024, 1, 1, tzinfo=datetime.UTC)

    monkeypatch.setattr(_aws, "datetime", SimpleNamespace(datetime=Frozen, timezone=datetime.UTC))
    return "20240101T000000Z"


def refusal(status: int, error_type: str | None, message: str) -> httpx.Response:
    headers = {"x-amzn-ErrorType": error_type} if error_type else {}
    return httpx.Response(status, headers=headers, json={"message": message})


async def test_send_posts_the_raw_mime_signed_for_ses(
    transport: ses.SesTransport, respx_mock: respx.MockRouter
) -> None:
    message = outgoing(bcc=(Address("hidden@example.com"),))
    route = respx_mock.post(SEND_URL).respond(
        200,
        headers={"x-amzn-RequestId": "req-1"},
        json={"MessageId": "0100018c-aaaa-bbbb-000000"},
    )

    result = await transport.send(message)

    request = route.calls.last.request
    assert request.method == "POST"
    assert request.url == SEND_URL
    assert request.headers["content-type"] == "application/json"
    body = json.loads(request.content)
    assert body == {
        "FromEmailAddress": "sender@example.com",
        "Destination": {"ToAddresses": ["to@example.com", "hidden@example.com"]},
        "Content": {"Raw": {"Data": base64.b64encode(message.mime).decode()}},
    }
    assert request.headers["x-amz-content-sha256"] == hashlib.sha256(request.content).hexdigest()
    match = AUTHORIZATION.fullmatch(request.headers["authorization"])
    assert match is not None
    assert match["akid"] == AKID
    assert match["signed"] == "content-type;host;x-amz-content-sha256;x-amz-date"
    assert result.provider_id == "0100018c-aaaa-bbbb-000000"
    assert result.extra == {"requestId": "req-1"}
    assert {r: s.status for r, s in result.recipients.items()} == {
        "to@example.com": "sent",
        "hidden@example.com": "sent",
    }


async def test_configuration_set_is_sent_when_set(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post(SEND_URL).respond(200, json={"MessageId": "m"})
    async with httpx.AsyncClient() as http:
        transport = ses.create("ses", config(configurationSetName="tracking"), context(http))
        await transport.send(outgoing())

    assert json.loads(route.calls.last.request.content)["ConfigurationSetName"] == "tracking"


def test_signature_matches_the_reference_vector(frozen_clock: str) -> None:
    """§2.4, the httpx-auth case: content-type;host;x-amz-content-sha256;x-amz-date."""
    body = (
        b'{"Content":{"Raw":{"Data":"RnJvbTogYUBleGFtcGxlLmNvbQ0KVG86IGJAZXhhbXBsZS5jb20NClN1Ympl'
        b'Y3Q6IGhpDQoNCmhlbGxvDQo="}}}'
    )
    assert hashlib.sha256(body).hexdigest() == (
        "7a7b407cce252046fc3d2f693073470ac3006acc703ae58ceee0e25f5e02a070"
    )
    # The vector's key id is shorter than real ones, which the config refuses: skip validation.
    vector = ses.SesConfig.model_construct(
        access_key_id=VECTOR_AKID, secret_access_key=SecretStr(SECRET), region="us-east-1"
    )
    signer = ses.signer(vector)
    request = httpx.Request(
        "POST", SEND_URL, content=body, headers={"Content-Type": "application/json"}
    )

    signed = next(signer.sync_auth_flow(request))

    assert signed.headers["x-amz-date"] == frozen_clock
    assert signed.headers["authorization"] == (
        f"AWS4-HMAC-SHA256 Credential={VECTOR_AKID}/20240101/us-east-1/ses/aws4_request, "
        "SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date, "
        "Signature=1e549495987d41c675c15de6d6c90eca918fdd0ac90e80cf3d7375f0079984c9"
    )


async def test_send_signature_agrees_with_botocore(
    transport: ses.SesTransport, respx_mock: respx.MockRouter, frozen_clock: str
) -> None:
    route = respx_mock.post(SEND_URL).respond(200, json={"MessageId": "m"})

    await transport.send(outgoing())

    sent = route.calls.last.request
    assert sent.headers["x-amz-date"] == frozen_clock
    reference = AWSRequest(
        method="POST",
        url=SEND_URL,
        data=sent.content,
        headers={
            "Content-Type": sent.headers["content-type"],
            "X-Amz-Date": frozen_clock,
            "X-Amz-Content-SHA256": hashlib.sha256(sent.content).hexdigest(),
        },
    )
    reference.context["timestamp"] = frozen_clock
    botocore_signer = SigV4Auth(Credentials(AKID, SECRET), "ses", "us-east-1")
    expected = botocore_signer.signature(
        botocore_signer.string_to_sign(reference, botocore_signer.canonical_request(reference)),
        reference,
    )
    match = AUTHORIZATION.fullmatch(sent.headers["authorization"])
    assert match is not None
    assert match["date"] == "20240101"
    assert match["signature"] == expected


@pytest.mark.parametrize(
    ("settings", "url"),
    [
        ({"region": "eu-west-1"}, "https://email.eu-west-1.amazonaws.com"),
        ({"region": "cn-north-1"}, "https://email.cn-north-1.amazonaws.com.cn"),
        ({"endpointUrl": "http://127.0.0.1:4566/"}, "http://127.0.0.1:4566"),
    ],
)
async def test_endpoint_follows_region_or_endpoint_url(
    respx_mock: respx.MockRouter, settings: dict[str, str], url: str
) -> None:
    route = respx_mock.post(f"{url}/v2/email/outbound-emails").respond(200, json={"MessageId": "m"})
    async with httpx.AsyncClient() as http:
        await ses.create("ses", config(**settings), context(http)).send(outgoing())

    assert route.called


@pytest.mark.parametrize(
    ("response", "expected", "code"),
    [
        (
            refusal(400, "MessageRejected", "Email address is not verified."),
            PermanentError,
            "MessageRejected",
        ),
        (
            refusal(400, "MessageRejected:http://internal.amazon.com/coral/com.amazon.ses/", "no"),
            PermanentError,
            "MessageRejected",
        ),
        (refusal(400, "MailFromDomainNotVerifiedException", "MAIL FROM"), PermanentError, None),
        (refusal(400, "AccountSuspendedException", "suspended"), PermanentError, None),
        (refusal(400, "SendingPausedException", "paused"), PermanentError, None),
        (
            refusal(429, "TooManyRequestsException", "Maximum sending rate exceeded."),
            Throttled,
            "TooManyRequestsException",
        ),
        (refusal(400, "ThrottlingException", "Daily message quota exceeded"), Throttled, None),
        (refusal(400, "Throttling", "Maximum sending rate exceeded."), Throttled, None),
        (
            httpx.Response(
                400, json={"__type": "com.amazon.coral#ThrottlingException", "message": "slow"}
            ),
            Throttled,
            "ThrottlingException",
        ),
        (
            httpx.Response(400, json={"code": "MessageRejected", "Message": "x"}),
            PermanentError,
            "MessageRejected",
        ),
        (
            refusal(403, "UnrecognizedClientException", "The security token is invalid"),
            CredentialsError,
            None,
        ),
        (refusal(403, "SignatureDoesNotMatch", "signature"), CredentialsError, None),
        (refusal(400, "ExpiredTokenException", "expired"), CredentialsError, None),
        (refusal(500, "InternalFailure", "oops"), TemporaryError, None),
        (refusal(503, "ServiceUnavailable", "later"), TemporaryError, None),
    ],
)
async def test_errors_are_classified_by_error_type(
    transport: ses.SesTransport,
    respx_mock: respx.MockRouter,
    response: httpx.Response,
    expected: type[TransportError],
    code: str | None,
) -> None:
    respx_mock.post(SEND_URL).mock(return_value=response)

    with pytest.raises(expected) as caught:
        await transport.send(outgoing())

    assert type(caught.value) is expected
    if code is not None:
        assert caught.value.reply is not None
        assert caught.value.reply.startswith(f"{code}: ")


async def test_credentials_error_names_the_fields(
    transport: ses.SesTransport, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(SEND_URL).mock(
        return_value=refusal(403, "UnrecognizedClientException", "The security token is invalid")
    )

    with pytest.raises(CredentialsError) as caught:
        await transport.send(outgoing())

    assert "accessKeyId" in str(caught.value)
    assert "secretAccessKey" in str(caught.value)
    assert SECRET not in str(caught.value)


async def test_an_unknown_configuration_set_blames_the_field(
    transport: ses.SesTransport, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(SEND_URL).mock(
        return_value=refusal(404, "NotFoundException", "Configuration set <x> does not exist.")
    )

    with pytest.raises(ConfigError) as caught:
        await transport.send(outgoing())

    assert caught.value.field == "configurationSetName"
    assert caught.value.reply_code == 404


async def test_a_success_without_message_id_is_ambiguous(
    transport: ses.SesTransport, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(SEND_URL).respond(200, json={})

    with pytest.raises(TemporaryError) as caught:
        await transport.send(outgoing())

    assert caught.value.ambiguous


async def test_verify_reads_the_account(
    transport: ses.SesTransport, respx_mock: respx.MockRouter
) -> None:
    route = respx_mock.get(ACCOUNT_URL).respond(
        200,
        json={
            "SendingEnabled": True,
            "ProductionAccessEnabled": False,
            "SendQuota": {"Max24HourSend": 200.0, "MaxSendRate": 1.0, "SentLast24Hours": 3.0},
            "EnforcementStatus": "HEALTHY",
        },
    )

    report = await transport.verify()

    match = AUTHORIZATION.fullmatch(route.calls.last.request.headers["authorization"])
    assert match is not None
    assert match["signed"] == "host;x-amz-content-sha256;x-amz-date"
    assert report.ok
    assert [step.name for step in report.steps] == ["credentials", "sending"]
    assert "sandbox" in report.steps[1].detail
    assert "sent 3.0 of 200.0 in 24 h" in report.steps[1].detail
    assert any("sender" in item for item in report.unchecked)


async def test_verify_fails_when_sending_is_disabled(
    transport: ses.SesTransport, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(ACCOUNT_URL).respond(
        200, json={"SendingEnabled": False, "ProductionAccessEnabled": True}
    )

    report = await transport.verify()

    assert [step.ok for step in report.steps] == [True, False]
    assert "disabled" in report.steps[1].detail


async def test_verify_stops_at_refused_credentials(
    transport: ses.SesTransport, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(ACCOUNT_URL).mock(
        return_value=refusal(403, "InvalidSignatureException", "The request signature is wrong")
    )

    report = await transport.verify()

    assert [step.name for step in report.steps] == ["credentials"]
    assert report.error_code == "EAUTH"
