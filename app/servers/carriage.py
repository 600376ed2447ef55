"""What becomes of a DKIM signature made here on the way through each transport type.

The signature covers the composed bytes. A transport that hands those bytes on unchanged carries
it; one that rebuilds the message from parts (SendGrid's JSON API) cannot, so a profile of that
type refuses DKIM keys rather than signing mail whose signature is then dropped. Some providers
change what they pass on: their note says what an admin has to know, and the headers a provider
may rewrite are left out of the signature.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Carriage:
    carried: bool
    note: str
    unsigned: frozenset[str] = frozenset()
    """Header fields (lower case) the provider may rewrite: signing them would break the
    signature."""


CARRIAGE: dict[str, Carriage] = {
    "smtp": Carriage(True, "the server gets the signed bytes as they are"),
    "ses": Carriage(
        True,
        "SES gets the signed bytes (raw MIME) and adds a signature of its own for amazonses.com; "
        "Date and Message-ID are left out of the signature, as SES's manual DKIM signing asks",
        frozenset({"date", "message-id"}),
    ),
    "mailgun": Carriage(
        True,
        "Mailgun gets the signed bytes (messages.mime); its open and click tracking rewrite the "
        "HTML and so break the signature: turn tracking off for the domain",
    ),
    "mandrill": Carriage(
        True,
        "Mandrill gets the signed bytes (send-raw); its open and click tracking rewrite the HTML "
        "and so break the signature: turn tracking off",
    ),
    "msgraph": Carriage(
        True,
        "Graph gets the signed bytes (sendMail with MIME), but Exchange Online stores the message "
        "and writes it out again, which can break the signature: Microsoft 365's own DKIM "
        "signing is the dependable way for this profile",
    ),
    "sendgrid": Carriage(
        False,
        "SendGrid takes the message as JSON parts and writes the MIME itself, so no signature "
        "made here reaches it: set up DKIM in SendGrid (Sender Authentication) instead",
    ),
    "file": Carriage(True, "the .eml file holds the signed bytes"),
    "memory": Carriage(True, "kept as signed"),
}
"""Every transport type (app/transports/registry.py): a test checks none is missing."""
