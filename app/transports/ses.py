"""Amazon SES v2 SendEmail with raw MIME, SigV4-signed.

The MIME goes base64 in `Content.Raw.Data`. With raw content `Destination` acts as the envelope
(SES delivers to every address in it and does not write them into the headers), so every envelope
recipient goes in `Destination.ToAddresses`, Bcc ones included, and the envelope sender, which SES
requires to be a verified identity, in `FromEmailAddress`. Requests are signed with httpx-auth's
AWS4Auth for the service `ses` in the profile's region. Errors are classified by the error type SES
puts in `x-amzn-ErrorType` (or the body's `__type` / `code`), as botocore does.
"""

from __future__ import annotations

import base64
from typing import ClassVar

import httpx
from httpx_auth import AWS4Auth
from pydantic import Field, SecretStr

from app.schemas import CamelModel
from app.transports._addresses import ascii_address
from app.transports.base import OutgoingMessage, TransportContext, VerifyReport, refuse_options
from app.transports.errors import PermanentError
from app.transports.hook_settings import TopicArn
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


class SesConfig(CamelModel):
    credentials: ClassVar[str] = "accessKeyId and secretAccessKey"
    """The settings that hold the credentials, as an admin checks them when they are refused."""

    access_key_id: str = Field(min_length=16, max_length=128, pattern=r"^[A-Z0-9]+$")
    secret_access_key: SecretStr = Field(min_length=1, max_length=500)
    region: str = Field(min_length=1, max_length=50, pattern=r"^[a-z]{2}(-[a-z]+)+-\d+$")
    endpoint_url: HttpUrl | None = None
    """Overrides https://email.{region}.amazonaws.com (a VPC endpoint, or a local test server)."""
    configuration_set_name: str | None = Field(None, max_length=64)
    webhook_topic_arns: list[TopicArn] | None = Field(None, max_length=100)
    """The SNS topics POST /api/v1/hooks/{name}/events accepts notifications from (null: any
    topic, as long as SNS signed it)."""

    @property
    def endpoint(self) -> str:
        if self.endpoint_url is not None:
            return self.endpoint_url.rstrip("/")
        suffix = "amazonaws.com.cn" if self.region.startswith("cn-") else "amazonaws.com"
        return f"https://email.{self.region}.{suffix}"


def signer(config: SesConfig) -> httpx.Auth:
    """SigV4 for the service `ses` (the signing name, though the host says `email`)."""
    auth: httpx.Auth = AWS4Auth(
        config.access_key_id, config.secret_access_key.get_secret_value(), config.region, "ses"
    )
    return auth


def _refusal(response: httpx.Response) -> Refusal:
    """botocore's RestJSONParser: the x-amzn-ErrorType header up to ':', else the body's `__type`
    after '#', else its `code`; the text is the body's `message` (or `Message`)."""
    body = json_body(response)
    fields = body if isinstance(body, dict) else {}
    code = response.headers.get("x-amzn-errortype", "").split(":", 1)[0].strip()
    if not code and isinstance(fields.get("__type"), str):
        code = fields["__type"].rsplit("#", 1)[-1]
    if not code:
        code = str(fields.get("code") or fields.get("Code") or "")
    message = fields.get("message") or fields.get("Message")
    return Refusal(code or None, str(message) if message else text_of(response))


_CREDENTIALS = Rule("credentials")
_VERIFY_SENDER = "verify the sender (and, in the sandbox, the recipients) in SES"

API = Api(
    provider="Amazon SES",
    parse_error=_refusal,
    credentials_fix=(
        f"check {SesConfig.credentials}, and that they may call ses:SendEmail in the region"
    ),
    url_setting="endpointUrl",
    rules={
        "TooManyRequestsException": Rule("throttled"),
        "ThrottlingException": Rule("throttled"),
        "Throttling": Rule("throttled"),
        "MessageRejected": Rule("permanent", _VERIFY_SENDER),
        "MailFromDomainNotVerifiedException": Rule(
            "permanent", "verify the custom MAIL FROM domain of the sender in SES"
        ),
        "AccountSuspendedException": Rule("permanent", "the SES account is suspended"),
        "SendingPausedException": Rule("permanent", "sending is paused for this SES account"),
        "NotFoundException": Rule(
            "permanent", "check configurationSetName", field="configurationSetName"
        ),
        "UnrecognizedClientException": _CREDENTIALS,
        "InvalidClientTokenId": _CREDENTIALS,
        "InvalidSignatureException": _CREDENTIALS,
        "SignatureDoesNotMatch": _CREDENTIALS,
        "IncompleteSignature": _CREDENTIALS,
        "MissingAuthenticationToken": _CREDENTIALS,
        "ExpiredTokenException": _CREDENTIALS,
        "AccessDeniedException": _CREDENTIALS,
    },
)


class SesTransport(HttpTransport):
    api = API

    def __init__(self, name: str, config: SesConfig, context: TransportContext) -> None:
        super().__init__(name, config, context)
        self._base = config.endpoint
        self._configuration_set = config.configuration_set_name
        self._auth = signer(config)

    async def _send(self, message: OutgoingMessage) -> SendResult:
        refuse_options(message, self.api.provider)
        # SESv2 `Destination`: no SMTPUTF8, so 7-bit local parts and Punycode domains.
        payload: dict[str, object] = {
            "FromEmailAddress": ascii_address(message.envelope_from, API.provider),
            "Destination": {
                "ToAddresses": [ascii_address(rcpt, API.provider) for rcpt in message.recipients]
            },
            "Content": {"Raw": {"Data": base64.b64encode(message.mime).decode("ascii")}},
        }
        if self._configuration_set:
            payload["ConfigurationSetName"] = self._configuration_set
        response = await self._request(
            "POST", f"{self._base}/v2/email/outbound-emails", json=payload, auth=self._auth
        )
        body = json_body(response)
        if not (isinstance(body, dict) and isinstance(message_id := body.get("MessageId"), str)):
            raise unexpected_answer(API, response, "a MessageId")
        request_id = response.headers.get("x-amzn-requestid")
        result = SendResult.all(
            list(message.recipients), "sent", code=response.status_code, provider_id=message_id
        )
        if request_id:
            result.extra["requestId"] = request_id
        return result

    async def _verify(self) -> VerifyReport:
        """GetAccount: the credentials, whether sending is enabled, the sandbox and the quota."""
        report = VerifyReport(
            unchecked=[
                "whether the sender address or its domain is verified in SES",
                "whether the recipients are verified (needed while the account is in the sandbox)",
            ]
        )
        account: dict[str, object] = {}

        async def credentials() -> str:
            response = await self._request("GET", f"{self._base}/v2/email/account", auth=self._auth)
            body = json_body(response)
            if not isinstance(body, dict):
                raise unexpected_answer(API, response, "the account details")
            account.update(body)
            return "credentials accepted"

        async def sending() -> str:
            if account.get("SendingEnabled") is False:
                raise PermanentError("sending is disabled for this SES account", code="EAPI")
            quota = account.get("SendQuota")
            details = ["sending enabled"]
            if account.get("ProductionAccessEnabled") is False:
                details.append("sandbox: only verified recipients get mail")
            if isinstance(quota, dict):
                details.append(
                    f"sent {quota.get('SentLast24Hours', '?')} of {quota.get('Max24HourSend', '?')}"
                    f" in 24 h, at most {quota.get('MaxSendRate', '?')}/s"
                )
            return "; ".join(details)

        if await probe(report, "credentials", credentials):
            await probe(report, "sending", sending)
        return report


def create(name: str, config: SesConfig, context: TransportContext) -> SesTransport:
    return SesTransport(name, config, context)
