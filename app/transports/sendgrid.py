"""SendGrid v3 mail/send: structured JSON, since SendGrid takes no raw MIME.

The message is rebuilt from `OutgoingMessage.content`. The envelope decides who gets it: an envelope
recipient listed in the content's To or Cc goes there, any other one in Bcc. A BCC group
(`content.undisclosed`, or no To and no Cc) becomes one personalization per recipient, with that
recipient in `to`: SendGrid refuses a personalization without `to` ("Missing destination email"),
and separate personalizations are its way of sending privately. Each recipient then sees their own
address where the other transports show `undisclosed-recipients:;`.

What SendGrid cannot carry raises UnsupportedFeature: a header it reserves, an empty subject or
body, Cc without To, visible recipients left out of the envelope (a retry would send them copies),
an address with a non-ASCII local part (its schema's `format: email`; domains go as Punycode).
"""

from __future__ import annotations

import base64
from email.header import Header
from typing import Any, ClassVar

import httpx
from pydantic import Field, SecretStr

from app.schemas import CamelModel
from app.transports._addresses import ascii_address
from app.transports.base import (
    Address,
    Content,
    OutgoingMessage,
    TransportContext,
    VerifyReport,
    refuse_options,
)
from app.transports.errors import CredentialsError, UnsupportedFeature
from app.transports.hook_settings import EcPublicKey
from app.transports.http import Api, HttpTransport, Refusal, json_body, probe, text_of
from app.transports.result import SendResult
from app.transports.urls import HttpUrl


class SendgridConfig(CamelModel):
    credentials: ClassVar[str] = "apiKey"
    """The settings that hold the credentials, as an admin checks them when they are refused."""

    api_key: SecretStr = Field(min_length=1, max_length=500)
    base_url: HttpUrl = "https://api.sendgrid.com"
    """https://api.eu.sendgrid.com for EU-pinned subusers."""
    webhook_public_key: EcPublicKey | None = None
    """The Signed Event Webhook's verification key: POST /api/v1/hooks/{name}/events accepts
    only events signed with its private half."""


RESERVED_HEADERS = frozenset(
    {
        "x-sg-id",
        "x-sg-eid",
        "received",
        "dkim-signature",
        "content-type",
        "content-transfer-encoding",
        "to",
        "from",
        "subject",
        "reply-to",
        "cc",
        "bcc",
    }
)
"""Headers SendGrid refuses in `headers`: it sets them itself."""


def _refusal(response: httpx.Response) -> Refusal:
    """{"errors": [{"message": str, "field": str | null, "help": ...}]}."""
    body = json_body(response)
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list) or not errors:
        return Refusal(None, text_of(response))
    texts = []
    for error in errors:
        if isinstance(error, dict):
            where = f"{error['field']}: " if error.get("field") else ""
            texts.append(f"{where}{error.get('message', '')}")
    return Refusal(None, "; ".join(texts))


API = Api(
    provider="SendGrid",
    parse_error=_refusal,
    credentials_fix=(
        f"check {SendgridConfig.credentials} and that it has the mail.send permission, and that"
        " the from address is a verified sender (SendGrid also answers 403 for a while after"
        " many bad requests)"
    ),
    url_setting="baseUrl",
)


class SendgridTransport(HttpTransport):
    api = API

    def __init__(self, name: str, config: SendgridConfig, context: TransportContext) -> None:
        super().__init__(name, config, context)
        self._headers = {"Authorization": f"Bearer {config.api_key.get_secret_value()}"}
        self._base = config.base_url.rstrip("/")

    async def _send(self, message: OutgoingMessage) -> SendResult:
        refuse_options(message, self.api.provider)
        response = await self._request(
            "POST", f"{self._base}/v3/mail/send", json=payload(message), headers=self._headers
        )
        return SendResult.all(
            list(message.recipients),
            "sent",
            code=response.status_code,
            provider_id=response.headers.get("x-message-id"),
        )

    async def _verify(self) -> VerifyReport:
        """GET /v3/scopes: the key works and may send mail."""
        report = VerifyReport(unchecked=["whether the sender address is a verified sender"])

        async def scopes() -> str:
            response = await self._request("GET", f"{self._base}/v3/scopes", headers=self._headers)
            body = json_body(response)
            granted = body.get("scopes") if isinstance(body, dict) else None
            if not isinstance(granted, list) or "mail.send" not in granted:
                raise CredentialsError(
                    "the SendGrid API key lacks the mail.send permission: give apiKey"
                    " 'Mail Send' access",
                    code="EAUTH",
                    reply_code=response.status_code,
                    before_data=True,
                )
            return "API key accepted, with the mail.send permission"

        await probe(report, "credentials", scopes)
        return report


