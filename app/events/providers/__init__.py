"""Provider webhook parsers, one module per provider (as the transports are), each verifying its
provider's own signature and reporting events in the shared vocabulary."""

from __future__ import annotations

from pydantic import BaseModel

from app.events.providers.base import Receiver
from app.events.providers.mailgun import MailgunReceiver
from app.events.providers.mandrill import MandrillReceiver
from app.events.providers.sendgrid import SendgridReceiver
from app.events.providers.ses import SesReceiver
from app.events.providers.sns import Sns
from app.transports.mailgun import MailgunConfig
from app.transports.mandrill import MandrillConfig
from app.transports.sendgrid import SendgridConfig
from app.transports.ses import SesConfig


def receiver(config: BaseModel, sns: Sns) -> Receiver | None:
    """The receiver for a profile's settings; None for a type that reports no events (to
    POST /api/v1/hooks/{profile}/events)."""
    match config:
        case SesConfig():
            return SesReceiver(config, sns)
        case SendgridConfig():
            return SendgridReceiver(config)
        case MailgunConfig():
            return MailgunReceiver(config)
        case MandrillConfig():
            return MandrillReceiver(config)
    return None
