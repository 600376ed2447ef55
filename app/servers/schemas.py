"""Server profiles at the API's edge: a discriminated union on `type`, settings nested per type."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, Field, field_validator, model_validator

from app.errors import FieldsError
from app.schemas import CamelModel, EmailAddress, Integer, ProfileName, SafeStr
from app.transports.mailgun import MailgunConfig
from app.transports.mandrill import MandrillConfig
from app.transports.msgraph import MsgraphConfig
from app.transports.sendgrid import SendgridConfig
from app.transports.ses import SesConfig
from app.transports.smtp import SmtpConfig
from app.transports.urls import check_ehlo_name, check_host, check_http_url, check_proxy_url


def _no_nul(value: str) -> str:
    if "\0" in value:
        raise ValueError("must not contain NUL")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]
"""Free text, line breaks allowed (PostgreSQL cannot store NUL)."""


WINDOWS = {"perSecond": 1, "perMinute": 60, "perHour": 3600, "perDay": 86_400}
"""The rate limit's windows, by name, and their length in seconds."""
Rate = Annotated[Integer, Field(ge=1, le=1_000_000_000)]


class RateLimit(CamelModel):
    """At most so many messages (or recipients) in any second, minute, hour or day (each window
    rolling, as Microsoft 365, Gmail and Amazon SES count), through this profile, whatever the
    number of workers: held back messages stay queued, due when their turn comes."""

    per_second: Rate | None = None
    per_minute: Rate | None = None
    per_hour: Rate | None = None
    per_day: Rate | None = None
    count: Literal["messages", "recipients"] = "messages"
    """What a window counts: messages, or their recipients (Microsoft 365's 10,000 a day)."""

    @model_validator(mode="after")
    def _some_window(self) -> RateLimit:
        if not self.windows():
            raise ValueError(f"set at least one of {', '.join(WINDOWS)}")
        return self

    def windows(self) -> dict[str, int]:
        """The limit of each window set, by the window's name."""
        dumped = self.model_dump(by_alias=True, exclude={"count"})
        return {name: limit for name, limit in dumped.items() if limit is not None}


class ProfileFields(CamelModel):
    """What every profile has, whatever its type."""

    name: ProfileName | None = None
    """Required when creating; when replacing, it must match the path if given."""
    description: Text = Field("", max_length=1000)
    is_default: bool = False
    sender_email: EmailAddress | None = None
    sender_name: SafeStr | None = Field(None, max_length=200)
    signature: Text | None = Field(None, max_length=250)
    max_recipients_per_message: Integer | None = Field(None, ge=1, le=10_000)
    """How many recipients one BCC-group message carries; default 50."""
    fallback: ProfileName | None = None
    """Another profile to use when this one fails before any content was sent."""
    theme: ProfileName | None = None
    """The theme that wraps every message sent through this profile."""
    list_unsubscribe: bool = False
    """Every message through this profile carries a signed one-click unsubscribe link
    (List-Unsubscribe, RFC 8058) unless it sets `listUnsubscribe: false`; needs
    POSTROOM_PUBLIC_URL. A POST to the link suppresses the address for this profile."""
    rate_limit: RateLimit | None = None
    """How fast messages go through this profile, counted across every worker."""


class SmtpProfile(ProfileFields):
    type: Literal["smtp"]
    settings: SmtpConfig = Field(default_factory=SmtpConfig)

    @field_validator("settings")
    @classmethod
    def _encodable_names(cls, config: SmtpConfig) -> SmtpConfig:
        """Host names and URLs the resolver, the SMTP client or httpx would raise on at send time
        (an invalid IDNA A-label, an empty label, a bad port) are a 422 naming the setting."""
        checks = [
            ("host", check_host, config.host),
            ("name", check_ehlo_name, config.name),
            ("bounceDomain", check_host, config.bounce_domain),
            ("proxy", check_proxy_url, config.proxy and config.proxy.get_secret_value()),
            ("oauth2.tokenUrl", check_http_url, config.oauth2 and config.oauth2.token_url),
        ]
        for field, check, value in checks:
            if value:
                try:
                    check(value)
                except ValueError as err:
                    raise FieldsError(str(err), field) from err
        return config


class MandrillProfile(ProfileFields):
    type: Literal["mandrill"]
    settings: MandrillConfig


class SesProfile(ProfileFields):
    type: Literal["ses"]
    settings: SesConfig


class SendgridProfile(ProfileFields):
    type: Literal["sendgrid"]
    settings: SendgridConfig


class MailgunProfile(ProfileFields):
    type: Literal["mailgun"]
    settings: MailgunConfig


class MsgraphProfile(ProfileFields):
    type: Literal["msgraph"]
    settings: MsgraphConfig


Profile = (
    SmtpProfile | MandrillProfile | SesProfile | SendgridProfile | MailgunProfile | MsgraphProfile
)
"""Every type of profile an admin can create: adding a provider adds its profile here (and its
transport to app/transports/registry.py); every list of types is derived from this union."""

ProfileBody = Annotated[Profile, Field(discriminator="type")]
"""A whole profile, as POST /servers and PUT /servers/{name} take it."""

PROFILE_MODELS: tuple[type[ProfileFields], ...] = get_args(Profile)
PROFILE_TYPES: tuple[str, ...] = tuple(
    get_args(model.model_fields["type"].annotation)[0] for model in PROFILE_MODELS
)
"""The types an admin can create ("smtp", "mandrill", ...), in the union's order."""


class Health(CamelModel):
    status: Literal["ok", "failing", "unknown"]
    error: str | None = None
    checked_at: datetime | None = None


class ProfileOut(CamelModel):
    name: str
    type: str
    description: str
    is_default: bool
    sender_email: str | None
    sender_name: str | None
    signature: str | None
    max_recipients_per_message: int | None
    fallback: str | None
    theme: str | None
    list_unsubscribe: bool
    rate_limit: RateLimit | None
    settings: dict[str, Any]
    """The type's settings; each secret appears only as `<name>Set: true|false`."""
    health: Health
    created_at: datetime
    updated_at: datetime


class ProfileList(CamelModel):
    items: list[ProfileOut]
    default: str | None
    """The default profile's name; null when mail goes through the built-in server or nowhere."""
    builtin_default: bool
    """True when messages that name no server go through the built-in file server."""


class DuplicateBody(CamelModel):
    name: ProfileName | None = None
    """The copy's name; default NAME_copied (NAME_copied2, ... when taken)."""
    settings: dict[str, Any] = Field(default_factory=dict)
    """The copy's secrets (for example {"pass": "..."}): secrets are never copied."""
