"""The HTTP CONNECT handshake (RFC 9110 9.3.6) over a connected socket, losing no tunnelled byte.

An SMTP server speaks first: its 220 greeting may reach us in the same segment as the proxy's
`200 Connection established` (tinyproxy does that when the server is quick). python-socks reads
the proxy's answer with one `recv` and drops whatever followed the header block, so the greeting
was lost and the session waited for it until greetingTimeout. Here the answer is only *peeked*
at (MSG_PEEK) and then exactly the header block is consumed: every byte after it stays in the
kernel's buffer, and the SMTP session, given the socket, reads the greeting as on a direct
connection.

SOCKS proxies stay with python-socks: the SOCKS replies have a fixed length, nothing is lost.
"""

from __future__ import annotations

import asyncio
import base64
import re
import socket

from app.transports.errors import CredentialsError

MAX_HEAD_BYTES = 16 * 1024
"""The longest answer header block we read from a proxy before giving up on it."""

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})(?: ([^\r\n]*))?")
_END_OF_HEAD = b"\r\n\r\n"


class TunnelRefused(ConnectionError):
    """The proxy answered CONNECT with something other than 2xx, or not HTTP at all."""


def connect_request(host: str, port: int, username: str | None, password: str | None) -> bytes:
    """The CONNECT request; with a user, Basic `Proxy-Authorization` (RFC 9110 11.7.1)."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if username is not None:
        token = base64.b64encode(f"{username}:{password or ''}".encode()).decode("ascii")
        lines.append(f"Proxy-Authorization: Basic {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


async def http_tunnel(
    sock: socket.socket,
    host: str,
    port: int,
    *,
    username: str | None = None,
    password: str | None = None,
    proxy: str = "the proxy",
) -> None:
    """Ask the proxy on `sock` (connected, non-blocking) for a tunnel to host:port.

    Returns once the tunnel is open, with every byte after the proxy's answer unread on `sock`.
    Raises CredentialsError on 407, TunnelRefused on any other refusal, OSError when the
    connection fails. The caller bounds it in time and closes `sock` when it raises.
    """
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, connect_request(host, port, username, password))
    head = await read_head(sock)
    match = _STATUS_LINE.match(head)
    if match is None:
        raise TunnelRefused(f"{proxy} did not answer CONNECT in HTTP")
    status, reason = int(match[1]), (match[2] or b"").decode("latin-1").strip()
    answer = f"HTTP {status} {reason}".rstrip()
    if status == 407:
        said = "refused the credentials" if username is not None else "requires credentials"
        raise CredentialsError(
            f"{proxy} {said} ({answer}): check the user and password in proxy",
            code="EAUTH",
            before_data=True,
        )
    if not 200 <= status < 300:
        raise TunnelRefused(f"{proxy} refused the tunnel to {host} port {port}: {answer}")


async def read_head(sock: socket.socket) -> bytes:
    """The answer's header block, up to and including the empty line, and not one byte more."""
    loop = asyncio.get_running_loop()
    head = bytearray()
    while True:
        await _readable(loop, sock)
        try:
            peeked = sock.recv(MAX_HEAD_BYTES, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            continue
        if not peeked:
            raise TunnelRefused("the proxy closed the connection before answering CONNECT")
        tail = bytes(head[-3:])
        found = (tail + peeked).find(_END_OF_HEAD)
        wanted = len(peeked) if found < 0 else found + len(_END_OF_HEAD) - len(tail)
        taken = sock.recv(wanted)  # peeked, so it is there: recv takes exactly these bytes
        head += taken
        if found >= 0 and len(taken) == wanted:
            return bytes(head)
        if len(head) > MAX_HEAD_BYTES:
            raise TunnelRefused(f"the proxy's answer to CONNECT is over {MAX_HEAD_BYTES} bytes")


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """Wait until `sock` has something to read (or is closed)."""
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    fd = sock.fileno()
    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)
