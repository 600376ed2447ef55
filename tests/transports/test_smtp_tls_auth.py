"""The SMTP transport's TLS (STARTTLS, implicit, certificates) and AUTH (PLAIN, LOGIN, CRAM-MD5,
XOAUTH2), against a real aiosmtpd server."""

from __future__ import annotations

import gc
import ssl
import tempfile
from typing import Any

import httpx
import pytest
import respx

from app.transports import smtp
from app.transports.base import TransportContext
from app.transports.errors import (
    ConfigError,
    ConfigurationError,
    CredentialsError,
    TransportError,
)
from app.transports.smtp import SmtpTransport
from tests.smtpd import SmtpServer, make_message

pytestmark = pytest.mark.anyio


USER, PASSWORD = "alice@example.com", "Pa55-w0rd!"
TOKEN_URL = "https://login.example.test/oauth2/token"
OAUTH2 = {"tokenUrl": TOKEN_URL, "clientId": "app", "clientSecret": "shh", "refreshToken": "r1"}
CONTENT_VERBS = {"AUTH", "MAIL", "RCPT", "DATA"}


def build(server: SmtpServer, context: TransportContext, **settings: Any) -> SmtpTransport:
    return smtp.create("test", server.config(**settings), context)


async def send_failing(transport: SmtpTransport) -> TransportError:
    with pytest.raises(TransportError) as caught:
        await transport.send(make_message())
    return caught.value


def token(value: str) -> httpx.Response:
    return httpx.Response(200, json={"access_token": value, "expires_in": 3600})


@pytest.mark.parametrize(
    ("server_tls", "mode", "expected"),
    [
        ("starttls", {}, "TLSv1.3"),
        ("starttls", {"requireTLS": True}, "TLSv1.3"),
        ("starttls", {"ignoreTLS": True}, None),
        ("none", {}, None),
        ("none", {"ignoreTLS": True}, None),
    ],
)
async def test_starttls_modes(smtp_server_factory, smtp_context, server_tls, mode, expected):
    server = smtp_server_factory(tls=server_tls)

    result = await build(server, smtp_context, caCertificates=server.ca_pem, **mode).send(
        make_message()
    )

    assert result.tls_version == expected
    assert server.transactions[0].tls_version == expected
    assert ("STARTTLS" in server.sessions[0].verbs) is (expected is not None)


async def test_require_tls_without_starttls_fails_before_auth_and_mail(
    smtp_server_factory, smtp_context
):
    server = smtp_server_factory(users={USER: PASSWORD})
    transport = build(server, smtp_context, requireTLS=True, user=USER, pass_=PASSWORD)

    err = await send_failing(transport)

    assert type(err) is ConfigurationError  # retried, and shown on the profile's health
    assert (err.code, err.before_data, err.field) == ("ETLS", True, "requireTLS")
    assert not CONTENT_VERBS & set(server.sessions[0].verbs)


async def test_security_modes_map_onto_the_flags(smtp_server_factory, smtp_context):
    server = smtp_server_factory()
    config = server.config(security="starttls_required")

    assert (config.secure, config.ignore_tls, config.require_tls) == (False, False, True)
    err = await send_failing(smtp.create("test", config, smtp_context))
    assert err.code == "ETLS"


async def test_refused_starttls_is_an_error_not_a_plaintext_fallback(
    smtp_server_factory, smtp_context
):
    server = smtp_server_factory(
        tls="starttls", replies={"STARTTLS": "454 4.7.0 TLS not available"}
    )

    err = await send_failing(build(server, smtp_context, caCertificates=server.ca_pem))

    assert (err.code, err.reply_code) == ("ETLS", 454)
    assert not CONTENT_VERBS & set(server.sessions[0].verbs)


async def test_implicit_tls(smtp_server_factory, smtp_context):
    server = smtp_server_factory(tls="implicit")

    result = await build(server, smtp_context, secure=True, caCertificates=server.ca_pem).send(
        make_message()
    )

    assert result.tls_version == "TLSv1.3"
    assert server.sessions[0].tls_version == "TLSv1.3"
    assert "STARTTLS" not in server.sessions[0].verbs