def payload(message: OutgoingMessage) -> dict[str, Any]:
    """The mail/send body for `message`; raises UnsupportedFeature for what SendGrid can't carry."""
    content = message.content
    if not content.subject:
        raise UnsupportedFeature("a message without a subject", API.provider)
    body: dict[str, Any] = {
        "personalizations": _personalizations(message),
        "from": _address(content.sender),
        "subject": content.subject,
        "content": _bodies(content),
    }
    if len(content.reply_to) == 1:
        body["reply_to"] = _address(content.reply_to[0])
    elif content.reply_to:
        body["reply_to_list"] = [_address(a) for a in content.reply_to]
    if content.attachments:
        body["attachments"] = [
            {
                "content": base64.b64encode(a.content).decode("ascii"),
                "filename": a.filename,
                "type": a.content_type,
                "disposition": "attachment",
            }
            for a in content.attachments
        ]
    headers = {"Message-ID": message.message_id}
    for name, value in content.headers:
        if name.lower() in RESERVED_HEADERS:
            raise UnsupportedFeature(f"the {name} header", API.provider)
        headers[name] = _encoded(name, value)
    body["headers"] = headers
    return body


def _personalizations(message: OutgoingMessage) -> list[dict[str, Any]]:
    """Who gets it, from the envelope: see the module's docstring."""
    content = message.content
    envelope = {r.lower(): r for r in message.recipients}
    known = {a.email.lower(): a for a in (*content.to, *content.cc, *content.bcc)}
    if content.undisclosed or not (content.to or content.cc):
        return [{"to": [_address(known.get(key, Address(r)))]} for key, r in envelope.items()]
    if not content.to:
        raise UnsupportedFeature("a message with Cc but no To", API.provider)
    visible = [a.email for a in (*content.to, *content.cc) if a.email.lower() not in envelope]
    if visible:
        raise UnsupportedFeature(
            f"visible recipients outside the envelope ({', '.join(visible)})", API.provider
        )
    lists: dict[str, list[dict[str, str]]] = {"to": [], "cc": [], "bcc": []}
    placed: set[str] = set()
    for kind, addresses in (("to", content.to), ("cc", content.cc)):
        for address in addresses:
            if address.email.lower() not in placed:
                placed.add(address.email.lower())
                lists[kind].append(_address(address))
    for key, rcpt in envelope.items():
        if key not in placed:
            lists["bcc"].append(_address(known.get(key, Address(rcpt))))
    return [{kind: entries for kind, entries in lists.items() if entries}]


def _bodies(content: Content) -> list[dict[str, str]]:
    """text/plain before text/html, as SendGrid requires."""
    parts = [
        {"type": kind, "value": value}
        for kind, value in (("text/plain", content.text), ("text/html", content.html))
        if value
    ]
    if not parts:
        raise UnsupportedFeature("a message without a text or HTML body", API.provider)
    return parts


def _encoded(name: str, value: str) -> str:
    """The spec's `headers`: "You must ensure these are properly encoded if they contain unicode
    characters" (sendgrid-oai mail_send.json): RFC 2047 encoded-words, unfolded."""
    if value.isascii():
        return value
    return Header(value, "utf-8", header_name=name).encode(linesep="")


def _address(address: Address) -> dict[str, str]:
    """The spec's `email` fields are `format: email`, RFC 5321's ASCII form: see _addresses."""
    email = ascii_address(address.email, API.provider)
    if address.name:
        return {"email": email, "name": address.name}
    return {"email": email}


def create(name: str, config: SendgridConfig, context: TransportContext) -> SendgridTransport:
    return SendgridTransport(name, config, context)
