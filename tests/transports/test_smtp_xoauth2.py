"""SMTP XOAUTH2 with Office 365 app-only authentication: the client-credentials grant (no refresh
token, scope https://outlook.office365.com/.default, provider-apis.md §5.1 and §6.1), against a
real aiosmtpd server that checks the SASL string, with the token endpoint mocked by respx."""

from __future__ import annotations

import base64
import logging
from typing import Any

import httpx
import pytest
import respx

from app.transports import smtp
from app.transports.base import TransportContext
from app.transports.errors import CredentialsError, TransportError
from app.transports.smtp import REDACTED, SmtpTransport
from tests.smtpd import SmtpServer, StartServer, make_message

pytestmark = pytest.mark.anyio

MAILBOX = "reports@contoso.example"
TENANT = "contoso.onmicrosoft.com"
TOKEN_URL = f"https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token"
CLIENT_ID = "6731de76-14a6-49ae-97bc-6eba6914391e"
CLIENT_SECRET = "Xo~auth2.ClientSecret&Value=1"
SCOPE = "https://outlook.office365.com/.default"
APP_ONLY = {
    "tokenUrl": TOKEN_URL,
    "clientId": CLIENT_ID,
    "clientSecret": CLIENT_SECRET,
    "scope": SCOPE,
}
"""oauth2 settings without a refreshToken: the client-credentials grant."""


def token(value: str, expires_in: int = 3599) -> httpx.Response:
    """Microsoft Entra ID's answer to a client-credentials request (§5.1)."""
    return httpx.Response(
        200,
        json={
            "token_type": "Bearer",
            "expires_in": expires_in,
            "ext_expires_in": expires_in,
            "access_token": value,
        },
    )


def office365(factory: StartServer, accepted: str) -> SmtpServer:
    """Like smtp.office365.com:587: STARTTLS, AUTH only after TLS, only XOAUTH2 offered, and
    only the `accepted` access token taken for MAILBOX."""
    return factory(
        tls="starttls",
        auth_require_tls=True,
        auth_mechanisms=("XOAUTH2",),
        oauth_tokens={MAILBOX: accepted},
    )


def build(server: SmtpServer, context: TransportContext, **settings: Any) -> SmtpTransport:
    config = server.config(
        requireTLS=True,
        caCertificates=server.ca_pem,
        user=MAILBOX,
        authMethod="xoauth2",
        oauth2=APP_ONLY,
        **settings,
    )
    return smtp.create("o365", config, context)


def sasl(server: SmtpServer) -> list[str]:
    """The decoded initial responses of every AUTH XOAUTH2 the server received, in order."""
    found = []
    for session in server.sessions:
        for command in session.commands:
            verb, _, rest = command.partition(" ")
            if verb == "AUTH":
                mechanism, _, initial = rest.partition(" ")
                assert mechanism == "XOAUTH2"
                found.append(base64.b64decode(initial, validate=True).decode())
    return found


def bearer(value: str) -> str:
    """§6.1: user=<user>^Aauth=Bearer <token>^A^A."""
    return f"user={MAILBOX}\x01auth=Bearer {value}\x01\x01"


def form(route: respx.Route, index: int = -1) -> dict[str, list[str]]:
    request = route.calls[index].request
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    params = httpx.QueryParams(request.content.decode())
    return {key: params.get_list(key) for key in params}


CLIENT_CREDENTIALS = {
    "grant_type": ["client_credentials"],
    "client_id": [CLIENT_ID],
    "client_secret": [CLIENT_SECRET],
    "scope": [SCOPE],
}


async def test_app_only_token_is_fetched_with_client_credentials_and_the_mail_arrives(
    smtp_server_factory: StartServer,
    smtp_context: TransportContext,
    respx_mock: respx.MockRouter,
) -> None:
    server = office365(smtp_server_factory, "eyJ0eXAi.app-only.token")
    route = respx_mock.post(TOKEN_URL).mock(return_value=token("eyJ0eXAi.app-only.token"))
    transport = build(server, smtp_context)

    result = await transport.send(make_message(sender=MAILBOX, subject="Quarterly report"))

    assert route.call_count == 1
    assert form(route) == CLIENT_CREDENTIALS, "no refresh_token, the client-credentials grant"
    assert sasl(server) == [bearer("eyJ0eXAi.app-only.token")]
    [session] = server.sessions
    assert session.verbs.index("STARTTLS") < session.verbs.index("AUTH")
    [transaction] = server.transactions
    assert transaction.authenticated_as == MAILBOX
    assert transaction.tls_version == "TLSv1.3"
    assert transaction.mail_from == MAILBOX
    assert transaction.rcpt_tos == ["rcpt@example.com"]
    assert transaction.message["Subject"] == "Quarterly report"
    assert result.recipients["rcpt@example.com"].status == "sent"
    assert result.reply_code == 250


