"""The base for every model at the API's edge: camelCase on the wire, unknown fields refused."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Annotated

import idna
from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import (
    CASE_INSENSITIVE_MAILBOX_NAMES,
    DOT_ATOM_TEXT,
    EMAIL_MAX_LENGTH,
)
from pydantic import AfterValidator, BaseModel, ConfigDict, Strict
from pydantic.alias_generators import to_camel


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


def _validated(value: str) -> str:
    try:
        result = validate_email(value, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as err:
        raise ValueError(str(err)) from err
    return result.normalized


@lru_cache(maxsize=4096)
def _domain(domain: str) -> str:
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
            normalized = _domain(domain)
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
