"""Mailgun messages.mime: the composed MIME as a multipart file, one `to` per envelope recipient.

Mailgun takes the sender from the MIME's From header and delivers to the `to` fields only, so Bcc
recipients (absent from the headers) are delivered and stay hidden. An EU domain must be called on
the EU host: through the US host Mailgun answers a bare `401 Forbidden`, as for a wrong key.
"""

from __future__ import annotations

from typing import ClassVar, Literal
from urllib.parse import quote

import httpx
from pydantic import Field, SecretStr

from app.schemas import CamelModel
from app.transports.base import OutgoingMessage, TransportContext, VerifyReport, refuse_options
from app.transports.errors import PermanentError
from app.transports.http import (
    Api,
    HttpTransport,
    Refusal,
    Rule,
    json_body,
    probe,
    text_of,
    unexpected_answer,
)
from app.transports.result import SendResult
from app.transports.urls import HttpUrl

REGION_URLS = {"us": "https://api.mailgun.net", "eu": "https://api.eu.mailgun.net"}


class MailgunConfig(CamelModel):
    credentials: ClassVar[str] = "apiKey (and region, for an EU domain)"
    """The settings that hold the credentials, as an admin checks them when they are refused."""

    api_key: SecretStr = Field(min_length=1, max_length=500)
    domain: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.-]+$")
    region: Literal["us", "eu"] = "us"
    base_url: HttpUrl | None = None
    """Overrides the region's API host."""
    webhook_signing_key: SecretStr | None = Field(None, min_length=1, max_length=500)
    """The HTTP webhook signing key (Sending > Webhooks): POST /api/v1/hooks/{name}/events
    accepts only events it signed."""

    @property
    def api_url(self) -> str:
        return (self.base_url or REGION_URLS[self.region]).rstrip("/")


def _refusal(response: httpx.Response) -> Refusal:
    """{"message": str}, except the plain-text 401 `Forbidden`."""
    body = json_body(response)
    if isinstance(body, dict) and body.get("message"):
        return Refusal(None, str(body["message"]))
    return Refusal(None, text_of(response))


API = Api(
    provider="Mailgun",
    parse_error=_refusal,
    credentials_fix="wrong apiKey, or an EU domain on the US region: check apiKey and region",
    url_setting="baseUrl",
    rules={
        404: Rule("permanent", "check domain (and region)", field="domain"),
    },
)


class MailgunTransport(HttpTransport):
    api = API

    def __init__(self, name: str, config: MailgunConfig, context: TransportContext) -> None:
        super().__init__(name, config, context)
        self._auth = httpx.BasicAuth("api", config.api_key.get_secret_value())
        self._domain_url = f"{config.api_url}/v3/domains/{quote(config.domain)}"
        self._send_url = f"{config.api_url}/v3/{quote(config.domain)}/messages.mime"

    async def _send(self, message: OutgoingMessage) -> SendResult:
        refuse_options(message, self.api.provider)
        response = await self._request(
            "POST",
            self._send_url,
            auth=self._auth,
            data={"to": list(message.recipients)},
            files={"message": ("message.mime", message.mime, "message/rfc822")},
        )
        body = json_body(response)
        if not (isinstance(body, dict) and isinstance(message_id := body.get("id"), str)):
            raise unexpected_answer(API, response, "a message id")
        return SendResult.all(
            list(message.recipients),
            "sent",
            code=response.status_code,
            message=str(body.get("message", "")),
            provider_id=message_id,
        )

    async def _verify(self) -> VerifyReport:
        """GET /v3/domains/{domain}: the key works on this region and the domain can send."""
        report = VerifyReport(
            unchecked=["whether the sender address belongs to the domain (Mailgun may rewrite it)"]
        )

        async def domain() -> str:
            response = await self._request("GET", self._domain_url, auth=self._auth)
            body = json_body(response)
            info = body.get("domain") if isinstance(body, dict) else None
            if not isinstance(info, dict):
                raise unexpected_answer(API, response, "the domain's details")
            state = info.get("state")
            if state not in (None, "active"):
                raise PermanentError(
                    f"the Mailgun domain is {state}, not active: it cannot send yet",
                    code="EAPI",
                    reply_code=response.status_code,
                    reply=text_of(response),
                )
            return f"API key accepted; domain {info.get('name', '?')} is {state or 'known'}"

        await probe(report, "domain", domain)
        return report


def create(name: str, config: MailgunConfig, context: TransportContext) -> MailgunTransport:
    return MailgunTransport(name, config, context)
