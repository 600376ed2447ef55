"""What every HTTP provider transport shares: one request helper that maps httpx errors and HTTP
statuses onto the transport error tree, Retry-After parsing, and the verify-step runner.

A provider module describes its API once (an `Api`: how to read its error bodies, which of its error
codes are temporary, credential or permanent, and which profile field to fix) and calls `request`.
Anything that is not a 2xx answer leaves `request` as a TransportError, raised `from` the cause.

Provider answers are stored (the attempts table) and shown (GET /messages/{id}, verify and test
reports), and some providers echo what they were sent. So whatever leaves an HttpTransport's `send`
or `verify` (or a token fetch) goes through a `Scrubber` first: every secret of the profile is
redacted, then the text is cut to 1 KiB. This is the one place that does it, for every provider.

Before data: an HTTP send is atomic, so the provider has accepted nothing unless it answered 2xx.
`before_data` is True when we know it accepted nothing (no connection, or a 4xx answer), so moving
to the profile's fallback is safe; it is False for 5xx answers and lost connections, where it may
have. `ambiguous` is True when the whole request went out and the answer was lost (read errors and
timeouts, 502/504 from a gateway): the provider may have accepted the message.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from app.egress import EgressDenied
from app.secret_fields import split as split_secrets
from app.transports.base import OutgoingMessage, TransportContext, VerifyReport, VerifyStep
from app.transports.errors import (
    ConfigError,
    ConfigurationError,
    CredentialsError,
    PermanentError,
    TemporaryError,
    Throttled,
    TransportError,
    unknown_host,
)
from app.transports.result import SendResult

Kind = Literal["temporary", "throttled", "credentials", "permanent"]
"""How a refusal is retried: later, later after an admin fixed the profile, or never."""

_log = logging.getLogger(__name__)

MAX_TEXT_BYTES = 1024
"""A provider's answer is stored and shown cut to this many bytes (UTF-8), after redaction."""
REDACTED = "[REDACTED]"
_AMBIGUOUS_STATUSES = frozenset({502, 504})


@dataclass(frozen=True, slots=True)
class Refusal:
    """A provider's error answer, read from its body and headers."""

    code: str | None
    """The provider's error code or name (Mandrill `name`, SES error type, Graph `error.code`)."""
    message: str


@dataclass(frozen=True, slots=True)
class Rule:
    """What a provider error code (or HTTP status) means for the send."""

    kind: Kind
    fix: str = ""
    """What to do about it, in plain words naming the profile field to change."""
    field: str | None = None
    """The profile field at fault: the error becomes a ConfigError naming it (permanent only)."""


@dataclass(frozen=True, slots=True)
class Api:
    """How one provider's API reports errors."""

    provider: str
    """The name used in error messages: "Mandrill", "Amazon SES", ..."""
    parse_error: Callable[[httpx.Response], Refusal]
    credentials_fix: str
    """What to check when the provider refuses the credentials (401/403), e.g. "check apiKey"."""
    url_setting: str
    """The setting that holds the API's URL, blamed for redirects."""
    rules: Mapping[str | int, Rule] = field(default_factory=dict)
    """By provider error code first, then by HTTP status; the status class decides otherwise."""


async def request(
    http: httpx.AsyncClient,
    api: Api,
    method: str,
    url: str,
    *,
    logger: logging.Logger = _log,
    **kwargs: Any,
) -> httpx.Response:
    """Send one request without following redirects; return its 2xx answer or raise.

    Only the method, URL, status and duration are logged: never headers or bodies, which carry
    the credentials of most providers. An address the egress policy denies (checked by the
    service's client on every new connection) is a ConfigError naming the URL setting.
    """
    started = time.perf_counter()
    try:
        response = await http.request(method, url, follow_redirects=False, **kwargs)
    except EgressDenied as err:
        raise ConfigError(
            f"{api.provider}: {err.message}", field=api.url_setting, code="EPOLICY"
        ) from err
    except (httpx.InvalidURL, UnicodeError) as err:  # a host name IDNA cannot encode
        raise ConfigurationError(
            f"{api.provider}: {url} is not a valid URL: {err}", code="EDNS", field=api.url_setting
        ) from err
    except (httpx.ConnectTimeout, httpx.PoolTimeout) as err:
        raise TemporaryError(
            f"{api.provider}: timed out connecting to {url}", code="ETIMEDOUT", before_data=True
        ) from err
    except httpx.TimeoutException as err:
        raise TemporaryError(
            f"{api.provider}: timed out waiting for {url}",
            code="ETIMEDOUT",
            ambiguous=isinstance(err, httpx.ReadTimeout),
        ) from err
    except (httpx.ConnectError, httpx.ProxyError) as err:
        raise connect_error(api, url, err) from err
    except httpx.TransportError as err:
        raise TemporaryError(
            f"{api.provider}: connection to {url} failed: {err!r}",
            code="ECONNECTION",
            ambiguous=isinstance(err, httpx.ReadError | httpx.RemoteProtocolError),
        ) from err
    elapsed_ms = (time.perf_counter() - started) * 1000
    logger.debug("%s %s -> %d (%.0f ms)", method, url, response.status_code, elapsed_ms)
    if not response.is_success:
        raise refusal_error(api, response)
    return response


