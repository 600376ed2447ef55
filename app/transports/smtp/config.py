"""An SMTP profile's settings: nodemailer's names and defaults, Sage X3's security modes onto them,
and what they mean before any connection (the proxy URL, the AUTH method to use)."""

from __future__ import annotations

import re
import ssl
from collections.abc import Container
from dataclasses import dataclass
from typing import ClassVar, Literal, Self
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from python_socks import ProxyType

from app.errors import FieldsError
from app.schemas import CamelModel, Integer, SafeStr
from app.transports.errors import ConfigError

SecurityMode = Literal["none", "starttls", "starttls_required", "tls"]
"""Sage X3's four modes: no TLS / STARTTLS when available / STARTTLS required / implicit TLS."""

_SECURITY_FLAGS: dict[str, tuple[bool, bool, bool]] = {
    "none": (False, True, False),
    "starttls": (False, False, False),
    "starttls_required": (False, False, True),
    "tls": (True, False, False),
}


class OAuth2Settings(CamelModel):
    """Where XOAUTH2 gets its access token: a refresh token, or the client-credentials grant."""

    token_url: str = Field(max_length=2000, pattern=r"^https?://\S+$")
    client_id: str = Field(min_length=1, max_length=500)
    client_secret: SecretStr | None = None
    refresh_token: SecretStr | None = None
    scope: str | None = Field(None, max_length=1000)
    """Office 365 app-only: https://outlook.office365.com/.default; Gmail: https://mail.google.com/"""
    user: SafeStr | None = Field(None, max_length=320)
    """The mailbox to authenticate as; defaults to the profile's `user`."""


