"""Sisense's REST contract, POST /settings/email_server (v1.0), mirrored onto one SMTP profile.

The custom server is the profile named `custom`: created by the first POST and made the default;
`enable: false` routes mail through the built-in server again, `enable: true` back through it.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.audit.service import Secret
from app.errors import Conflict, Invalid, validation_details
from app.identity import Actor
from app.schemas import CamelModel, Integer, SafeStr
from app.servers import service
from app.servers.models import ServerProfile
from app.servers.schemas import PROFILE_TYPES
from app.servers.service import Profiles
from app.transports.smtp import SmtpConfig

CUSTOM = "custom"
SMTP_KEYS = (
    "host",
    "port",
    "secure",
    "ignoreTLS",
    "requireTLS",
    "connectionTimeout",
    "greetingTimeout",
    "socketTimeout",
    "user",
    "pass",
    "logger",
    "debug",
)


class EmailServerBody(CamelModel):
    """The body of POST /settings/email_server; every field is optional (a partial update)."""

    enable: bool | None = None
    host: str | None = None
    port: Integer | None = None
    secure: bool | None = None
    ignore_tls: bool | None = Field(None, alias="ignoreTLS")
    require_tls: bool | None = Field(None, alias="requireTLS")
    connection_timeout: Integer | None = None
    greeting_timeout: Integer | None = None
    socket_timeout: Integer | None = None
    user: str | None = None
    pass_: str | None = Field(None, alias="pass")
    logger: bool | None = None
    debug: bool | None = None
    sender_email: str | None = None
    sender_name: SafeStr | None = None


class EmailServerOut(CamelModel):
    """What GET /settings/email_server answers: the same shape, `pass` replaced by `passSet`."""

    enable: bool
    host: str
    port: int
    secure: bool
    ignore_tls: bool = Field(alias="ignoreTLS")
    require_tls: bool = Field(alias="requireTLS")
    connection_timeout: int
    greeting_timeout: int
    socket_timeout: int
    user: str | None
    pass_set: bool
    logger: bool
    debug: bool
    sender_email: str | None
    sender_name: str | None


async def _custom(session: AsyncSession) -> ServerProfile | None:
    return await session.scalar(select(ServerProfile).where(ServerProfile.name == CUSTOM))


async def read(session: AsyncSession, ctx: Profiles) -> EmailServerOut:
    return (await _state(session, ctx))[0]


async def _state(session: AsyncSession, ctx: Profiles) -> tuple[EmailServerOut, SecretStr | None]:
    """GET's answer, and the password it does not show."""
    profile = await _custom(session)
    if profile is not None and profile.type != "smtp":
        profile = None  # made another type through /servers: there is no custom SMTP server
    routing = await service.get_routing(session)
    config = service.config_of(profile, ctx.box) if profile is not None else SmtpConfig()
    assert isinstance(config, SmtpConfig)
    shown = EmailServerOut(
        enable=profile is not None and routing.profile_id == profile.id,
        host=config.host,
        port=config.effective_port,
        secure=config.secure,
        ignore_tls=config.ignore_tls,
        require_tls=config.require_tls,
        connection_timeout=config.connection_timeout,
        greeting_timeout=config.greeting_timeout,
        socket_timeout=config.socket_timeout,
        user=config.user,
        pass_set=config.pass_ is not None,
        logger=config.logger,
        debug=config.debug,
        sender_email=profile.sender_email if profile else None,
        sender_name=profile.sender_name if profile else None,
    )
    return shown, config.pass_


def _audited(state: tuple[EmailServerOut, SecretStr | None]) -> dict[str, Any]:
    """The settings as the audit log compares them: GET's fields, `pass` as a Secret."""
    shown, password = state
    secret = Secret(password.get_secret_value()) if password is not None else None
    return shown.model_dump(by_alias=True, exclude={"pass_set"}) | {"pass": secret}


async def write(
    session: AsyncSession, ctx: Profiles, body: EmailServerBody, actor: Actor
) -> EmailServerOut:
    """Apply the fields the body names to the custom profile, then `enable`. The audit log gets
    one entry in this endpoint's terms (`pass`, `enable`), not the profile's."""
    try:
        before = await _state(session, ctx)
        await _write(session, ctx, body)
        after = await _state(session, ctx)
        what = audit.changes(_audited(before), _audited(after))
        await audit.record(session, actor, "email_server.update", None, what)
        return after[0]
    except ValidationError as err:
        details = _unprefixed(validation_details(err.errors(), PROFILE_TYPES))
        fields = ", ".join(dict.fromkeys(detail["field"] for detail in details))
        raise Invalid(f"invalid request: {fields}", details=details) from err
    except Invalid as err:
        err.details = _unprefixed(err.details)
        raise


def _unprefixed(details: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """This endpoint's fields are the SMTP settings themselves: `port`, not `settings.port`."""
    return [detail | {"field": detail["field"].removeprefix("settings.")} for detail in details]


async def _write(session: AsyncSession, ctx: Profiles, body: EmailServerBody) -> None:
    given: dict[str, Any] = body.model_dump(by_alias=True, exclude_unset=True)
    enable = given.pop("enable", None)
    settings = {key: given[key] for key in SMTP_KEYS if key in given}
    profile_fields: dict[str, Any] = {
        key: given[key] for key in ("senderEmail", "senderName") if key in given
    }
    profile = await _custom(session)
    if profile is not None and profile.type != "smtp":
        raise Conflict(
            f"the profile {CUSTOM!r} is a {profile.type} profile: change it through "
            f"/api/v1/servers/{CUSTOM}, or delete it to set an SMTP server here"
        )
    if profile is None:
        created = service.PROFILE_BODY.validate_python(
            {
                "name": CUSTOM,
                "type": "smtp",
                "settings": settings,
                **profile_fields,
                "description": "The custom email server (settings/email_server)",
                "isDefault": enable is not False,
            }
        )
        await service.create_profile(session, ctx, created, actor=None)
        if enable is False:
            await service.set_builtin_default(session)
    else:
        patch: dict[str, Any] = {"settings": settings, **profile_fields}
        if enable is True:
            patch["isDefault"] = True
        await service.patch_profile(session, ctx, CUSTOM, patch, actor=None)
        if enable is False:
            await service.set_builtin_default(session)