async def test_oauth2_user_is_the_mailbox_in_the_sasl_string(
    smtp_server_factory: StartServer,
    smtp_context: TransportContext,
    respx_mock: respx.MockRouter,
) -> None:
    server = office365(smtp_server_factory, "t-1")
    respx_mock.post(TOKEN_URL).mock(return_value=token("t-1"))
    config = server.config(
        requireTLS=True,
        caCertificates=server.ca_pem,
        authMethod="xoauth2",
        oauth2={**APP_ONLY, "user": MAILBOX},
    )

    await smtp.create("o365", config, smtp_context).send(make_message())

    assert sasl(server) == [bearer("t-1")]
    assert server.transactions[0].authenticated_as == MAILBOX


async def test_the_token_is_cached_across_sends(
    smtp_server_factory: StartServer,
    smtp_context: TransportContext,
    respx_mock: respx.MockRouter,
) -> None:
    server = office365(smtp_server_factory, "cached-token")
    route = respx_mock.post(TOKEN_URL).mock(return_value=token("cached-token"))
    transport = build(server, smtp_context)

    await transport.send(make_message(to=["ann@example.com"]))
    await transport.send(make_message(to=["bob@example.com"]))

    assert route.call_count == 1
    assert len(server.sessions) == 2, "one connection per send without pool"
    assert sasl(server) == [bearer("cached-token")] * 2
    assert [t.rcpt_tos for t in server.transactions] == [["ann@example.com"], ["bob@example.com"]]
    assert {t.authenticated_as for t in server.transactions} == {MAILBOX}


async def test_a_token_near_its_expiry_is_fetched_again(
    smtp_server_factory: StartServer,
    smtp_context: TransportContext,
    respx_mock: respx.MockRouter,
) -> None:
    # A token is renewed min(5 min, half its life) before it expires: one that lives 0 s is
    # stale at once, so the next send fetches another instead of trying the old one.
    server = office365(smtp_server_factory, "short-1")
    route = respx_mock.post(TOKEN_URL).mock(
        side_effect=[token("short-1", expires_in=0), token("short-2")]
    )
    transport = build(server, smtp_context)

    await transport.send(make_message())
    server.oauth_tokens[MAILBOX] = "short-2"
    await transport.send(make_message())

    assert route.call_count == 2
    assert sasl(server) == [bearer("short-1"), bearer("short-2")]


async def test_a_refused_bearer_fetches_a_new_token_once_and_caches_it(
    smtp_server_factory: StartServer,
    smtp_context: TransportContext,
    respx_mock: respx.MockRouter,
) -> None:
    server = office365(smtp_server_factory, "fresh")
    route = respx_mock.post(TOKEN_URL).mock(side_effect=[token("revoked"), token("fresh")])
    transport = build(server, smtp_context)

    await transport.send(make_message(to=["ann@example.com"]))
    await transport.send(make_message(to=["bob@example.com"]))

    assert route.call_count == 2, "the refused token was dropped, the new one kept"
    assert form(route, 0) == form(route, 1) == CLIENT_CREDENTIALS
    assert sasl(server) == [bearer("revoked"), bearer("fresh"), bearer("fresh")]
    first = server.sessions[0]
    assert first.verbs.count("AUTH") == 2, "retried on the same connection"
    assert [t.rcpt_tos for t in server.transactions] == [["ann@example.com"], ["bob@example.com"]]


