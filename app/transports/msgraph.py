"""Microsoft Graph sendMail with the MIME as base64, app-only OAuth2 (client credentials).

Graph takes the recipients from the MIME headers only, so it gets `mime_with_bcc`, and a message
whose envelope differs from its To/Cc/Bcc headers (a retry to some recipients only) is refused
rather than sent to everyone again. Graph answers 202 with no message id. A request is capped at
about 4 MB, so a message over 3 MB (4 MB once base64-encoded) is refused before any request.
"""

from __future__ import annotations

import base64
import binascii
import json
from email.headerregistry import AddressHeader
from email.parser import HeaderParser
from email.policy import default as default_policy
from typing import ClassVar
from urllib.parse import quote

import httpx
from pydantic import Field, SecretStr

from app.schemas import CamelModel, a_labels
from app.transports.base import OutgoingMessage, TransportContext, VerifyReport, refuse_options
from app.transports.errors import CredentialsError, PermanentError, UnsupportedFeature
from app.transports.http import Api, HttpTransport, Refusal, Rule, json_body, probe, text_of
from app.transports.oauth import TokenCache, TokenRequest
from app.transports.result import SendResult
from app.transports.urls import HttpUrl

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
MAX_REQUEST_BYTES = 4 * 1024 * 1024
"""Graph's request size cap: the base64 MIME body may not exceed it."""


class MsgraphConfig(CamelModel):
    credentials: ClassVar[str] = "tenantId, clientId and clientSecret"
    """The settings that hold the credentials, as an admin checks them when they are refused."""

    tenant_id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9.-]+$")
    client_id: str = Field(min_length=1, max_length=200)
    client_secret: SecretStr = Field(min_length=1, max_length=1000)
    user_id: str = Field(min_length=1, max_length=320, pattern=r"^[^\s/]+$")
    """The mailbox that sends: its id or user principal name."""
    login_url: HttpUrl = "https://login.microsoftonline.com"
    graph_url: HttpUrl = "https://graph.microsoft.com"
    poll_bounces: bool = False
    """Poll the mailbox's Inbox for non-delivery reports (Graph has no bounce events) in the
    process that sets POSTROOM_BOUNCE_GRAPH_POLL: needs the Mail.Read application permission as
    well (app/events/bounces/graph.py)."""


def _refusal(response: httpx.Response) -> Refusal:
    """{"error": {"code": str, "message": str, "innerError": {...}}}."""
    body = json_body(response)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        return Refusal(error["code"], str(error.get("message", "")))
    return Refusal(None, text_of(response))


_NO_MAILBOX = Rule("permanent", "check userId", field="userId")

API = Api(
    provider="Microsoft Graph",
    parse_error=_refusal,
    credentials_fix=(
        f"check {MsgraphConfig.credentials}, and that the app has the Mail.Send"
        " application permission with admin consent for this mailbox"
    ),
    url_setting="graphUrl",
    rules={
        "ErrorSendAsDenied": Rule(
            "credentials", "the app may not send as the From address: send from userId's address"
        ),
        "ErrorInvalidUser": _NO_MAILBOX,
        "ResourceNotFound": _NO_MAILBOX,
        "MailboxNotEnabledForRESTAPI": _NO_MAILBOX,
        413: Rule("permanent", "Graph takes at most about 3 MB of MIME: send it through SMTP"),
    },
)


