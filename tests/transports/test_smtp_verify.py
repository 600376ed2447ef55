"""The SMTP transport's verify report, its logging (events, redacted transcript) and proxies."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import socket
from typing import Any, Literal

import httpx
import pytest
import respx

from app.egress import EgressPolicy, parse_networks
from app.transports import smtp
from app.transports.base import TransportContext
from app.transports.errors import ConfigError
from app.transports.smtp import REDACTED, SmtpConfig, SmtpTransport
from tests.smtpd import SmtpServer, make_message
from tests.transports._loopback import LoopbackServer, pipe

pytestmark = pytest.mark.anyio


USER, PASSWORD = "alice@example.com", "Pa55-w0rd!secret"
TOKEN_URL = "https://login.example.test/oauth2/token"


def build(server: SmtpServer, context: TransportContext, **settings: Any) -> SmtpTransport:
    return smtp.create("test", server.config(**settings), context)


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_verify_a_starttls_server_with_auth(smtp_server_factory, smtp_context):
    server = smtp_server_factory(tls="starttls", users={USER: PASSWORD})
    transport = build(server, smtp_context, user=USER, pass_=PASSWORD, caCertificates=server.ca_pem)

    report = await transport.verify()

    assert report.ok
    assert report.error_code is None
    assert [s.name for s in report.steps] == [
        "dns",
        "connect",
        "greeting",
        "ehlo",
        "tls",
        "ehlo",
        "auth",
        "quit",
    ]
    steps = {s.name: s for s in report.steps}
    assert steps["dns"].data["addresses"] == ["127.0.0.1"]
    assert steps["greeting"].detail.startswith("220 smtp.test")
    assert "STARTTLS" in str(report.steps[3].data["capabilities"])
    assert report.steps[5].data["capabilities"] == [
        "SIZE 33554432",
        "8BITMIME",
        "SMTPUTF8",
        "AUTH LOGIN PLAIN",
        "PIPELINING",
        "HELP",
    ]
    tls = steps["tls"].data
    assert tls["protocol"] == "TLSv1.3"
    assert tls["cipher"]
    assert "trustme" in str(tls["subject"])
    assert "Testing CA" in str(tls["issuer"])
    assert tls["notAfter"]
    assert steps["auth"].detail == f"{USER} with PLAIN"
    assert steps["quit"].detail.startswith("221")
    assert all(s.duration_ms >= 0 for s in report.steps)
    assert report.unchecked
    assert server.sessions[0].verbs == ["EHLO", "STARTTLS", "EHLO", "AUTH", "QUIT"]
    assert server.transactions == []


async def test_verify_implicit_tls(smtp_server_factory, smtp_context):
    server = smtp_server_factory(tls="implicit")

    report = await build(server, smtp_context, secure=True, caCertificates=server.ca_pem).verify()

    assert report.ok
    names = [s.name for s in report.steps]
    assert names == ["dns", "connect", "greeting", "tls", "ehlo", "quit"]
    assert report.steps[3].data["protocol"] == "TLSv1.3"


@pytest.mark.parametrize(
    ("settings", "last", "code"),
    [
        ({}, "tls", "ETLS"),
        ({"trusted": True, "user": USER, "pass_": "wrong"}, "auth", "EAUTH"),
        ({"trusted": True, "greeting_delay": 5.0, "greetingTimeout": 300}, "greeting", "ETIMEDOUT"),
    ],
)
async def test_verify_stops_at_the_failing_step(
    smtp_server_factory, smtp_context, settings, last, code
):
    settings = dict(settings)
    server = smtp_server_factory(
        tls="starttls", users={USER: PASSWORD}, greeting_delay=settings.pop("greeting_delay", 0.0)
    )
    if settings.pop("trusted", False):
        settings["caCertificates"] = server.ca_pem

    report = await build(server, smtp_context, **settings).verify()

    assert not report.ok
    assert report.error_code == code
    assert report.steps[-1].name == last
    assert not report.steps[-1].ok
    assert report.steps[-1].detail.startswith(code)
    assert all(s.ok for s in report.steps[:-1])
    assert server.transactions == []


async def test_verify_a_closed_port(smtp_context):
    config = SmtpConfig(host="127.0.0.1", port=free_port())

    report = await smtp.create("test", config, smtp_context).verify()

    assert [(s.name, s.ok) for s in report.steps] == [("dns", True), ("connect", False)]
    assert report.error_code == "ECONNECTION"


@pytest.mark.parametrize(
    ("method", "auth_lines"),
    [
        ("plain", [f"AUTH PLAIN {REDACTED}"]),
        ("login", [f"AUTH LOGIN {REDACTED}", REDACTED]),
        ("cram-md5", ["AUTH CRAM-MD5", REDACTED]),
    ],
)
async def test_debug_transcript_hides_credentials(
    smtp_server_factory, smtp_context, caplog, method, auth_lines
):
    server = smtp_server_factory(
        auth_mechanisms=("PLAIN", "LOGIN", "CRAM-MD5"), users={USER: PASSWORD}
    )
    transport = build(
        server, smtp_context, user=USER, pass_=PASSWORD, authMethod=method, debug=True
    )
    caplog.set_level(logging.DEBUG)

    await transport.send(make_message())

    everything = "\n".join(record.getMessage() for record in caplog.records)
    for secret in (PASSWORD, b64(PASSWORD), b64(f"\0{USER}\0{PASSWORD}"), b64(USER)):
        assert secret not in everything
    ours = [r for r in caplog.records if r.name == "tests.smtp"]
    assert {r.levelno for r in ours} == {logging.DEBUG}
    sent = [r.getMessage().split(" C: ", 1)[1] for r in ours if " C: " in r.getMessage()]
    assert [line for line in sent if line.startswith("AUTH") or line == REDACTED] == auth_lines
    assert "MAIL FROM:<sender@example.com> SIZE=" in "\n".join(sent)
    assert any(" S: 250 2.0.0 OK queued" in r.getMessage() for r in ours)


async def test_debug_transcript_hides_the_xoauth2_token(smtp_server_factory, smtp_context, caplog):
    access_token = "ya29.very-secret-token"
    server = smtp_server_factory(auth_mechanisms=("XOAUTH2",), oauth_tokens={USER: access_token})
    oauth2 = {"tokenUrl": TOKEN_URL, "clientId": "app", "clientSecret": "shh"}
    transport = build(server, smtp_context, user=USER, oauth2=oauth2, debug=True)
    caplog.set_level(logging.DEBUG)

    with respx.mock(assert_all_called=True) as router:
        router.post(TOKEN_URL).mock(
            return_value=httpx.Response(200, json={"access_token": access_token})
        )
        await transport.send(make_message())

    text = "\n".join(record.getMessage() for record in caplog.records)
    assert access_token not in text
    assert b64(f"user={USER}\x01auth=Bearer {access_token}\x01\x01") not in text
    assert f"AUTH XOAUTH2 {REDACTED}" in text


async def test_quiet_unless_logger_or_debug(smtp_server, smtp_context, caplog):
    caplog.set_level(logging.DEBUG, logger="tests.smtp")

    await build(smtp_server, smtp_context).send(make_message())

    assert [r for r in caplog.records if r.name == "tests.smtp"] == []


async def test_logger_logs_connection_events(smtp_server_factory, smtp_context, caplog):
    server = smtp_server_factory(tls="starttls", users={USER: PASSWORD})
    transport = build(
        server,
        smtp_context,
        logger=True,
        user=USER,
        pass_=PASSWORD,
        caCertificates=server.ca_pem,
    )
    caplog.set_level(logging.DEBUG, logger="tests.smtp")

    await transport.send(make_message(message_id="<m1@example.com>"))

    events = [r.getMessage() for r in caplog.records if r.name == "tests.smtp"]
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "tests.smtp")
    expected = [
        f"smtp test: connected to 127.0.0.1:{server.port}",
        "smtp test: TLS TLSv1.3",
        f"smtp test: authenticated as {USER} with PLAIN",
        "smtp test: message <m1@example.com> accepted for 1 of 1 recipients: 250",
        f"smtp test: connection to 127.0.0.1:{server.port} closed",
    ]
    assert len(events) == len(expected)
    for event, start in zip(events, expected, strict=True):
        assert event.startswith(start)


class TunnelProxy(LoopbackServer):
    """A SOCKS5 or HTTP CONNECT proxy on 127.0.0.1 that records where it tunnels to."""

    def __init__(
        self, kind: Literal["socks5", "http"], credentials: tuple[str, str] | None = None
    ) -> None:
        super().__init__()
        self.kind = kind
        self.credentials = credentials
        self.targets: list[tuple[str, int]] = []
        self.logins: list[tuple[str, str]] = []

    @property
    def url(self) -> str:
        login = ":".join(self.credentials) + "@" if self.credentials else ""
        return f"{self.kind}://{login}127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handshake = self._socks5 if self.kind == "socks5" else self._http_connect
        host, port = await handshake(reader, writer)
        self.targets.append((host, port))
        upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    async def _socks5(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[str, int]:
        _, count = await reader.readexactly(2)
        methods = await reader.readexactly(count)
        if self.credentials is not None and 2 in methods:
            writer.write(b"\x05\x02")
            _, length = await reader.readexactly(2)
            user = (await reader.readexactly(length)).decode()
            (length,) = await reader.readexactly(1)
            self.logins.append((user, (await reader.readexactly(length)).decode()))
            writer.write(b"\x01\x00")
        else:
            writer.write(b"\x05\x00")
        _, _, _, kind = await reader.readexactly(4)
        if kind == 1:
            host = socket.inet_ntoa(await reader.readexactly(4))
        elif kind == 3:
            (length,) = await reader.readexactly(1)
            host = (await reader.readexactly(length)).decode()
        else:
            host = socket.inet_ntop(socket.AF_INET6, await reader.readexactly(16))
        port = int.from_bytes(await reader.readexactly(2), "big")
        writer.write(b"\x05\x00\x00\x01" + bytes(6))
        return host, port

    async def _http_connect(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[str, int]:
        request = await reader.readuntil(b"\r\n\r\n")
        _, target, _ = request.split(b"\r\n", 1)[0].decode().split(" ")
        host, _, port = target.rpartition(":")
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        return host.strip("[]"), int(port)


@pytest.mark.parametrize(
    ("kind", "credentials"), [("socks5", ("proxyuser", "proxypass")), ("http", None)]
)
async def test_send_through_a_proxy(smtp_server, smtp_context, kind, credentials):
    async with TunnelProxy(kind, credentials) as proxy:
        transport = build(smtp_server, smtp_context, proxy=proxy.url)

        result = await transport.send(make_message())
        report = await transport.verify()

    assert result.reply_code == 250
    assert proxy.targets == [("127.0.0.1", smtp_server.port)] * 2
    assert proxy.logins == ([credentials] * 2 if credentials else [])
    assert report.ok
    assert report.steps[0].data["proxy"] == f"{kind}://127.0.0.1:{proxy.port}"
    assert "proxypass" not in str(report)
    assert len(smtp_server.transactions) == 1


async def test_egress_policy_applies_to_the_proxy(smtp_server, smtp_context):
    context = dataclasses.replace(
        smtp_context, egress=EgressPolicy(deny=parse_networks("127.0.0.0/8"))
    )
    async with TunnelProxy("socks5") as proxy:
        transport = build(smtp_server, context, proxy=proxy.url)

        with pytest.raises(ConfigError) as caught:
            await transport.send(make_message())

    assert (caught.value.code, caught.value.field) == ("EPOLICY", "proxy")
    assert proxy.targets == []
    assert smtp_server.sessions == []
