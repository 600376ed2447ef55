"""Mistakes an admin must fix, against real servers: each is a ConfigurationError naming the
setting (retried, and shown on the profile's health), and verify and the test mail give a hint.

aiosmtpd serves TLS through asyncio, which closes a handshake it refuses without sending the TLS
alert; OpenSSL servers (Postfix, Exim) send it. `AlertingServer` below is such a server (Python's
ssl on a blocking socket) for the client-certificate cases, so both behaviours are covered.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import trustme

from app.delivery import hints, probe
from app.delivery.probe import Candidate
from app.dkim import lookup
from app.transports import smtp
from app.transports.base import TransportContext
from app.transports.errors import (
    ConfigurationError,
    TemporaryError,
    TransportError,
    unknown_host,
)
from app.transports.smtp import SmtpConfig
from tests.smtpd import make_message

pytestmark = pytest.mark.anyio


async def outcomes(
    config: SmtpConfig, context: TransportContext
) -> tuple[TransportError, probe.VerifyOutcome, probe.TestOutcome]:
    """The send's error, and what verify and the test mail answer an admin."""
    with pytest.raises(TransportError) as caught:
        await smtp.create("relay", config, context).send(make_message())
    found = Candidate("relay", "smtp", config, None)
    verified = await probe.verify(found, context, lookup.resolver([]))
    tested = await probe.send_test(found, "admin@example.com", context)
    assert not verified.ok
    assert not tested.ok
    assert verified.hint == tested.hint, "verify and the test mail say the same"
    return caught.value, verified, tested


def config_error(err: TransportError, field: str | None) -> ConfigurationError:
    assert isinstance(err, ConfigurationError), repr(err)
    assert isinstance(err, TemporaryError), "retried on the normal schedule"
    assert err.before_data
    assert err.field == field
    return err


async def test_implicit_tls_on_a_starttls_port(smtp_server_factory, smtp_context):
    server = smtp_server_factory(tls="starttls")
    config = server.config(secure=True, caCertificates=server.ca_pem)

    err, verified, tested = await outcomes(config, smtp_context)

    config_error(err, "secure")
    assert err.code == "ETLS"
    assert verified.steps[-1].name == "greeting"
    assert tested.hint is not None
    assert "plain text" in tested.hint
    assert "set secure to false" in tested.hint
    assert server.transactions == []


async def test_plain_smtp_on_an_implicit_tls_port(smtp_server_factory, smtp_context):
    server = smtp_server_factory(tls="implicit")
    config = server.config(greetingTimeout=300)

    err, verified, tested = await outcomes(config, smtp_context)

    assert err.code == "ETIMEDOUT"
    assert not isinstance(err, ConfigurationError), "a timeout may be a slow server"
    assert verified.steps[-1].name == "greeting"
    assert tested.hint is not None
    assert "implicit TLS" in tested.hint
    assert "set secure to true" in tested.hint


def test_port_465_without_secure_hint():
    err = TransportError("waiting for the greeting: timed out", code="ETIMEDOUT")

    said = hints.hint(err, SmtpConfig(port=465))

    assert said is not None
    assert said.startswith("port 465 expects implicit TLS: set secure to true")


async def test_a_greeting_that_never_comes(smtp_server_factory, smtp_context):
    server = smtp_server_factory(greeting_delay=3)
    config = server.config(greetingTimeout=300)

    err, _, tested = await outcomes(config, smtp_context)

    assert err.code == "ETIMEDOUT"
    assert tested.hint is not None
    assert "no greeting within greetingTimeout (300 ms)" in tested.hint
    assert "raise greetingTimeout" in tested.hint


async def test_require_tls_without_starttls(smtp_server_factory, smtp_context):
    server = smtp_server_factory()
    config = server.config(requireTLS=True, user="u", pass_="p")

    err, verified, tested = await outcomes(config, smtp_context)

    config_error(err, "requireTLS")
    assert err.code == "ETLS"
    assert verified.steps[-1].name == "tls"
    assert tested.hint is not None
    assert "does not offer STARTTLS" in tested.hint
    assert all("AUTH" not in session.verbs for session in server.sessions)


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
async def test_a_server_requiring_a_client_certificate(smtp_server_factory, smtp_context, tls):
    """aiosmtpd closes the connection right after the handshake, without the alert."""
    server = smtp_server_factory(tls=tls, require_client_certificate=True)
    config = server.config(secure=tls == "implicit", caCertificates=server.ca_pem)

    err, _, tested = await outcomes(config, smtp_context)

    config_error(err, "clientCertificate")
    assert tested.hint == (
        "the server requires a client certificate: set clientCertificate and clientKey"
    )


