"""Addresses for provider APIs that take only ASCII ones (no SMTPUTF8, RFC 6531).

The API accepts internationalised addresses and keeps them in Unicode. Amazon SES documents that a
destination's domain must be Punycode and its local part 7-bit ASCII (SESv2 `Destination`), and
the Mandrill and SendGrid schemas declare their address fields `format: email`, which JSON Schema
defines as RFC 5321's ASCII mailbox (`idn-email` is the Unicode one). A Unicode domain has an ASCII
form, the same mailbox; a Unicode local part has none, so such a message cannot be sent that way.
"""

from __future__ import annotations

from functools import lru_cache

from email_validator import EmailNotValidError, validate_email

from app.transports.errors import UnsupportedFeature


def ascii_address(address: str, provider: str) -> str:
    """`address` with its domain in Punycode; UnsupportedFeature for a non-ASCII local part."""
    if address.isascii():
        return address
    local, _, domain = address.rpartition("@")
    if not local.isascii():
        raise UnsupportedFeature(
            f"the address {address} (a non-ASCII local part needs SMTPUTF8)", provider
        )
    return f"{local}@{_ascii_domain(domain, provider)}"


@lru_cache(maxsize=1024)
def _ascii_domain(domain: str, provider: str) -> str:
    """IDNA 2008 (UTS 46), as email-validator, which validated the address, encodes it."""
    try:
        return validate_email(f"x@{domain}", check_deliverability=False).ascii_domain
    except EmailNotValidError as err:
        raise UnsupportedFeature(f"the domain {domain} ({err})", provider) from err
