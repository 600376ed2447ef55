"""Microsoft Graph sendMail and the client-credentials token against respx, fed the answers of
provider-apis.md §5."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from urllib.parse import parse_qs

import httpx
import pytest
import respx

from app.transports import msgraph
from app.transports.base import Address, Attachment
from app.transports.errors import (
    ConfigError,
    CredentialsError,
    PermanentError,
    TemporaryError,
    TransportError,
    UnsupportedFeature,
)
from tests.transports._messages import context, outgoing

pytestmark = pytest.mark.anyio

SECRET = "graph-client-secret~123"
TOKEN_URL = "https://login.microsoftonline.com/tenant-123/oauth2/v2.0/token"
SEND_URL = "https://graph.microsoft.com/v1.0/users/sender@example.com/sendMail"


def token_answer(token: str = "token-1", expires_in: int = 3599) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "token_type": "Bearer",
            "expires_in": expires_in,
            "ext_expires_in": expires_in,
            "access_token": token,
        },
    )


def graph_error(status: int, code: str, message: str, **headers: str) -> httpx.Response:
    inner = {"date": "2024-01-01T00:00:00", "request-id": "r", "client-request-id": "c"}
    body = {"error": {"code": code, "message": message, "innerError": inner}}
    return httpx.Response(status, headers=headers, json=body)


def jwt(claims: dict[str, object]) -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.signature"


@pytest.fixture
async def transport() -> AsyncIterator[msgraph.MsgraphTransport]:
    config = msgraph.MsgraphConfig.model_validate(
        {
            "tenantId": "tenant-123",
            "clientId": "client-456",
            "clientSecret": SECRET,
            "userId": "sender@example.com",
        }
    )
    async with httpx.AsyncClient() as http:
        yield msgraph.create("msgraph", config, context(http))


@pytest.fixture
def token(respx_mock: respx.MockRouter) -> respx.Route:
    return respx_mock.post(TOKEN_URL).mock(return_value=token_answer())


async def test_send_posts_base64_mime_with_bcc(
    transport: msgraph.MsgraphTransport, respx_mock: respx.MockRouter, token: respx.Route
) -> None:
    message = outgoing(bcc=(Address("hidden@example.com"),))
    send = respx_mock.post(SEND_URL).respond(202, headers={"request-id": "graph-req-1"})

    result = await transport.send(message)

    token_request = token.calls.last.request
    assert token_request.method == "POST"
    assert token_request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qs(token_request.content.decode()) == {
        "client_id": ["client-456"],
        "client_secret": [SECRET],
        "scope": ["https://graph.microsoft.com/.default"],
        "grant_type": ["client_credentials"],
    }
    request = send.calls.last.request
    assert request.method == "POST"
    assert request.url == SEND_URL
    assert request.headers["authorization"] == "Bearer token-1"
    assert request.headers["content-type"] == "text/plain"
    assert message.mime_with_bcc is not None
    assert request.content == base64.b64encode(message.mime_with_bcc)
    assert b"Bcc: hidden@example.com" in base64.b64decode(request.content)
    assert result.provider_id is None
    assert result.extra == {"requestId": "graph-req-1"}
    assert {r: s.status for r, s in result.recipients.items()} == {
        "to@example.com": "sent",
        "hidden@example.com": "sent",
    }


async def test_without_bcc_the_plain_mime_is_sent(
    transport: msgraph.MsgraphTransport, respx_mock: respx.MockRouter, token: respx.Route
) -> None:
    message = outgoing()
    send = respx_mock.post(SEND_URL).respond(202)

    await transport.send(message)

    assert send.calls.last.request.content == base64.b64encode(message.mime)


async def test_the_token_is_cached(
    transport: msgraph.MsgraphTransport, respx_mock: respx.MockRouter, token: respx.Route
) -> None:
    respx_mock.post(SEND_URL).respond(202)

    await transport.send(outgoing())
    await transport.send(outgoing())

    assert token.call_count == 1


async def test_a_token_is_fetched_again_near_its_expiry(
    transport: msgraph.MsgraphTransport, respx_mock: respx.MockRouter
) -> None:
    token = respx_mock.post(TOKEN_URL).mock(
        side_effect=[token_answer("token-1", 0), token_answer("token-2")]
    )
    send = respx_mock.post(SEND_URL).respond(202)

    await transport.send(outgoing())
    await transport.send(outgoing())

    assert token.call_count == 2
    assert send.calls.last.request.headers["authorization"] == "Bearer token-2"


async def test_a_401_fetches_a_new_token_once(
    transport: msgraph.MsgraphTransport, respx_mock: respx.MockRouter
) -> None:
    token = respx_mock.post(TOKEN_URL).mock(
        side_effect=[token_answer("revoked"), token_answer("fresh")]
    )
    send = respx_mock.post(SEND_URL).mock(
        side_effect=[
            graph_error(401, "InvalidAuthenticationToken", "Access token has expired."),
            httpx.Response(202),
        ]
    )

    result = await transport.send(outgoing())

    assert token.call_count == 2
    assert [c.request.headers["authorization"] for c in send.calls] == [
        "Bearer revoked",
        "Bearer fresh",
    ]
    assert result.recipients["to@example.com"].status == "sent"


async def test_a_second_401_is_a_credentials_error(
    transport: msgraph.MsgraphTransport, respx_mock: respx.MockRouter, token: respx.Route
) -> None:
    send = respx_mock.post(SEND_URL).mock(
        return_value=graph_error(401, "InvalidAuthenticationToken", "Access token is empty.")
    )

    with pytest.raises(CredentialsError) as caught:
        await transport.send(outgoing())

    assert send.call_count == 2
    assert token.call_count == 2
    assert caught.value.reply == "InvalidAuthenticationToken: Access token is empty."
    assert "clientSecret" in str(caught.value)


async def test_a_refused_secret_fails_at_the_token(
    transport: msgraph.MsgraphTransport, respx_mock: respx.MockRouter
) -> None:
    token = respx_mock.post(TOKEN_URL).respond(
        401,
        json={
            "error": "invalid_client",
            "error_description": "AADSTS7000215: Invalid client secret provided.",
            "error_codes": [7000215],
        },
    )
    send = respx_mock.post(SEND_URL)

    with pytest.raises(CredentialsError) as caught:
        await transport.send(outgoing())

    assert token.call_count == 1
    assert not send.called
    assert caught.value.reply == "invalid_client: AADSTS7000215: Invalid client secret provided."
    assert "Microsoft Entra ID" in str(caught.value)
    assert "clientSecret" in str(caught.value)
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (graph_error(400, "ErrorMimeContentInvalidBase64String", "Invalid base64"), PermanentError),
        (graph_error(400, "ErrorInvalidRecipients", "bad recipients"), PermanentError),
        (graph_error(403, "ErrorAccessDenied", "Access is denied."), CredentialsError),
        (graph_error(413, "RequestEntityTooLarge", "too large"), PermanentError),
        (graph_error(503, "serviceNotAvailable", "later"), TemporaryError),
        (graph_error(504, "serviceNotAvailable", "later"), TemporaryError),
    ],
)
async def test_errors_are_classified(
    transport: msgraph.MsgraphTransport,
    respx_mock: respx.MockRouter,
    token: respx.Route,
    response: httpx.Response,
    expected: type[TransportError],
) -> None:
    respx_mock.post(SEND_URL).mock(return_value=response)

    with pytest.raises(expected) as caught:
        await transport.send(outgoing())

    assert type(caught.value) is expected


async def test_throttling_honours_retry_after(
    transport: msgraph.MsgraphTransport, respx_mock: respx.MockRouter, token: respx.Route
) -> None:
    respx_mock.post(SEND_URL).mock(
        return_value=graph_error(
            429,
            "ApplicationThrottled",
            "Application is over its MailboxConcurrency limit.",
            **{"Retry-After": "7"},
        )
    )

    with pytest.raises(TemporaryError) as caught:
        await transport.send(outgoing())

    assert caught.value.retry_after == 7.0
    assert caught.value.before_data


async def test_send_as_denied_says_what_to_fix(
    transport: msgraph.MsgraphTransport, respx_mock: respx.MockRouter, token: respx.Route
) -> None:
    respx_mock.post(SEND_URL).mock(
        return_value=graph_error(403, "ErrorSendAsDenied", "The user account is not allowed")
    )

    with pytest.raises(CredentialsError, match="send from userId's address"):
        await transport.send(outgoing())


async def test_an_unknown_mailbox_blames_user_id(
    transport: msgraph.MsgraphTransport, respx_mock: respx.MockRouter, token: respx.Route
) -> None:
    respx_mock.post(SEND_URL).mock(
        return_value=graph_error(404, "ErrorInvalidUser", "The requested user is invalid.")
    )

    with pytest.raises(ConfigError) as caught:
        await transport.send(outgoing())

    assert caught.value.field == "userId"


async def test_a_message_over_the_size_cap_is_refused_before_any_request(
    transport: msgraph.MsgraphTransport, respx_mock: respx.MockRouter
) -> None:
    token = respx_mock.post(TOKEN_URL)
    send = respx_mock.post(SEND_URL)
    big = Attachment("big.bin", "application/octet-stream", bytes(3 * 1024 * 1024))

    with pytest.raises(PermanentError) as caught:
        await transport.send(outgoing(attachments=(big,)))

    assert caught.value.code == "EMESSAGE"
    assert caught.value.before_data
    assert not token.called
    assert not send.called


async def test_an_envelope_unlike_the_headers_is_refused(
    transport: msgraph.MsgraphTransport, respx_mock: respx.MockRouter
) -> None:
    """A retry to some recipients only: Graph would send to every header recipient again."""
    token = respx_mock.post(TOKEN_URL)
    message = outgoing(
        to=(Address("done@example.com"), Address("retry@example.com")),
        recipients=("retry@example.com",),
    )

    with pytest.raises(UnsupportedFeature, match=r"only in the headers: done@example\.com"):
        await transport.send(message)

    assert not token.called


async def test_verify_reads_the_granted_roles(
    transport: msgraph.MsgraphTransport, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(TOKEN_URL).mock(
        return_value=token_answer(jwt({"roles": ["Mail.Send", "User.Read.All"]}))
    )

    report = await transport.verify()

    assert report.ok
    assert [step.name for step in report.steps] == ["token", "permission"]
    assert report.unchecked == [
        "whether the mailbox sender@example.com exists and the app may send as it"
    ]


async def test_verify_fails_without_mail_send(
    transport: msgraph.MsgraphTransport, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(TOKEN_URL).mock(return_value=token_answer(jwt({"roles": ["User.Read.All"]})))

    report = await transport.verify()

    assert [step.ok for step in report.steps] == [True, False]
    assert report.error_code == "EAUTH"
    assert "Mail.Send" in report.steps[1].detail


async def test_verify_with_an_opaque_token_leaves_the_permission_unchecked(
    transport: msgraph.MsgraphTransport, token: respx.Route
) -> None:
    report = await transport.verify()

    assert report.ok
    assert [step.name for step in report.steps] == ["token"]
    assert "whether the app has the Mail.Send application permission" in report.unchecked


async def test_verify_reports_a_refused_secret(
    transport: msgraph.MsgraphTransport, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(TOKEN_URL).respond(
        400, json={"error": "invalid_client", "error_description": "AADSTS7000222: expired"}
    )

    report = await transport.verify()

    assert not report.ok
    assert report.error_code == "EAUTH"
    assert "AADSTS7000222" in report.steps[0].detail


async def test_a_busy_token_endpoint_is_temporary(
    transport: msgraph.MsgraphTransport, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(TOKEN_URL).respond(
        400, json={"error": "temporarily_unavailable", "error_description": "AADSTS50196: busy"}
    )

    with pytest.raises(TemporaryError) as caught:
        await transport.send(outgoing())

    assert type(caught.value) is TemporaryError
    assert caught.value.before_data


async def test_a_numeric_string_lifetime_is_honoured(
    transport: msgraph.MsgraphTransport, respx_mock: respx.MockRouter
) -> None:
    token = respx_mock.post(TOKEN_URL).respond(
        200, json={"token_type": "Bearer", "expires_in": "3599", "access_token": "t"}
    )
    respx_mock.post(SEND_URL).respond(202)

    await transport.send(outgoing())
    await transport.send(outgoing())

    assert token.call_count == 1