class SmtpConfig(CamelModel):
    """An SMTP server, with nodemailer's option names and defaults (timeouts in milliseconds)."""

    credentials: ClassVar[str] = "user and pass (with XOAUTH2: user and the oauth2 settings)"
    """The settings that hold the credentials, as an admin checks them when they are refused."""

    host: SafeStr = Field("localhost", min_length=1, max_length=253, pattern=r"^[^\s/]+$")
    port: Integer | None = Field(None, ge=1, le=65535)
    """Defaults to 465 when `secure`, else 25."""
    secure: bool = False
    ignore_tls: bool = Field(False, alias="ignoreTLS")
    require_tls: bool = Field(False, alias="requireTLS")
    connection_timeout: Integer = Field(120_000, gt=0, le=3_600_000)
    greeting_timeout: Integer = Field(30_000, gt=0, le=3_600_000)
    socket_timeout: Integer = Field(600_000, gt=0, le=3_600_000)
    user: SafeStr | None = Field(None, max_length=320)
    pass_: SecretStr | None = Field(None, alias="pass", max_length=1000)
    auth_method: Literal["plain", "login", "cram-md5", "xoauth2"] | None = None
    """None: the first the server offers of PLAIN, LOGIN, CRAM-MD5 (nodemailer's order)."""
    oauth2: OAuth2Settings | None = None
    bounce_domain: SafeStr | None = Field(None, max_length=200, pattern=r"^[A-Za-z0-9.-]+$")
    """When set, each message's envelope sender is `bounces+<token>@<bounceDomain>` (VERP): the
    domain's MX hands bounces to Postroom (app/events/bounces)."""
    name: SafeStr | None = Field(None, max_length=253, pattern=r"^[^\s]+$")
    """The EHLO host name; default: POSTROOM_HOSTNAME, else this machine's name when it is a
    real one (not localhost), else the address literal of the connection ([192.0.2.1])."""
    ca_certificates: str | None = Field(None, max_length=200_000)
    client_certificate: str | None = Field(None, max_length=200_000)
    client_key: SecretStr | None = Field(None, max_length=200_000)
    proxy: SecretStr | None = Field(None, max_length=2000)
    """socks5://, socks5h://, socks4://, socks4a:// or http://[user:pass@]host[:port]. A secret as
    a whole, since it may carry credentials: encrypted at rest, answered as `proxySet`."""
    pool: bool = False
    max_connections: Integer = Field(5, ge=1, le=100)
    max_messages: Integer = Field(100, ge=1, le=100_000)
    logger: bool = False
    debug: bool = False

    @model_validator(mode="before")
    @classmethod
    def _security_mode(cls, data: object) -> object:
        if isinstance(data, dict) and "security" in data:
            data = dict(data)
            mode = data.pop("security")
            if mode not in _SECURITY_FLAGS:
                raise FieldsError(
                    f"security must be one of {', '.join(_SECURITY_FLAGS)}", "security"
                )
            data["secure"], data["ignoreTLS"], data["requireTLS"] = _SECURITY_FLAGS[mode]
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.ignore_tls and self.require_tls:
            raise FieldsError(
                "ignoreTLS and requireTLS cannot both be true", "ignoreTLS", "requireTLS"
            )
        if self.auth_method == "xoauth2" and self.oauth2 is None:
            raise ValueError("authMethod xoauth2 needs oauth2 settings")
        if (
            self.auth_method == "xoauth2"
            and not (self.oauth2 and self.oauth2.user)
            and not self.user
        ):
            raise ValueError("authMethod xoauth2 needs a user (oauth2.user or user)")
        if (self.client_certificate is None) != (self.client_key is None):
            raise ValueError("clientCertificate and clientKey go together")
        return self

    @field_validator("ca_certificates", "client_certificate")
    @classmethod
    def _pem(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ssl.create_default_context(cadata=value)
            except (ssl.SSLError, ValueError, TypeError) as err:  # TypeError: not ASCII
                raise ValueError("is not a valid PEM certificate") from err
        return value

    @field_validator("proxy")
    @classmethod
    def _proxy_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                ProxyUrl.parse(value.get_secret_value())
            except ConfigError as err:  # its message never holds the URL: it is a secret
                raise ValueError(err.message) from None
        return value

    @property
    def effective_port(self) -> int:
        """`port`, or the default for the mode: 465 with implicit TLS, else 25."""
        return self.port if self.port is not None else default_port(self.secure)


def default_port(secure: bool) -> int:
    return 465 if secure else 25


_AUTO_AUTH_ORDER = ("plain", "login", "cram-md5")


def auth_plan(config: SmtpConfig, offered: Container[str]) -> tuple[str, str] | None:
    """(method, user) to authenticate with, among the methods the server `offered` when the
    profile names none; None when no user is configured."""
    method: str | None = config.auth_method
    if method is None and config.oauth2 is not None and config.pass_ is None:
        method = "xoauth2"
    if method == "xoauth2":
        user = (config.oauth2.user if config.oauth2 else None) or config.user
        return (method, user) if user else None
    if config.user is None:
        return None
    if method is None:
        method = next((name for name in _AUTO_AUTH_ORDER if name in offered), "plain")
    return method, config.user


def secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


PROXY_SCHEMES: dict[str, tuple[ProxyType, bool, int]] = {
    "socks5": (ProxyType.SOCKS5, False, 1080),
    "socks5h": (ProxyType.SOCKS5, True, 1080),
    "socks4": (ProxyType.SOCKS4, False, 1080),
    "socks4a": (ProxyType.SOCKS4, True, 1080),
    "http": (ProxyType.HTTP, True, 8080),
}
"""Each proxy scheme: its python-socks type, whether the proxy resolves the host, default port."""
_BLANK = re.compile(r"\s")


@dataclass(frozen=True, slots=True)
class ProxyUrl:
    """The `proxy` setting, parsed (connect.py connects through it)."""

    scheme: str
    host: str
    port: int
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> ProxyUrl:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in PROXY_SCHEMES or not parts.hostname or _BLANK.search(url):
            raise ConfigError(
                "must be a socks5://, socks5h://, socks4://, socks4a:// or http:// URL: "
                "scheme://[user:password@]host[:port]",
                field="proxy",
            )
        try:
            port = parts.port or PROXY_SCHEMES[scheme][2]
        except ValueError as err:
            raise ConfigError("proxy has an invalid port", field="proxy") from err
        return cls(
            scheme,
            parts.hostname,
            port,
            unquote(parts.username) if parts.username is not None else None,
            unquote(parts.password) if parts.password is not None else None,
        )

    @property
    def display(self) -> str:
        """The URL without credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"
