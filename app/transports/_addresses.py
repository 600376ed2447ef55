"""Addresses for provider APIs that take only ASCII ones (no SMTPUTF8, RFC 6531).

The API accepts internationalised addresses and keeps them in Unicode. Amazon SES documents that a
destination's domain must be Punycode and its local part 7-bit ASCII (SESv2 `Destination`), and
the Mandrill and SendGrid schemas declare their address fields `format: email`, which JSON Schema
defines as RFC 5321's ASCII mailbox (`idn-email` is the Unicode one). A Unicode domain has an ASCII
form, the same mailbox; a Unicode local part has none, so such a message cannot be sent that way.
"""

from __future__ import annotations

from app.schemas import a_labels
from app.transports.errors import UnsupportedFeature


def ascii_address(address: str, provider: str) -> str:
    """`address` with its domain in A-labels; UnsupportedFeature for a non-ASCII local part."""
    ascii_form = a_labels(address)
    if not ascii_form.isascii():
        raise UnsupportedFeature(
            f"the address {address} (a non-ASCII local part needs SMTPUTF8)", provider
        )
    return ascii_form