async def test_a_bearer_refused_twice_is_a_credentials_error_before_mail(
    smtp_server_factory: StartServer,
    smtp_context: TransportContext,
    respx_mock: respx.MockRouter,
) -> None:
    server = office365(smtp_server_factory, "the-one-it-wants")
    route = respx_mock.post(TOKEN_URL).mock(side_effect=[token("no-1"), token("no-2")])
    transport = build(server, smtp_context)

    with pytest.raises(TransportError) as caught:
        await transport.send(make_message())

    err = caught.value
    assert type(err) is CredentialsError, "refused credentials are retried later (DESIGN)"
    assert (err.code, err.reply_code, err.before_data) == ("EAUTH", 535, True)
    assert "5.7.8" in (err.reply or "")
    assert route.call_count == 2, "one refetch, no loop"
    assert sasl(server) == [bearer("no-1"), bearer("no-2")]
    assert "MAIL" not in server.sessions[0].verbs
    assert server.transactions == []


async def test_a_refused_client_secret_fails_at_the_token_endpoint(
    smtp_server_factory: StartServer,
    smtp_context: TransportContext,
    respx_mock: respx.MockRouter,
) -> None:
    server = office365(smtp_server_factory, "never")
    respx_mock.post(TOKEN_URL).respond(
        401,
        json={
            "error": "invalid_client",
            "error_description": "AADSTS7000215: Invalid client secret provided.",
            "error_codes": [7000215],
        },
    )
    transport = build(server, smtp_context)

    with pytest.raises(CredentialsError) as caught:
        await transport.send(make_message())

    assert caught.value.code == "EAUTH"
    assert caught.value.reply_code == 401
    assert "AADSTS7000215" in (caught.value.reply or "")
    assert "oauth2.clientSecret" in str(caught.value), "the error names the setting to fix"
    assert CLIENT_SECRET not in str(caught.value)
    assert "AUTH" not in server.sessions[0].verbs
    assert server.transactions == []


async def test_the_debug_transcript_hides_tokens_and_the_client_secret(
    smtp_server_factory: StartServer,
    smtp_context: TransportContext,
    respx_mock: respx.MockRouter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server = office365(smtp_server_factory, "fresh-secret-token")
    respx_mock.post(TOKEN_URL).mock(
        side_effect=[token("revoked-secret-token"), token("fresh-secret-token")]
    )
    transport = build(server, smtp_context, debug=True, logger=True)

    await transport.send(make_message())

    assert f"AUTH XOAUTH2 {REDACTED}" in caplog.text
    assert server.transactions, "the transcript covers a real delivery"
    for value in ("revoked-secret-token", "fresh-secret-token", CLIENT_SECRET):
        assert value not in caplog.text
    for line in sasl(server):
        assert base64.b64encode(line.encode()).decode() not in caplog.text


async def test_through_the_api_the_stored_secret_reaches_the_token_endpoint(
    admin: httpx.AsyncClient,
    smtp_server_factory: StartServer,
    respx_mock: respx.MockRouter,
) -> None:
    """A saved xoauth2 profile: the client secret is encrypted at rest and decrypted for the
    grant; verify authenticates without sending, test delivers one mail."""
    server = office365(smtp_server_factory, "api-token")
    route = respx_mock.post(TOKEN_URL).mock(return_value=token("api-token"))
    profile = {
        "name": "o365",
        "type": "smtp",
        "senderEmail": MAILBOX,
        "settings": {
            "host": server.host,
            "port": server.port,
            "requireTLS": True,
            "caCertificates": server.ca_pem,
            "user": MAILBOX,
            "authMethod": "xoauth2",
            "oauth2": APP_ONLY,
        },
    }
    created = await admin.post("/api/v1/servers", json=profile)
    assert created.status_code == 201, created.text
    assert CLIENT_SECRET not in created.text

    verified = (await admin.post("/api/v1/servers/o365/verify", json={})).json()
    tested = (await admin.post("/api/v1/servers/o365/test", json={})).json()

    assert verified["ok"] is True, verified
    auth = next(step for step in verified["steps"] if step["name"] == "auth")
    assert auth["detail"] == f"{MAILBOX} with XOAUTH2"
    assert tested["ok"] is True, tested
    assert form(route, 0) == CLIENT_CREDENTIALS
    assert sasl(server)[0] == bearer("api-token")
    [transaction] = server.transactions
    assert transaction.rcpt_tos == [MAILBOX]
    assert transaction.authenticated_as == MAILBOX
    assert [("MAIL" in s.verbs) for s in server.sessions] == [False, True]