class MsgraphTransport(HttpTransport):
    api = API

    def __init__(self, name: str, config: MsgraphConfig, context: TransportContext) -> None:
        super().__init__(name, config, context)
        self._user_id = config.user_id
        self._send_url = (
            f"{config.graph_url.rstrip('/')}/v1.0/users/{quote(config.user_id, safe='@')}/sendMail"
        )
        self._tokens = TokenCache(context.http, token_request(config))

    async def _send(self, message: OutgoingMessage) -> SendResult:
        refuse_options(message, self.api.provider)
        mime = message.mime_with_bcc or message.mime
        _check_envelope(message, mime)
        body = base64.b64encode(mime)
        if len(body) > MAX_REQUEST_BYTES:
            raise PermanentError(
                f"the message is {len(mime) / 1e6:.1f} MB; Graph's sendMail takes at most about"
                " 3 MB of MIME (4 MB once base64-encoded): send it through SMTP",
                code="EMESSAGE",
                before_data=True,
            )
        token = await self._tokens.get()
        try:
            response = await self._post(body, token)
        except CredentialsError as err:
            if err.reply_code != 401:
                raise
            # The token may have been revoked before its expiry: fetch a new one, once.
            self._tokens.invalidate()
            response = await self._post(body, await self._tokens.get())
        result = SendResult.all(list(message.recipients), "sent", code=response.status_code)
        if request_id := response.headers.get("request-id"):
            result.extra["requestId"] = request_id
        return result

    async def _post(self, body: bytes, token: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/plain"}
        return await self._request("POST", self._send_url, content=body, headers=headers)

    async def _verify(self) -> VerifyReport:
        """A token fetch checks the tenant and the client credentials; the token's `roles` claim
        tells whether the app was granted Mail.Send."""
        report = VerifyReport(
            unchecked=[f"whether the mailbox {self._user_id} exists and the app may send as it"]
        )
        roles: list[object] = []

        async def token() -> str:
            claims = _jwt_claims(await self._tokens.get())
            granted = claims.get("roles") if claims is not None else None
            if isinstance(granted, list):
                roles.extend(granted)
            return "token issued"

        async def permission() -> str:
            if "Mail.Send" not in roles:
                raise CredentialsError(
                    "the app lacks the Mail.Send application permission: grant it with admin"
                    " consent to the app registration clientId",
                    code="EAUTH",
                    before_data=True,
                )
            return "the app has the Mail.Send application permission"

        if await probe(report, "token", token):
            if roles:
                await probe(report, "permission", permission)
            else:
                report.unchecked.append("whether the app has the Mail.Send application permission")
        return report


def token_request(config: MsgraphConfig) -> TokenRequest:
    """The app-only (client credentials) token for Graph, as sending and the bounce poll get it."""
    return TokenRequest(
        token_url=f"{config.login_url.rstrip('/')}/{config.tenant_id}/oauth2/v2.0/token",
        client_id=config.client_id,
        client_secret=config.client_secret.get_secret_value(),
        scope=GRAPH_SCOPE,
        provider="Microsoft Entra ID",
        credentials_fix=f"check {MsgraphConfig.credentials} (secrets expire)",
        url_setting="loginUrl",
    )


def _check_envelope(message: OutgoingMessage, mime: bytes) -> None:
    """Graph sends to the header recipients: refuse when they are not exactly the envelope."""
    # Parsed as text: the bytes parser reads a UTF-8 (RFC 6532) address as surrogate escapes, so
    # a message to an internationalised address never matched its envelope and was refused.
    head = mime.partition(b"\r\n\r\n")[0].decode("utf-8", "surrogateescape")
    headers = HeaderParser(policy=default_policy).parsestr(head)
    listed = {
        a_labels(address.addr_spec).lower()
        for name in ("to", "cc", "bcc")
        for header in headers.get_all(name, [])
        if isinstance(header, AddressHeader)
        for address in header.addresses
    }
    envelope = {a_labels(rcpt).lower() for rcpt in message.recipients}
    if listed != envelope:
        raise UnsupportedFeature(
            "an envelope that differs from the To/Cc/Bcc headers"
            f" (only in the envelope: {', '.join(sorted(envelope - listed)) or 'none'};"
            f" only in the headers: {', '.join(sorted(listed - envelope)) or 'none'})",
            API.provider,
        )


def _jwt_claims(token: str) -> dict[str, object] | None:
    """The claims of a JWT access token, unverified (for the report only); None if it's opaque."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


def create(name: str, config: MsgraphConfig, context: TransportContext) -> MsgraphTransport:
    return MsgraphTransport(name, config, context)
