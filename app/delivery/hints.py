"""Plain-words hints for a failed verify or test send: the usual mistake behind an error
(implicit TLS on a STARTTLS port and the reverse, a greeting that never comes, requireTLS without
STARTTLS, a client certificate the server wants), read from the error's code and text."""

from __future__ import annotations

from typing import Any

from app.transports.errors import TransportError
from app.transports.smtp import CLOSED_AFTER_HANDSHAKE, NO_STARTTLS


def hint(error: TransportError, config: Any) -> str | None:
    """A plain-words guess at the usual mistake behind an error.

    For verify, `error` is rebuilt from the failed step (its code and detail), so the rules read
    the message: the SMTP transport's own wording (smtp.NO_STARTTLS, ...) and OpenSSL's reasons.
    """
    port = getattr(config, "effective_port", None) or getattr(config, "port", None)
    secure = bool(getattr(config, "secure", False))
    reply = error.reply or ""
    text = error.message
    upper = text.upper()
    tls = _tls_hint(error.code, text, port=port, secure=secure, config=config)
    if tls is not None:
        return tls
    if error.code == "ETIMEDOUT" and "waiting for the greeting" in text:
        return _greeting_hint(port, secure, getattr(config, "greeting_timeout", None))
    if error.code in ("ETIMEDOUT", "ECONNECTION") and secure and port in (25, 587):
        return f"port {port} expects STARTTLS: set secure to false (or use port 465)"
    if error.code in ("EPROTOCOL", "ECONNECTION") and not secure and port == 465:
        return "port 465 expects implicit TLS: set secure to true"
    if error.reply_code == 535 and "5.7.139" in reply:
        return "basic authentication is disabled for this tenant: use xoauth2 or a msgraph profile"
    if error.code == "EAUTH" and "PROXY" in upper:
        return "the proxy refused the credentials: check the user and password in proxy"
    if error.code == "EAUTH":
        settings = getattr(config, "credentials", "the profile's credentials")
        return f"the server refused the credentials: check {settings}"
    if error.code == "ECONNECTION":
        return "no connection: check host and port, and any firewall in between"
    if error.code == "EDNS":
        return "the host name does not resolve: check host"
    return None


_PLAIN_TEXT_AS_TLS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG")
"""OpenSSL's words for a plain-text reply read as a TLS record."""


def _tls_hint(code: str, text: str, *, port: int | None, secure: bool, config: Any) -> str | None:
    upper = text.upper()
    has_certificate = getattr(config, "client_certificate", None) is not None
    if "CERTIFICATE_REQUIRED" in upper or CLOSED_AFTER_HANDSHAKE in text:
        if has_certificate:
            return (
                "the server did not take the client certificate: check clientCertificate and "
                "clientKey, and that the server trusts the CA that issued them"
            )
        return "the server requires a client certificate: set clientCertificate and clientKey"
    if code != "ETLS":
        return None
    if any(reason in upper for reason in _PLAIN_TEXT_AS_TLS) and secure:
        return (
            f"the server answered in plain text: port {port} expects STARTTLS, not implicit TLS: "
            "set secure to false (STARTTLS is then used; requireTLS insists on it), or use the "
            "server's implicit-TLS port (usually 465)"
        )
    if NO_STARTTLS in text:
        return (
            "the server does not offer STARTTLS (or something in between removes it): use secure "
            "with the server's implicit-TLS port (usually 465), or turn requireTLS off to send "
            "without TLS"
        )
    refused = ("BAD_CERTIFICATE", "UNKNOWN_CA", "CERTIFICATE_UNKNOWN", "CERTIFICATE_EXPIRED")
    if has_certificate and any(alert in upper for alert in refused):
        return "the server refused the client certificate: check clientCertificate"
    if "HANDSHAKE_FAILURE" in upper and not has_certificate:
        return (
            "the server refused the TLS handshake: it may require a client certificate "
            "(clientCertificate and clientKey)"
        )
    if "PROTOCOL_VERSION" in upper or "UNSUPPORTED_PROTOCOL" in upper:
        return "the server offers only TLS older than 1.2: upgrade its TLS settings"
    if "MISMATCH" in upper:
        return "the server's certificate is not for this host name: set host to a name it holds"
    if "CERTIFICATE" in upper:
        return "the server's certificate is not trusted: give its CA in caCertificates"
    return None


def _greeting_hint(port: int | None, secure: bool, timeout_ms: int | None) -> str:
    within = f"within greetingTimeout ({timeout_ms} ms)" if timeout_ms else "in time"
    if secure:
        return (
            f"no TLS handshake and greeting {within}: if port {port} expects plain SMTP first "
            "(STARTTLS, usually 587 or 25), set secure to false; else raise greetingTimeout"
        )
    if port == 465:
        return f"port 465 expects implicit TLS: set secure to true (no greeting came {within})"
    return (
        f"the server took the connection but sent no greeting {within}: if port {port} expects "
        "implicit TLS (usually 465), set secure to true; otherwise the server is busy or slow "
        "(raise greetingTimeout) or this is not an SMTP port"
    )
