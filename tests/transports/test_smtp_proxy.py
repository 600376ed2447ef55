"""SMTP through an HTTP CONNECT proxy that sends its 200 and the server's greeting in one write.

tinyproxy does that when the SMTP server greets quickly; a client that reads the proxy's answer
with one recv and drops what follows the header block loses the 220 and waits for it until
greetingTimeout (python-socks did: 12 tunnels in 20 failed).
"""

from __future__ import annotations

import asyncio
import base64
import socket
from typing import Any

import pytest

from app.transports import smtp
from app.transports.errors import ConfigurationError, CredentialsError, TemporaryError
from app.transports.proxy import connect_request, http_tunnel
from app.transports.smtp import SmtpTransport
from tests.smtpd import SmtpServer, make_message
from tests.transports._loopback import LoopbackServer, pipe

pytestmark = pytest.mark.anyio


class CoalescingProxy(LoopbackServer):
    """An HTTP CONNECT proxy on 127.0.0.1 that waits for the upstream's greeting and writes it
    in the same write as `HTTP/1.1 200 Connection established`, then pipes both ways.

    With `credentials`, a CONNECT without the matching Basic Proxy-Authorization gets a 407.
    `status` replaces the 200 with another answer (the tunnel is then not opened).
    """

    def __init__(
        self, credentials: tuple[str, str] | None = None, status: str | None = None
    ) -> None:
        super().__init__()
        self.credentials = credentials
        self.status = status
        self.requests: list[bytes] = []
        self.tunnels = 0

    def url(self, credentials: tuple[str, str] | None = None) -> str:
        login = ":".join(credentials) + "@" if credentials else ""
        return f"http://{login}127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(request)
        if self.status is not None:
            writer.write(f"HTTP/1.1 {self.status}\r\nContent-Length: 0\r\n\r\n".encode())
            await writer.drain()
            return
        if self.credentials is not None:
            token = base64.b64encode(":".join(self.credentials).encode())
            if b"\r\nProxy-Authorization: Basic " + token + b"\r\n" not in request:
                writer.write(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                    b'Proxy-Authenticate: Basic realm="proxy"\r\nContent-Length: 0\r\n\r\n'
                )
                await writer.drain()
                return
        target = request.split(b"\r\n", 1)[0].split(b" ")[1].decode()
        host, _, port = target.rpartition(":")
        up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
        greeting = b""
        while not greeting.startswith(b"220 ") and b"\r\n220 " not in greeting:
            greeting += await up_reader.readuntil(b"\r\n")
        self.tunnels += 1
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n" + greeting)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def build(server: SmtpServer, smtp_context: Any, **settings: Any) -> SmtpTransport:
    config = server.config(greetingTimeout=2000, **settings)
    return smtp.create("test", config, smtp_context)


async def test_greeting_in_the_same_segment_as_the_200_is_kept(smtp_server, smtp_context):
    async with CoalescingProxy() as proxy:
        transport = build(smtp_server, smtp_context, proxy=proxy.url())
        for _ in range(20):
            report = await transport.verify()
            assert report.ok, report
            result = await transport.send(make_message())
            assert result.reply_code == 250

    assert proxy.tunnels == 40
    assert len(smtp_server.transactions) == 20
    assert all(b"Proxy-Authorization" not in request for request in proxy.requests)
    request_line = f"CONNECT 127.0.0.1:{smtp_server.port} HTTP/1.1\r\n"
    assert proxy.requests[0].startswith(request_line.encode())


async def test_pooled_connections_through_the_proxy(smtp_server, smtp_context):
    async with CoalescingProxy() as proxy:
        transport = build(smtp_server, smtp_context, proxy=proxy.url(), pool=True)
        try:
            results = await asyncio.gather(*(transport.send(make_message()) for _ in range(10)))
        finally:
            await transport.aclose()

    assert {result.reply_code for result in results} == {250}
    assert len(smtp_server.transactions) == 10


async def test_proxy_basic_auth(smtp_server, smtp_context):
    credentials = ("proxy user", "p@ss:word")
    async with CoalescingProxy(credentials) as proxy:
        # userinfo is percent-encoded in the URL, sent decoded in the Basic token
        url = proxy.url(("proxy%20user", "p%40ss%3Aword"))
        transport = build(smtp_server, smtp_context, proxy=url)
        result = await transport.send(make_message())
        report = await transport.verify()

    assert result.reply_code == 250
    assert report.ok
    assert "p@ss:word" not in str(report)
    assert "p%40ss" not in str(report)
    assert report.steps[0].data["proxy"] == f"http://127.0.0.1:{proxy.port}"


@pytest.mark.parametrize("given", [None, ("proxy%20user", "wrong")])
async def test_proxy_refusing_the_credentials(smtp_server, smtp_context, given):
    async with CoalescingProxy(("proxy user", "right")) as proxy:
        transport = build(smtp_server, smtp_context, proxy=proxy.url(given))
        with pytest.raises(CredentialsError) as caught:
            await transport.send(make_message())
        report = await transport.verify()

    err = caught.value
    assert isinstance(err, ConfigurationError)
    assert err.code == "EAUTH"
    assert "407" in err.message
    assert "proxy" in err.message
    assert ("refused the credentials" in err.message) == (given is not None)
    assert not report.ok
    assert report.error_code == "EAUTH"
    assert smtp_server.sessions == []


async def test_proxy_refusing_the_tunnel(smtp_server, smtp_context):
    async with CoalescingProxy(status="403 Forbidden") as proxy:
        transport = build(smtp_server, smtp_context, proxy=proxy.url())
        with pytest.raises(TemporaryError) as caught:
            await transport.send(make_message())

    assert caught.value.code == "ECONNECTION"
    assert "HTTP 403 Forbidden" in caught.value.message
    assert smtp_server.sessions == []


async def test_only_the_header_block_is_consumed():
    """The tunnel keeps the bytes after the empty line even when they came in the same write,
    whatever the split of the header block across reads."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    answer = [b"HTTP/1.1 200 OK\r", b"\nVia: x\r\n\r", b"\n220 hello\r\n"]

    async def proxy_side() -> None:
        loop = asyncio.get_running_loop()
        listener.setblocking(False)
        conn, _ = await loop.sock_accept(listener)
        with conn:
            await loop.sock_recv(conn, 4096)
            for part in answer:
                await loop.sock_sendall(conn, part)
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)

    loop = asyncio.get_running_loop()
    server = asyncio.create_task(proxy_side())
    client = socket.socket()
    client.setblocking(False)
    try:
        await loop.sock_connect(client, ("127.0.0.1", port))
        await http_tunnel(client, "smtp.example", 25)
        assert await loop.sock_recv(client, 100) == b"220 hello\r\n"
    finally:
        client.close()
        await server
        listener.close()


def test_connect_request():
    assert connect_request("::1", 25, None, None) == (
        b"CONNECT [::1]:25 HTTP/1.1\r\nHost: [::1]:25\r\n\r\n"
    )
    assert connect_request("mx.example", 587, "u", "p") == (
        b"CONNECT mx.example:587 HTTP/1.1\r\nHost: mx.example:587\r\n"
        b"Proxy-Authorization: Basic dTpw\r\n\r\n"
    )