def connect_error(api: Api, url: str, err: httpx.TransportError) -> TemporaryError:
    """No connection to the API. A host that does not exist or a certificate that fails
    verification is a ConfigurationError naming the URL's setting: an admin must fix it, the
    profile's health shows it."""
    message = f"{api.provider}: cannot connect to {url}: {err}"
    cause: BaseException | None = err
    for _ in range(10):
        if cause is None:
            break
        if unknown_host(cause):
            return ConfigurationError(message, code="EDNS", field=api.url_setting)
        if isinstance(cause, ssl.SSLCertVerificationError):
            return ConfigurationError(message, code="ETLS", field=api.url_setting)
        cause = cause.__cause__ or cause.__context__
    return TemporaryError(message, code="ECONNECTION", before_data=True)


def refusal_error(api: Api, response: httpx.Response) -> TransportError:
    """The TransportError for a provider's non-2xx answer."""
    status = response.status_code
    if response.is_redirect:
        location = response.headers.get("location", "?")
        return PermanentError(
            f"{api.provider} answered {status} redirecting to {location}: check {api.url_setting}",
            code="EAPI",
            reply_code=status,
            before_data=True,
        )
    refusal = api.parse_error(response)
    rule = api.rules.get(refusal.code) if refusal.code is not None else None
    rule = rule or api.rules.get(status)
    kind = rule.kind if rule else kind_of_status(status)
    fix = rule.fix if rule and rule.fix else ""
    reply = f"{refusal.code}: {refusal.message}" if refusal.code else refusal.message
    options: dict[str, Any] = {
        "reply_code": status,
        "reply": reply,
        "before_data": status < 500,
        "ambiguous": status in _AMBIGUOUS_STATUSES,
        "retry_after": retry_after(response, now=time.time()),
    }
    if kind == "credentials":
        message = f"{api.provider} refused the credentials: {fix or api.credentials_fix}"
        return CredentialsError(message, code="EAUTH", **options)
    if kind == "throttled":
        message = f"{api.provider} asked to slow down" + (f": {fix}" if fix else "")
        return Throttled(message, code="EAPI", **options)
    if kind == "temporary":
        message = f"{api.provider} failed, retry later" + (f": {fix}" if fix else "")
        return TemporaryError(message, code="EAPI", **options)
    message = f"{api.provider} refused the request" + (f": {fix}" if fix else "")
    if rule is not None and rule.field is not None:
        return ConfigError(message, field=rule.field, reply_code=status, reply=reply)
    return PermanentError(message, code="EAPI", **options)


def kind_of_status(status: int) -> Kind:
    """HTTP 429 slows the profile down, 408/5xx are retried, 401/403 are credentials, any other
    status is permanent."""
    if status == 429:
        return "throttled"
    if status in (401, 403):
        return "credentials"
    if status == 408 or status >= 500:
        return "temporary"
    return "permanent"


def retry_after(response: httpx.Response, *, now: float) -> float | None:
    """Seconds to wait from `Retry-After` (seconds or an HTTP date), else from `X-RateLimit-Reset`
    (SendGrid: the Unix time the limit resets); None when the answer says neither."""
    value = response.headers.get("retry-after", "").strip()
    if value:
        if value.isdigit():
            return float(value)
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(when.timestamp() - now, 0.0) if when.tzinfo is not None else None
    reset = response.headers.get("x-ratelimit-reset", "").strip()
    if reset.isdigit():
        return max(int(reset) - now, 0.0)
    return None


