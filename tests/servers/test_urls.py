"""Provider URLs and SMTP host names httpx or the resolver would raise on are a 422 at save.

`https://xn--zz.example` (an invalid IDNA A-label) used to be saved, then raised IDNAError out of
httpx on every verify (a 500) and every delivery (a message left in `sending`).
"""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.transports.urls import check_http_url
from tests.servers.helpers import body

pytestmark = pytest.mark.anyio

BAD_URLS = [
    "https://xn--zz.example",  # invalid IDNA A-label: httpx raises IDNAError
    "https://xn--zz",
    "https://api.xn--zz.example/v1",
    "https://",  # no host
    "https:///v3",
    "https://exa mple.com",  # a space
    "https://api.example.com:99999",  # port out of range
    "https://api.example.com:0",
    "https://api.example.com:x",  # not a port
    "ftp://api.example.com",  # not http(s)
    "https://api..example.com",  # empty label
    "https://-api.example.com",
    "https://1.2.3.999",  # httpx: invalid IPv4 address
    "https://api%20x.example.com",
    "https://user:secret@api.example.com",  # credentials would show in error messages
    "https://api.example.com/v1?key=1",  # paths are appended to it
]
GOOD_URLS = [
    "https://api.example.com",
    "https://bücher.example/api",
    "https://xn--bcher-kva.example",
    "http://127.0.0.1:8025",
    "http://[::1]:8025/v1/",
    "http://mail_sink:8080",
]
BAD_HOSTS = [
    "xn--zz.example",
    "mail.xn--zz",
    "mail..example.com",
    ".example.com",
    "-mail.example.com",
    "mail%20x.example.com",
    "mail\u00a0x.example.com",  # a no-break space cannot be IDNA-encoded
    "1.2.3.999",
    "a" * 64 + ".example.com",
]

URL_FIELDS: list[tuple[str, str]] = [
    ("mandrill", "baseUrl"),
    ("sendgrid", "baseUrl"),
    ("mailgun", "baseUrl"),
    ("ses", "endpointUrl"),
    ("msgraph", "loginUrl"),
    ("msgraph", "graphUrl"),
    ("smtp", "oauth2.tokenUrl"),
    ("smtp", "proxy"),
]
"""Every URL setting of every profile type, by dotted path under `settings`."""


def with_setting(type_: str, path: str, value: str) -> dict[str, Any]:
    payload = body(type_, "urls")
    settings = payload["settings"] = copy.deepcopy(payload["settings"])
    if path == "oauth2.tokenUrl":
        settings["authMethod"] = "xoauth2"
        settings["oauth2"] = {"clientId": "client", "clientSecret": "s3cret", "tokenUrl": value}
    elif path == "proxy":
        settings["proxy"] = value.replace("https://", "socks5://", 1)
    else:
        settings[path] = value
    return payload


def fields(response: httpx.Response) -> list[str]:
    return [detail["field"] for detail in response.json()["error"]["details"]]


@pytest.mark.parametrize(("type_", "path"), URL_FIELDS)
async def test_every_url_setting_refuses_what_httpx_cannot_send_to(
    admin: httpx.AsyncClient, type_: str, path: str
) -> None:
    for url in BAD_URLS:
        if path == "proxy" and url.startswith("https://user:"):
            continue  # a proxy URL may carry the proxy's credentials
        response = await admin.post("/api/v1/servers", json=with_setting(type_, path, url))
        assert response.status_code == 422, (url, response.text)
        assert f"settings.{path}" in fields(response), (url, response.text)
    assert (await admin.get("/api/v1/servers")).json()["items"] == []
    for n, url in enumerate(GOOD_URLS):
        if path == "proxy":
            url = "/".join(url.split("/")[:3])  # a proxy is scheme://host:port only
        payload = with_setting(type_, path, url) | {"name": f"ok{n}"}
        response = await admin.post("/api/v1/servers", json=payload)
        assert response.status_code == 201, (url, response.text)


@pytest.mark.parametrize("path", ["host", "name"])
async def test_smtp_host_and_ehlo_name_must_be_idna_encodable(
    admin: httpx.AsyncClient, path: str
) -> None:
    for host in BAD_HOSTS:
        payload = body("smtp", "hosts")
        payload["settings"] = {**payload["settings"], path: host}
        response = await admin.post("/api/v1/servers", json=payload)
        assert response.status_code == 422, (host, response.text)
        assert f"settings.{path}" in fields(response), (host, response.text)
    for n, good in enumerate(["bücher.example", "xn--bcher-kva.example", "127.0.0.1", "mail_1."]):
        payload = body("smtp", f"ok{n}")
        payload["settings"] = {**payload["settings"], path: good}
        response = await admin.post("/api/v1/servers", json=payload)
        assert response.status_code == 201, (good, response.text)


async def test_an_ehlo_address_literal_is_accepted(admin: httpx.AsyncClient) -> None:
    payload = body("smtp", "literal")
    payload["settings"] = {**payload["settings"], "name": "[192.0.2.1]"}
    assert (await admin.post("/api/v1/servers", json=payload)).status_code == 201
    payload["settings"]["name"] = "[192.0.2.999]"
    response = await admin.post("/api/v1/servers", json=payload | {"name": "literal2"})
    assert response.status_code == 422
    assert fields(response) == ["settings.name"]


async def test_a_patch_to_a_bad_url_is_refused_and_keeps_the_old_one(
    admin: httpx.AsyncClient,
) -> None:
    created = await admin.post("/api/v1/servers", json=body("mandrill", "md"))
    assert created.status_code == 201, created.text
    response = await admin.patch(
        "/api/v1/servers/md", json={"settings": {"baseUrl": "https://xn--zz.example"}}
    )
    assert response.status_code == 422, response.text
    assert fields(response) == ["settings.baseUrl"]
    shown = (await admin.get("/api/v1/servers/md")).json()["settings"]
    assert shown["baseUrl"] == "https://mandrillapp.com/api/1.0"


@settings(max_examples=300, deadline=None)
@given(
    st.text(st.characters(codec="utf-8"), min_size=0, max_size=40).map(
        lambda host: f"https://{host}/api"
    )
)
def test_an_accepted_url_never_makes_httpx_raise(url: str) -> None:
    """Whatever passes the check builds a request httpx can send (no exception before I/O)."""
    try:
        check_http_url(url)
    except ValueError:
        return
    request = httpx.Request("GET", url)
    assert request.url.host
    assert request.url.raw_host.decode("ascii")
