"""The base for every model at the API's edge: camelCase on the wire, unknown fields refused."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated

import idna
from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import (
    CASE_INSENSITIVE_MAILBOX_NAMES,
    DOT_ATOM_TEXT,
    EMAIL_MAX_LENGTH,
)
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict
from pydantic.alias_generators import to_camel

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send


class CamelModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        str_strip_whitespace=False,
    )


_CONTROL = re.compile("[\r\n\0]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _no_control(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain CR, LF or NUL")
    if _SURROGATE.search(value):
        raise ValueError("must not contain unpaired surrogates")
    return value


SafeStr = Annotated[str, AfterValidator(_no_control)]
"""A string that can go into a header or an SMTP command: no CR, LF or NUL."""


def _iso_8601(value: object) -> object:
    """A query's date-time is ISO 8601 text, as the OpenAPI document says (pydantic alone would
    also take a number as a Unix time)."""
    if isinstance(value, str) and not re.match(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("must be an ISO 8601 date-time, e.g. 2026-11-01T00:00:00Z")
    return value


def _utc(value: datetime) -> datetime:
    """In UTC, as every stored time is (SQLite compares them as text); without an offset, it is
    UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


IsoDateTime = Annotated[datetime, BeforeValidator(_iso_8601), AfterValidator(_utc)]


_LOCAL_DOMAINS: ContextVar[bool] = ContextVar("postroom_allow_local_domains", default=False)
"""POSTROOM_ALLOW_LOCAL_DOMAINS where addresses are being validated (see `local_domains`)."""
_LOCAL_TLDS = frozenset({"local", "localhost"})
_NOT_LOCAL = frozenset({"invalid", "onion", "arpa", "test"})
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
LOCAL_DOMAINS_HINT = (
    "Addresses at local domains (.local, localhost, single-label names such as corp) are "
    "accepted when the admin sets POSTROOM_ALLOW_LOCAL_DOMAINS=true."
)


@contextmanager
def local_domains(allowed: bool) -> Iterator[None]:
    """Within the block, addresses at local domains are accepted (or not): the setting, made
    visible to the module-level address validator without a global."""
    token = _LOCAL_DOMAINS.set(allowed)
    try:
        yield
    finally:
        _LOCAL_DOMAINS.reset(token)


class LocalDomains:
    """ASGI middleware that accepts addresses at local domains in every request, for
    POSTROOM_ALLOW_LOCAL_DOMAINS=true (request bodies are validated in the request's task).
    Installed only when the setting is on: the default costs nothing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with local_domains(True):
            await self.app(scope, receive, send)


def is_local_domain(domain: str) -> bool:
    """A name only a LAN resolves: one label (corp, localhost), `.local` (mDNS, Active
    Directory), `.localhost`, `.home.arpa` (RFC 8375)."""
    labels = domain.lower().rstrip(".").split(".")
    if len(labels) == 1:
        return bool(labels[0]) and labels[0] not in _NOT_LOCAL
    return labels[-1] in _LOCAL_TLDS or labels[-2:] == ["home", "arpa"]


def _validated(value: str) -> str:
    try:
        result = validate_email(value, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as err:
        if not is_local_domain(value.rpartition("@")[2]):
            raise ValueError(str(err)) from err
        accepted = _local_address(value)  # a fault of its own (the local part, say) comes first
        if _LOCAL_DOMAINS.get():
            return accepted
        raise ValueError(f"{err} {LOCAL_DOMAINS_HINT}") from err
    return result.normalized


def _local_address(value: str) -> str:
    """An address at a local domain: the local part judged by email-validator (at a stand-in
    domain), the domain by the host name rules (letters, digits, hyphens; IDN allowed)."""
    local, _, domain = value.rpartition("@")
    if len(value) > EMAIL_MAX_LENGTH:
        raise ValueError(f"The email address is too long ({len(value)} > {EMAIL_MAX_LENGTH}).")
    try:
        result = validate_email(
            f"{local}@example.com", check_deliverability=False, allow_smtputf8=True
        )
    except EmailNotValidError as err:
        raise ValueError(str(err)) from err
    name = domain.rstrip(".").lower()
    ascii_name = a_label_domain(name)
    if not ascii_name.isascii() or not all(
        _LABEL.fullmatch(label) for label in ascii_name.split(".")
    ):
        raise ValueError(f"The part after the @-sign is not a valid host name: {domain!r}.")
    return f"{result.local_part}@{name}"


@lru_cache(maxsize=4096)
def _domain(domain: str, local_allowed: bool) -> str:
    """The domain as email-validator normalises it, cached per domain and per policy."""
    return _validated(f"x@{domain}").partition("@")[2]


def _email(value: str) -> str:
    """The address as email-validator normalises it. The common case (an ASCII dot-atom local
    part, RFC 5322's unquoted form, at an ASCII domain) checks the local part here and the
    domain once per domain, which is most of the cost of validating a batch; anything else goes
    to email-validator whole."""
    _no_control(value)
    local, _, domain = value.rpartition("@")
    if (
        domain.isascii()
        and len(value) <= EMAIL_MAX_LENGTH
        and DOT_ATOM_TEXT.match(local)
        and local.lower() not in CASE_INSENSITIVE_MAILBOX_NAMES
    ):
        try:
            normalized = _domain(domain, _LOCAL_DOMAINS.get())
        except ValueError:
            pass  # validated whole below, to say why
        else:
            if normalized.isascii() and len(normalized) == len(domain):
                return f"{local}@{normalized}"
    return _validated(value)


EmailAddress = Annotated[str, AfterValidator(_email)]
"""An address email-validator accepts (`#` and `&` are fine in the local part), normalised."""


@lru_cache(maxsize=4096)
def a_label_domain(domain: str) -> str:
    """The domain in A-labels (IDNA 2008, UTS 46), as DNS and SMTP take it: bücher.example ->
    xn--bcher-kva.example. An ASCII domain, or one IDNA refuses, is returned as it is."""
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError:
        return domain


def comparable(entry: str) -> str:
    """An address or a domain in one spelling, for matching rules and lists against what is sent:
    lower case, the domain as A-labels (so bücher.example and xn--bcher-kva.example match,
    whichever one was stored or sent)."""
    local, at, domain = entry.lower().rpartition("@")
    return f"{local}{at}{a_label_domain(domain)}"


def a_labels(address: str) -> str:
    """The address as it goes on the wire, its domain in A-labels (as nodemailer sends it):
    bob@bücher.example -> bob@xn--bcher-kva.example. A non-ASCII local part stays: only
    SMTPUTF8 (RFC 6531) can carry it."""
    local, at, domain = address.rpartition("@")
    if not at or domain.isascii():
        return address
    return f"{local}@{a_label_domain(domain)}"


Integer = Annotated[int, Strict()]
"""An integer in the body: JSON true/false or "25" are refused, not read as 1/0 or 25."""

ProfileName = Annotated[str, Field(min_length=1, max_length=50, pattern=r"^[A-Za-z0-9_]+$")]
"""A server profile's name: users, themes and suppressions name profiles too."""
