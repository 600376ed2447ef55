"""Every transport type by name: its settings model and the function that builds it.

Adding a provider = one module with a config model and `create`, one entry here, one test file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.schemas import CamelModel
from app.transports import file, mailgun, mandrill, memory, msgraph, sendgrid, ses, smtp
from app.transports.base import Transport, TransportContext


@dataclass(frozen=True, slots=True)
class TransportType:
    config: type[CamelModel]
    create: Callable[[str, Any, TransportContext], Transport]


TRANSPORTS: dict[str, TransportType] = {
    "smtp": TransportType(smtp.SmtpConfig, smtp.create),
    "mandrill": TransportType(mandrill.MandrillConfig, mandrill.create),
    "ses": TransportType(ses.SesConfig, ses.create),
    "sendgrid": TransportType(sendgrid.SendgridConfig, sendgrid.create),
    "mailgun": TransportType(mailgun.MailgunConfig, mailgun.create),
    "msgraph": TransportType(msgraph.MsgraphConfig, msgraph.create),
    "file": TransportType(file.FileConfig, file.create),
    "memory": TransportType(memory.MemoryConfig, memory.create),
}
"""Profile types an admin can create are the first six; `file` is the built-in default server and
`memory` is for tests."""


def build(type_: str, name: str, config: CamelModel, context: TransportContext) -> Transport:
    """Build the transport of `type_` for one profile's decrypted settings."""
    return TRANSPORTS[type_].create(name, config, context)
