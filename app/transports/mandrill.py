"""Mandrill (Mailchimp Transactional): messages/send-raw with an explicit envelope.

The MIME goes as a JSON string with the envelope recipients in `to`, so Bcc recipients (absent from
the headers) are delivered. `from_email` overrides the From header's address, so it is that very
address: Mandrill bounces to its own Return-Path whatever the envelope sender says.

Mandrill answers 200 with one status per recipient, rejections included. Errors are classified by
their `name`, since legacy answers put every error under HTTP 500.
"""

from __future__ import annotations

from typing import Any, ClassVar

import httpx
from pydantic import Field, SecretStr

from app.schemas import CamelModel
from app.transports._addresses import ascii_address
from app.transports.base import OutgoingMessage, TransportContext, VerifyReport, refuse_options
from app.transports.errors import UnsupportedFeature
from app.transports.hook_settings import WebhookUrl
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
from app.transports.result import RecipientResult, RecipientStatus, SendResult
from app.transports.urls import HttpUrl


class MandrillConfig(CamelModel):
    credentials: ClassVar[str] = "apiKey"
    """The settings that hold the credentials, as an admin checks them when they are refused."""

    api_key: SecretStr = Field(min_length=1, max_length=500)
    base_url: HttpUrl = "https://mandrillapp.com/api/1.0"
    webhook_key: SecretStr | None = Field(None, min_length=1, max_length=500)
    """The webhook's key (Settings > Webhooks): Mandrill signs every batch with it."""
    webhook_url: WebhookUrl | None = None
    """The webhook URL exactly as entered at Mandrill, which it signs (behind a proxy it is not
    the URL Postroom sees)."""


_STATUSES: dict[str, RecipientStatus] = {
    "sent": "sent",
    "queued": "queued",
    "scheduled": "queued",
    "rejected": "rejected",
    "invalid": "invalid",
}


def _refusal(response: httpx.Response) -> Refusal:
    """{"status": "error", "code": int, "name": str, "message": str}."""
    body = json_body(response)
    if isinstance(body, dict) and isinstance(body.get("name"), str):
        return Refusal(body["name"], str(body.get("message", "")))
    return Refusal(None, text_of(response))


API = Api(
    provider="Mandrill",
    parse_error=_refusal,
    credentials_fix=f"check {MandrillConfig.credentials}",
    url_setting="baseUrl",
    rules={
        "Invalid_Key": Rule("credentials"),
        "PaymentRequired": Rule("permanent", "the Mandrill account needs a positive balance"),
        "Unknown_Subaccount": Rule("permanent"),
        "ValidationError": Rule("permanent"),
        "RequestLimitExceeded": Rule("throttled"),
        "GeneralError": Rule("temporary"),
        "ServiceUnavailable": Rule("temporary"),
    },
)


class MandrillTransport(HttpTransport):
    api = API

    def __init__(self, name: str, config: MandrillConfig, context: TransportContext) -> None:
        super().__init__(name, config, context)
        self._key = config.api_key
        self._base = config.base_url.rstrip("/")

    async def _send(self, message: OutgoingMessage) -> SendResult:
        refuse_options(message, self.api.provider)
        try:
            raw = message.mime.decode()
        except UnicodeDecodeError as err:
            raise UnsupportedFeature("MIME that is not UTF-8 text", API.provider) from err
        payload = {
            "key": self._key.get_secret_value(),
            "raw_message": raw,
            # `format: email` in the send-raw schema: RFC 5321's ASCII form (see _addresses).
            "from_email": ascii_address(message.content.sender.email, API.provider),
            "to": [ascii_address(rcpt, API.provider) for rcpt in message.recipients],
        }
        response = await self._request("POST", f"{self._base}/messages/send-raw.json", json=payload)
        return _result(message, response)

    async def _verify(self) -> VerifyReport:
        report = VerifyReport(
            unchecked=[
                "whether the sender's domain is verified in Mandrill",
                "whether the recipients are on Mandrill's rejection list",
            ]
        )

        async def ping() -> str:
            response = await self._request(
                "POST", f"{self._base}/users/ping2.json", json={"key": self._key.get_secret_value()}
            )
            return f"API key accepted ({text_of(response)})"

        await probe(report, "credentials", ping)
        return report


def _result(message: OutgoingMessage, response: httpx.Response) -> SendResult:
    """One RecipientResult per envelope recipient from Mandrill's per-recipient array.

    A recipient Mandrill does not list is deferred, so it is retried: a duplicate beats a loss; an
    unknown status counts as queued, since Mandrill accepted the message. Mandrill gives each
    recipient its own id: `provider_id` is the first, `extra["ids"]` lists them all.
    """
    body = json_body(response)
    answers: dict[str, dict[str, Any]] = {}
    if isinstance(body, list):
        answers = {
            item["email"].lower(): item
            for item in body
            if isinstance(item, dict) and isinstance(item.get("email"), str)
        }
    if not answers:
        raise unexpected_answer(API, response, "a per-recipient array")
    recipients: dict[str, RecipientResult] = {}
    ids: list[str] = []
    for rcpt in message.recipients:
        answer = answers.get(rcpt.lower())
        if answer is None:
            recipients[rcpt] = RecipientResult("deferred", message="missing from Mandrill's answer")
            continue
        status = str(answer.get("status"))
        reason = answer.get("reject_reason") or answer.get("queued_reason") or ""
        if status not in _STATUSES:
            reason = f"Mandrill status {status!r}"
        recipients[rcpt] = RecipientResult(
            _STATUSES.get(status, "queued"), response.status_code, str(reason)
        )
        if isinstance(answer.get("_id"), str):
            ids.append(answer["_id"])
    return SendResult(
        recipients,
        provider_id=ids[0] if ids else None,
        reply_code=response.status_code,
        extra={"ids": ",".join(ids)} if len(ids) > 1 else {},
    )


def create(name: str, config: MandrillConfig, context: TransportContext) -> MandrillTransport:
    return MandrillTransport(name, config, context)
