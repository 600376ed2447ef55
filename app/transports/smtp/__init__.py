"""SMTP with nodemailer's options and meaning, on a small client of Postroom's own.

A connection is opened by hand (connect.py): the host is resolved through the egress policy, the
TCP socket (or the proxy's) is connected to a checked address under `connectionTimeout`, and the
session (session.py) takes that socket for the greeting (`greetingTimeout`), TLS, EHLO and AUTH,
then runs one transaction per message (transaction.py: pipelined, BDAT when offered), each reply
within `socketTimeout`. wire.py holds the bytes (an asyncio protocol that keeps every reply, in
order), client.py the commands and the debug transcript. Every error becomes a TransportError in
translate.py, the one place mapping them. config.py holds the settings, transport.py the
profile's transport (one connection per send, or a pool).
"""

from app.transports.smtp.client import REDACTED
from app.transports.smtp.config import OAuth2Settings, SecurityMode, SmtpConfig, default_port
from app.transports.smtp.connect import (
    address_literal,
    choose_ehlo_name,
    is_real_name,
    machine_name,
)
from app.transports.smtp.translate import (
    CLOSED_AFTER_HANDSHAKE,
    NEEDS_SMTPUTF8,
    NO_STARTTLS,
    Phase,
)
from app.transports.smtp.transport import SmtpTransport, create

__all__ = [
    "CLOSED_AFTER_HANDSHAKE",
    "NEEDS_SMTPUTF8",
    "NO_STARTTLS",
    "REDACTED",
    "OAuth2Settings",
    "Phase",
    "SecurityMode",
    "SmtpConfig",
    "SmtpTransport",
    "address_literal",
    "choose_ehlo_name",
    "create",
    "default_port",
    "is_real_name",
    "machine_name",
]