def open_sockets() -> list[object]:
    """The client's socket transports that are not closing: uvloop's, as the tests run on it
    (the test servers run on asyncio, in threads of their own)."""
    return [
        o for o in gc.get_objects() if type(o).__name__ == "TCPTransport" and not o.is_closing()
    ]


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
async def test_a_send_leaves_no_socket_open(smtp_server_factory, smtp_context, tls):
    """Without a pool, the connection is closed when the send ends, TLS or not, without waiting
    for the server's close_notify or the garbage collector."""
    server = smtp_server_factory(tls=tls)
    before = open_sockets()

    result = await build(
        server, smtp_context, caCertificates=server.ca_pem, secure=tls == "implicit"
    ).send(make_message())

    assert result.recipients["rcpt@example.com"].status == "sent"
    assert open_sockets() == before


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
async def test_untrusted_certificate_then_trusted_with_ca_certificates(
    smtp_server_factory, smtp_context, tls
):
    server = smtp_server_factory(tls=tls, users={USER: PASSWORD})
    settings = {"secure": tls == "implicit", "user": USER, "pass_": PASSWORD}

    err = await send_failing(build(server, smtp_context, **settings))

    assert type(err) is ConfigurationError  # retried, and shown on the profile's health
    assert (err.code, err.before_data, err.field) == ("ETLS", True, "caCertificates")
    assert "certificate verify failed" in err.message
    assert not CONTENT_VERBS & {verb for s in server.sessions for verb in s.verbs}

    result = await build(server, smtp_context, caCertificates=server.ca_pem, **settings).send(
        make_message()
    )

    assert result.recipients["rcpt@example.com"].status == "sent"
    assert server.transactions[0].authenticated_as == USER


async def test_certificate_for_another_host_is_refused(smtp_server_factory, smtp_context, smtp_ca):
    server = smtp_server_factory(tls="starttls", certificate=smtp_ca.issue_cert("other.example"))

    err = await send_failing(build(server, smtp_context, caCertificates=server.ca_pem))

    assert err.code == "ETLS"
    assert "mismatch" in err.message


async def test_tls_older_than_1_2_is_refused(smtp_server_factory, smtp_context):
    server = smtp_server_factory(tls="starttls", max_tls_version=ssl.TLSVersion.TLSv1_1)

    err = await send_failing(build(server, smtp_context, caCertificates=server.ca_pem))

    assert err.code == "ETLS"
    assert server.transactions == []


async def test_client_certificate(
    smtp_server_factory, smtp_context, smtp_ca, tmp_path, monkeypatch
):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    server = smtp_server_factory(tls="implicit", require_client_certificate=True)
    client = smtp_ca.issue_cert("client.example")
    settings = {"secure": True, "caCertificates": server.ca_pem}

    err = await send_failing(build(server, smtp_context, **settings))
    assert err.code in {"ETLS", "ECONNECTION"}

    result = await build(
        server,
        smtp_context,
        clientCertificate=client.cert_chain_pems[0].bytes().decode(),
        clientKey=client.private_key_pem.bytes().decode(),
        **settings,
    ).send(make_message())

    assert result.tls_version == "TLSv1.3"
    [session] = [s for s in server.sessions if s.transactions]
    assert session.client_certificate is not None
    assert ("DNS", "client.example") in session.client_certificate["subjectAltName"]
    assert list(tmp_path.iterdir()) == []


async def test_a_client_key_that_does_not_match_is_a_config_error(
    smtp_server_factory, smtp_context, smtp_ca
):
    server = smtp_server_factory(tls="implicit", require_client_certificate=True)
    certificate = smtp_ca.issue_cert("client.example").cert_chain_pems[0].bytes().decode()
    other_key = smtp_ca.issue_cert("other.example").private_key_pem.bytes().decode()
    transport = build(
        server,
        smtp_context,
        secure=True,
        caCertificates=server.ca_pem,
        clientCertificate=certificate,
        clientKey=other_key,
    )

    with pytest.raises(ConfigError) as caught:
        await transport.send(make_message())

    assert caught.value.field == "clientKey"
    assert server.transactions == []


@pytest.mark.parametrize("method", ["plain", "login", "cram-md5"])
async def test_auth_methods(smtp_server_factory, smtp_context, method):
    server = smtp_server_factory(
        auth_mechanisms=("PLAIN", "LOGIN", "CRAM-MD5"), users={USER: PASSWORD}
    )
    transport = build(server, smtp_context, user=USER, pass_=PASSWORD, authMethod=method)

    await transport.send(make_message())

    assert server.transactions[0].authenticated_as == USER
    [auth] = [c for c in server.sessions[0].commands if c.startswith("AUTH")]
    assert auth.split()[1] == method.upper()


