"""The submission listener under test: `settings` with a free submission port and a certificate
from the tests' CA, and an smtplib client that trusts that CA."""

from __future__ import annotations

import email.policy
import smtplib
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trustme

from app.config import Settings
from tests.conftest import SENDER
from tests.delivery.conftest import dispatcher
from tests.events.bounces.test_listener import free_port

__all__ = ["dispatcher"]


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path
    ca: Path


@pytest.fixture
def certificate(
    tmp_path: Path, smtp_ca: trustme.CA, smtp_certificate: trustme.LeafCert
) -> Certificate:
    """The tests' server certificate (localhost, 127.0.0.1) as PEM files, and its CA's."""
    paths = Certificate(tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem")
    paths.cert.write_bytes(b"".join(blob.bytes() for blob in smtp_certificate.cert_chain_pems))
    paths.key.write_bytes(smtp_certificate.private_key_pem.bytes())
    paths.ca.write_bytes(smtp_ca.cert_pem.bytes())
    return paths


@pytest.fixture
def overrides() -> dict[str, Any]:
    """More settings for one test: `@pytest.mark.parametrize("overrides", [{...}])`."""
    return {}


@pytest.fixture
def settings(settings: Settings, certificate: Certificate, overrides: dict[str, Any]) -> Settings:
    return settings.model_copy(
        update={
            "submission_port": free_port(),
            "submission_tls_cert": certificate.cert,
            "submission_tls_key": certificate.key,
            **overrides,
        }
    )


def client_context(certificate: Certificate) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate.ca))


def logged_in(
    settings: Settings,
    certificate: Certificate | None,
    credentials: tuple[str, str] | None = SENDER,
    mechanism: str = "PLAIN",
) -> smtplib.SMTP:
    """An smtplib session with the listener: EHLO, STARTTLS (with a certificate), AUTH."""
    assert settings.submission_port is not None
    smtp = smtplib.SMTP("127.0.0.1", settings.submission_port, timeout=30)
    try:
        smtp.ehlo("app.example.com")
        if certificate is not None:
            smtp.starttls(context=client_context(certificate))
            smtp.ehlo("app.example.com")
        if credentials is not None:
            smtp.user, smtp.password = credentials
            method = smtp.auth_plain if mechanism == "PLAIN" else smtp.auth_login
            smtp.auth(mechanism, method, initial_response_ok=mechanism == "PLAIN")
    except BaseException:
        smtp.close()
        raise
    return smtp


@contextmanager
def connected(
    settings: Settings,
    certificate: Certificate | None,
    credentials: tuple[str, str] | None = SENDER,
    mechanism: str = "PLAIN",
) -> Iterator[smtplib.SMTP]:
    """`logged_in`, closed (QUIT) after the block."""
    with logged_in(settings, certificate, credentials, mechanism) as smtp:
        yield smtp


def transact(
    smtp: smtplib.SMTP, message: EmailMessage | bytes, rcpt: list[str], mail_from: str
) -> tuple[int, str]:
    """MAIL, RCPT, DATA; the reply to the first command refused, else to the final dot."""
    code, reply = smtp.mail(mail_from)
    if code != 250:
        return code, reply.decode()
    for address in rcpt:
        code, reply = smtp.rcpt(address)
        if code != 250:
            smtp.rset()
            return code, reply.decode()
    data = message if isinstance(message, bytes) else message.as_bytes(policy=email.policy.SMTP)
    code, reply = smtp.data(data)
    return code, reply.decode()


def mail(
    *,
    sender: str = "app@example.com",
    to: tuple[str, ...] = ("ann@example.org",),
    subject: str = "Invoice 42",
    text: str = "Your invoice is attached.\n",
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message.set_content(text)
    return message
