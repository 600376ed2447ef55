"""URL and host name settings, checked at save the way they are used at send time.

A provider URL is parsed by httpx and its host IDNA-encoded (or, for an A-label, decoded) exactly
as httpx does when it sends: a URL httpx would raise on (`https://xn--zz.example`, an invalid
A-label) is a 422 naming the setting, not an exception in the dispatcher or a 500 on verify. SMTP
host and EHLO names get the same host rules, since the resolver and the SMTP client encode them too.
Each check raises ValueError, which pydantic reports as a 422 on the field.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated
from urllib.parse import urlsplit

import httpx
import idna
from pydantic import AfterValidator, Field

MAX_HOST = 253
_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
"""A DNS label: letters, digits, hyphens inside; underscores allowed (container service names)."""
_DOTTED_NUMBERS = re.compile(r"[0-9]+(\.[0-9]+){3}")
_PROXY_SCHEMES = ("socks5", "socks5h", "socks4", "socks4a", "http")


def check_host(host: str) -> str:
    """Refuse a host name or IP address that cannot be IDNA-encoded or is not a DNS name.

    An A-label (`xn--...`) must decode, a U-label must encode (IDNA 2008, as httpx uses); an
    all-numbers name must be a valid IPv4 address. Returns `host` unchanged.
    """
    if not host:
        raise ValueError("has no host name")
    try:
        ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        pass
    else:
        return host
    if _DOTTED_NUMBERS.fullmatch(host):
        raise ValueError(f"{host!r} is not a valid IPv4 address")
    name = host.removesuffix(".")
    if len(name) > MAX_HOST:
        raise ValueError(f"the host name is longer than {MAX_HOST} characters")
    for label in name.split("."):
        _check_label(host, label)
    return host


def _check_label(host: str, label: str) -> None:
    if not label:
        raise ValueError(f"{host!r} has an empty label (two dots in a row, or a leading dot)")
    try:
        if not label.isascii():
            encoded = idna.encode(label.lower()).decode("ascii")
            if len(encoded) > 63:
                raise ValueError(f"{host!r} has a label longer than 63 characters once encoded")
            return
        if label.lower().startswith("xn--"):
            idna.decode(label.lower())
            return
    except idna.IDNAError as err:
        raise ValueError(f"{host!r} is not a valid IDNA host name ({label!r}: {err})") from err
    if not _LABEL.fullmatch(label):
        raise ValueError(
            f"{host!r} is not a valid host name: {label!r} must be letters, digits and inner"
            " hyphens, at most 63 characters"
        )


def check_http_url(value: str, *, query: bool = False) -> str:
    """Refuse a provider URL httpx cannot send to, or that cannot carry the API's paths.

    http or https, a valid host, a port in 1-65535, no user name or password (they would show in
    error messages; credentials have settings of their own), no query or fragment (paths are
    appended to it; with `query`, a URL used as it is, a query is fine). Returns `value` unchanged.
    """
    try:
        url = httpx.URL(value)
        url.host  # noqa: B018 (decodes an A-label host, as httpx does for every request)
    except (httpx.InvalidURL, UnicodeError, ValueError) as err:
        raise ValueError(f"is not a valid URL: {err}") from err
    if url.scheme not in ("http", "https"):
        raise ValueError("must start with http:// or https://")
    check_host(url.raw_host.decode("ascii"))
    _check_port(url.port)
    if url.userinfo:
        raise ValueError("must not hold a user name or password: use the credential settings")
    if url.fragment or (url.query and not query):
        raise ValueError(
            "must not have a query (?) or a fragment (#)"
            if not query
            else "must not have a fragment (#)"
        )
    return value


def check_proxy_url(value: str) -> str:
    """Refuse a proxy URL without a known scheme, a valid host or a valid port, or with a path."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as err:
        raise ValueError(f"is not a valid URL: {err}") from err
    if parts.scheme.lower() not in _PROXY_SCHEMES:
        raise ValueError("must be socks5://, socks5h://, socks4://, socks4a:// or http://host:port")
    check_host(parts.hostname or "")
    _check_port(port)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("must be scheme://host:port, with nothing after the port")
    return value


def check_ehlo_name(value: str) -> str:
    """An EHLO name: a host name, or an address literal such as `[192.0.2.1]`."""
    if value.startswith("[") and value.endswith("]"):
        try:
            ipaddress.ip_address(value[1:-1].removeprefix("IPv6:"))
        except ValueError as err:
            raise ValueError(f"{value!r} is not a valid address literal") from err
        return value
    return check_host(value)


def _check_port(port: int | None) -> None:
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"has port {port}: a port is 1-65535")


HttpUrl = Annotated[
    str, Field(max_length=2000, pattern=r"^https?://\S+$"), AfterValidator(check_http_url)
]
"""A provider API's URL: http(s), a host httpx can encode, no credentials, query or fragment."""
