"""Provider APIs: a host that does not exist, a certificate that fails verification and a host
name IDNA cannot encode are ConfigurationErrors naming the URL setting (health shows them);
a refused connection stays an ordinary temporary error. Real sockets, the service's client."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator

import httpx
import pytest
import trustme

from app.egress import EgressPolicy, http_client
from app.transports import http as provider_http
from app.transports import mandrill
from app.transports.errors import ConfigurationError, TemporaryError
from tests.transports._messages import context, outgoing

pytestmark = pytest.mark.anyio


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(EgressPolicy(deny=()), 5.0) as client:
        yield client


async def send_through(http: httpx.AsyncClient, base_url: str) -> TemporaryError:
    config = mandrill.MandrillConfig.model_validate({"apiKey": "k", "baseUrl": base_url})
    transport = mandrill.create("mandrill", config, context(http))
    with pytest.raises(TemporaryError) as caught:
        await transport.send(outgoing())
    return caught.value


async def test_a_host_that_does_not_exist(http):
    err = await send_through(http, "https://no-such-host.invalid/api/1.0")

    assert isinstance(err, ConfigurationError)
    assert (err.code, err.field, err.before_data) == ("EDNS", "baseUrl", True)


async def test_a_certificate_that_fails_verification(http):
    """An HTTPS server whose certificate no system CA signed."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        err = await send_through(http, f"https://127.0.0.1:{port}/api/1.0")
    finally:
        server.close()

    assert isinstance(err, ConfigurationError)
    assert (err.code, err.field) == ("ETLS", "baseUrl")
    assert "certificate verify failed" in err.message


async def test_a_host_name_idna_cannot_encode(http):
    with pytest.raises(ConfigurationError) as caught:
        await provider_http.request(http, mandrill.API, "GET", "https://xn--zz.example/")

    assert (caught.value.code, caught.value.field) == ("EDNS", "baseUrl")


async def test_a_refused_connection_is_not_a_configuration_error(http):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    err = await send_through(http, f"http://127.0.0.1:{port}/api/1.0")

    assert type(err) is TemporaryError
    assert err.code == "ECONNECTION"
