"""OAuth2 access tokens (XOAUTH2, Microsoft Graph), fetched with httpx, cached until near expiry."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx

from app.transports.errors import TemporaryError, TransportError
from app.transports.http import Api, Refusal, Rule, Scrubber, json_body, request, text_of

EARLY_REFRESH_SECONDS = 300.0
"""A token is refreshed this long before it expires (or halfway through, if it lives shorter)."""


@dataclass(frozen=True, slots=True)
class TokenRequest:
    token_url: str
    client_id: str
    client_secret: str | None
    scope: str | None
    refresh_token: str | None = None
    """With a refresh token the refresh_token grant is used, otherwise client_credentials."""
    provider: str = "the token endpoint"
    """Who issues the tokens, for error messages ("Microsoft Entra ID")."""
    credentials_fix: str = "check the OAuth2 client id and secret"
    """What to check when the token endpoint refuses, naming the profile fields."""
    url_setting: str = "the token URL"
    """The profile setting the token URL comes from."""


class TokenCache:
    """Holds one access token and fetches a new one shortly before it expires."""

    def __init__(self, http: httpx.AsyncClient, request: TokenRequest) -> None:
        self._http = http
        self._request = request
        self._api = Api(
            provider=request.provider,
            parse_error=_refusal,
            credentials_fix=request.credentials_fix,
            url_setting=request.url_setting,
            rules={"temporarily_unavailable": Rule("temporary"), 400: Rule("credentials")},
        )
        self._scrub = Scrubber.of([request.client_secret, request.refresh_token])
        """Token endpoints echo what they were sent: their answers never show these secrets."""
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        self._token = None

    async def get(self) -> str:
        async with self._lock:
            if self._token is None or time.monotonic() >= self._expires_at:
                self._token, lifetime = await self._fetch()
                early = min(EARLY_REFRESH_SECONDS, lifetime / 2)
                self._expires_at = time.monotonic() + lifetime - early
            return self._token

    async def _fetch(self) -> tuple[str, float]:
        req = self._request
        form = {"client_id": req.client_id}
        if req.client_secret is not None:
            form["client_secret"] = req.client_secret
        if req.scope:
            form["scope"] = req.scope
        if req.refresh_token is not None:
            form |= {"grant_type": "refresh_token", "refresh_token": req.refresh_token}
        else:
            form["grant_type"] = "client_credentials"
        try:
            response = await request(self._http, self._api, "POST", req.token_url, data=form)
        except TransportError as err:
            self._scrub.error(err)
            raise
        body = json_body(response)
        if isinstance(body, dict) and isinstance(token := body.get("access_token"), str):
            return token, _seconds(body.get("expires_in"))
        raise self._scrub.error(
            TemporaryError(
                f"{req.provider} answered without an access_token",
                code="EAUTH",
                reply_code=response.status_code,
                reply=text_of(response),
                before_data=True,
            )
        )


def _refusal(response: httpx.Response) -> Refusal:
    """RFC 6749 §5.2: {"error": code, "error_description": text}."""
    body = json_body(response)
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return Refusal(body["error"], str(body.get("error_description") or body["error"]))
    return Refusal(None, text_of(response))


def _seconds(expires_in: object) -> float:
    """`expires_in` is a number, or a numeric string from older endpoints; one hour if absent."""
    if isinstance(expires_in, int | float):
        return float(expires_in)
    if isinstance(expires_in, str) and expires_in.isdigit():
        return float(expires_in)
    return 3600.0