def json_body(response: httpx.Response) -> object:
    """The decoded JSON body, or None when the body is not JSON."""
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def text_of(response: httpx.Response) -> str:
    """A body that is not the JSON we expected, on one line. Not cut here: a cut could leave part
    of a secret that redaction no longer recognises; the Scrubber cuts after redacting."""
    return " ".join(response.text.split()) or response.reason_phrase


def unexpected_answer(api: Api, response: httpx.Response, expected: str) -> TemporaryError:
    """A 2xx answer without what the provider documents: it may have sent, so it is ambiguous."""
    return TemporaryError(
        f"{api.provider} answered {response.status_code} without {expected}",
        code="EPROTOCOL",
        reply_code=response.status_code,
        reply=text_of(response),
        ambiguous=True,
    )


@dataclass(frozen=True, slots=True)
class Scrubber:
    """Redacts a profile's secrets from provider answers, then cuts them to MAX_TEXT_BYTES.

    Each secret is also looked for as it appears JSON-escaped and URL-encoded, the forms an
    echoed request body or query carries. Longer secrets go first, so one that contains another
    is redacted whole.
    """

    secrets: tuple[str, ...] = ()

    @classmethod
    def of(cls, values: Iterable[str | None]) -> Scrubber:
        forms = {
            form
            for value in values
            if value
            for form in (value, json.dumps(value)[1:-1], quote(value, safe=""))
        }
        return cls(tuple(sorted(forms, key=len, reverse=True)))

    @classmethod
    def of_config(cls, config: BaseModel) -> Scrubber:
        """Every secret the profile's settings hold (the SecretStr fields, app.secret_fields)."""
        return cls.of(split_secrets(config)[1].values())

    def text(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        data = text.encode("utf-8", "surrogatepass")
        if len(data) <= MAX_TEXT_BYTES:
            return text
        return data[:MAX_TEXT_BYTES].decode("utf-8", "ignore")

    def error(self, err: TransportError) -> TransportError:
        """The same error, its message and reply scrubbed (in place, so `raise` keeps its type)."""
        err.message = self.text(err.message)
        err.args = (err.message,)
        if err.reply is not None:
            err.reply = self.text(err.reply)
        return err

    def report(self, report: VerifyReport) -> VerifyReport:
        for step in report.steps:
            step.detail = self.text(step.detail)
        return report

    def result(self, result: SendResult) -> SendResult:
        result.recipients = {
            rcpt: replace(answer, message=self.text(answer.message))
            for rcpt, answer in result.recipients.items()
        }
        return result


class HttpTransport:
    """The base of provider transports: the shared client, the API description, no own state.

    Subclasses set `api` and implement `_send` and `_verify`; `send` and `verify` scrub what those
    return or raise (see Scrubber), so no provider can forget to.
    """

    api: ClassVar[Api]

    def __init__(self, name: str, config: BaseModel, context: TransportContext) -> None:
        self.name = name
        self._http = context.http
        self._log = context.logger
        self._scrub = Scrubber.of_config(config)

    async def send(self, message: OutgoingMessage) -> SendResult:
        try:
            result = await self._send(message)
        except TransportError as err:
            self._scrub.error(err)
            raise
        return self._scrub.result(result)

    async def verify(self) -> VerifyReport:
        return self._scrub.report(await self._verify())

    async def _send(self, message: OutgoingMessage) -> SendResult:
        raise NotImplementedError

    async def _verify(self) -> VerifyReport:
        raise NotImplementedError

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return await request(self._http, self.api, method, url, logger=self._log, **kwargs)

    async def aclose(self) -> None:
        """Nothing to release: the HTTP client is the service's, shared by every transport."""


async def probe(report: VerifyReport, name: str, check: Callable[[], Awaitable[str]]) -> bool:
    """Run one verify step: `check` returns a detail or raises; the outcome goes in `report`."""
    started = time.perf_counter()
    try:
        detail = await check()
    except TransportError as err:
        elapsed_ms = (time.perf_counter() - started) * 1000
        report.steps.append(VerifyStep(name, False, elapsed_ms, str(err)))
        report.error_code = err.code
        return False
    report.steps.append(VerifyStep(name, True, (time.perf_counter() - started) * 1000, detail))
    return True