@pytest.mark.parametrize("method", ["plain", "login", "cram-md5"])
async def test_wrong_password(smtp_server_factory, smtp_context, method):
    server = smtp_server_factory(
        auth_mechanisms=("PLAIN", "LOGIN", "CRAM-MD5"), users={USER: PASSWORD}
    )
    transport = build(server, smtp_context, user=USER, pass_="wrong", authMethod=method)

    err = await send_failing(transport)

    assert type(err) is CredentialsError
    assert (err.code, err.reply_code, err.before_data) == ("EAUTH", 535, True)
    assert "MAIL" not in server.sessions[0].verbs


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (("CRAM-MD5", "LOGIN", "PLAIN"), "PLAIN"),
        (("CRAM-MD5", "LOGIN"), "LOGIN"),
        (("CRAM-MD5",), "CRAM-MD5"),
    ],
)
async def test_auth_method_choice_follows_nodemailer(
    smtp_server_factory, smtp_context, offered, chosen
):
    server = smtp_server_factory(auth_mechanisms=offered, users={USER: PASSWORD})

    await build(server, smtp_context, user=USER, pass_=PASSWORD).send(make_message())

    [auth] = [c for c in server.sessions[0].commands if c.startswith("AUTH")]
    assert auth.split()[1] == chosen


async def test_no_auth_without_a_user(smtp_server_factory, smtp_context):
    server = smtp_server_factory(users={USER: PASSWORD})

    await build(server, smtp_context).send(make_message())

    assert "AUTH" not in server.sessions[0].verbs


async def test_auth_against_a_server_offering_none(smtp_server_factory, smtp_context):
    server = smtp_server_factory(auth_mechanisms=())

    err = await send_failing(build(server, smtp_context, user=USER, pass_=PASSWORD))

    assert type(err) is CredentialsError
    assert err.code == "EAUTH"


async def test_xoauth2(smtp_server_factory, smtp_context):
    server = smtp_server_factory(auth_mechanisms=("XOAUTH2",), oauth_tokens={USER: "token-1"})
    transport = build(server, smtp_context, user=USER, oauth2=OAUTH2)

    with respx.mock(assert_all_called=True) as router:
        route = router.post(TOKEN_URL).mock(return_value=token("token-1"))
        await transport.send(make_message())
        await transport.send(make_message())

    assert route.call_count == 1
    form = httpx.QueryParams(route.calls.last.request.content.decode())
    assert (form["grant_type"], form["refresh_token"]) == ("refresh_token", "r1")
    assert [t.authenticated_as for t in server.transactions] == [USER, USER]


async def test_xoauth2_retries_once_with_a_fresh_token(smtp_server_factory, smtp_context):
    server = smtp_server_factory(auth_mechanisms=("XOAUTH2",), oauth_tokens={USER: "token-2"})
    oauth2 = {**OAUTH2, "user": USER}
    transport = build(server, smtp_context, authMethod="xoauth2", oauth2=oauth2)

    with respx.mock(assert_all_called=True) as router:
        route = router.post(TOKEN_URL).mock(side_effect=[token("stale"), token("token-2")])
        await transport.send(make_message())

    assert route.call_count == 2
    assert server.sessions[0].verbs.count("AUTH") == 2
    assert server.transactions[0].authenticated_as == USER


async def test_xoauth2_refused_twice(smtp_server_factory, smtp_context):
    server = smtp_server_factory(auth_mechanisms=("XOAUTH2",), oauth_tokens={USER: "good"})
    transport = build(server, smtp_context, user=USER, oauth2=OAUTH2)

    with respx.mock(assert_all_called=True) as router:
        route = router.post(TOKEN_URL).mock(side_effect=[token("bad-1"), token("bad-2")])
        err = await send_failing(transport)

    assert route.call_count == 2
    assert type(err) is CredentialsError
    assert (err.code, err.reply_code) == ("EAUTH", 535)


async def test_token_endpoint_refusing_the_credentials(smtp_server_factory, smtp_context):
    server = smtp_server_factory(auth_mechanisms=("XOAUTH2",))
    transport = build(server, smtp_context, user=USER, oauth2=OAUTH2)

    with respx.mock(assert_all_called=True) as router:
        router.post(TOKEN_URL).mock(return_value=httpx.Response(400, json={"error": "bad"}))
        err = await send_failing(transport)

    assert type(err) is CredentialsError
    assert "AUTH" not in server.sessions[0].verbs