class AlertingServer:
    """An SMTP server whose TLS is OpenSSL's on a blocking socket, requiring a client
    certificate: a refused handshake sends its alert (TLS 1.3: certificate_required, TLS 1.2:
    handshake_failure), as Postfix does. Serves `sessions` connections, then stops."""

    def __init__(
        self,
        ca: trustme.CA,
        certificate: trustme.LeafCert,
        *,
        starttls: bool,
        max_version: ssl.TLSVersion | None = None,
        sessions: int = 3,
    ) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        certificate.configure_cert(context)
        ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
        if max_version is not None:
            context.maximum_version = max_version
        self.context = context
        self.starttls = starttls
        self.refusals: list[str] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, args=(sessions,), daemon=True)
        self._thread.start()

    def _serve(self, sessions: int) -> None:
        for _ in range(sessions):
            conn, _ = self._listener.accept()
            with conn:
                conn.settimeout(5)
                try:
                    if self.starttls:
                        reader = conn.makefile("rb")
                        conn.sendall(b"220 alerting.test ESMTP\r\n")
                        reader.readline()
                        conn.sendall(b"250-alerting.test\r\n250 STARTTLS\r\n")
                        reader.readline()
                        conn.sendall(b"220 2.0.0 Ready to start TLS\r\n")
                    with self.context.wrap_socket(conn, server_side=True) as tls:
                        tls.sendall(b"220 alerting.test ESMTP\r\n")
                except (ssl.SSLError, OSError) as err:
                    self.refusals.append(str(err))
                    _linger(conn)

    def close(self) -> None:
        self._listener.close()
        self._thread.join(5)


def _linger(conn: socket.socket) -> None:
    """Close as a server does after its alert: no reset that could overtake the alert."""
    try:
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(4096):
            pass
    except OSError:
        return


@pytest.fixture
def alerting(smtp_ca, smtp_certificate) -> Iterator[Any]:
    servers: list[AlertingServer] = []

    def start(**kwargs: Any) -> AlertingServer:
        server = AlertingServer(smtp_ca, smtp_certificate, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.mark.parametrize("starttls", [False, True])
@pytest.mark.parametrize("max_version", [None, ssl.TLSVersion.TLSv1_2])
async def test_the_tls_alert_of_a_missing_client_certificate(
    alerting, smtp_ca, smtp_context, starttls, max_version
):
    server = alerting(starttls=starttls, max_version=max_version)
    ca = smtp_ca.cert_pem.bytes().decode()
    config = SmtpConfig(host="127.0.0.1", port=server.port, secure=not starttls, ca_certificates=ca)

    err, _, tested = await outcomes(config, smtp_context)

    config_error(err, "clientCertificate")
    assert err.code == "ETLS"
    assert tested.hint is not None
    assert "client certificate" in tested.hint
    assert "clientCertificate and clientKey" in tested.hint
    assert all("did not return a certificate" in refusal for refusal in server.refusals)


async def test_an_untrusted_server_certificate(smtp_server_factory, smtp_context):
    server = smtp_server_factory(tls="starttls")

    err, _, tested = await outcomes(server.config(), smtp_context)

    config_error(err, "caCertificates")
    assert err.code == "ETLS"
    assert tested.hint == "the server's certificate is not trusted: give its CA in caCertificates"


async def test_a_certificate_for_another_host(smtp_server_factory, smtp_context, smtp_ca):
    server = smtp_server_factory(tls="starttls", certificate=smtp_ca.issue_cert("other.example"))

    err, _, tested = await outcomes(server.config(caCertificates=server.ca_pem), smtp_context)

    config_error(err, "host")
    assert tested.hint is not None
    assert "not for this host name" in tested.hint


async def test_a_host_that_does_not_exist(smtp_context):
    config = SmtpConfig(host="no-such-host.invalid", port=25)

    err, verified, tested = await outcomes(config, smtp_context)

    config_error(err, "host")
    assert err.code == "EDNS"
    assert [step.name for step in verified.steps] == ["dns"]
    assert tested.hint == "the host name does not resolve: check host"


def test_a_dns_outage_is_not_a_configuration_error():
    assert unknown_host(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    assert not unknown_host(socket.gaierror(socket.EAI_AGAIN, "Temporary failure"))
    assert not unknown_host(OSError("no route"))


async def test_what_is_not_a_configuration_error(smtp_server_factory, smtp_context):
    """Refused connections, 421 greetings and drops are the server's moment, not the profile."""
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        closed_port = probe_socket.getsockname()[1]
    busy = smtp_server_factory(replies={"greeting": "421 4.3.2 busy"})
    for config in (SmtpConfig(host="127.0.0.1", port=closed_port), busy.config()):
        with pytest.raises(TemporaryError) as caught:
            await smtp.create("relay", config, smtp_context).send(make_message())
        assert not isinstance(caught.value, ConfigurationError), repr(caught.value)


async def test_a_server_that_takes_the_client_certificate(
    smtp_server_factory, smtp_context, smtp_ca
):
    """With a client certificate configured, a handshake that works is not mistaken."""
    server = smtp_server_factory(tls="starttls", require_client_certificate=True)
    client = smtp_ca.issue_cert("client.example")
    config = server.config(
        caCertificates=server.ca_pem,
        clientCertificate=client.cert_chain_pems[0].bytes().decode(),
        clientKey=client.private_key_pem.bytes().decode(),
    )

    result = await smtp.create("relay", config, smtp_context).send(make_message())

    assert result.reply_code == 250
