"""The bytes of one SMTP connection: an asyncio protocol on the connected socket that parses the
server's replies as they arrive and keeps them, in order, until they are read.

Several replies may come in one segment (PIPELINING) and one reply may come in several: both are
kept whole. A reply that comes while none is awaited (a server's "421 idle timeout" before it
closes) is kept too, so a pooled connection that holds one is not `alive`. TLS is the event
loop's: implicit when opening, `start_tls` for STARTTLS. Only the loop's public API is used.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from typing import NamedTuple, cast

_MAX_LINE_BYTES = 8192
"""The longest reply line taken (RFC 5321 4.5.3.1.5 allows 512)."""
_MAX_REPLY_LINES = 200


class Reply(NamedTuple):
    """One SMTP reply: its code and its text, the lines of a multi-line reply joined by LF."""

    code: int
    message: str

    def __str__(self) -> str:
        return f"{self.code} {self.message}"


class SmtpError(Exception):
    """A failure of the SMTP conversation itself (translate.py maps it by phase)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ReplyError(SmtpError):
    """The server answered a command with a reply other than the one it needs."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.message)
        self.code = reply.code

    def __str__(self) -> str:
        return f"{self.code} {self.message}"


class ProtocolError(SmtpError):
    """What the server sent is not an SMTP reply."""


class Disconnected(SmtpError, ConnectionError):
    """The connection is closed: the server closed it, or it was lost (the cause, when known,
    is the exception's __cause__: a TLS alert is found there)."""


class Wire(asyncio.Protocol):
    """One SMTP connection: writes, flow control, and the replies read from it in order."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._lines: list[bytes] = []
        """The lines of a multi-line reply read so far."""
        self._replies: deque[Reply] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._drained: asyncio.Future[None] | None = None
        self._failure: SmtpError | None = None
        """Why no more replies will come: set when the connection closed or went wrong."""
        self._cause: BaseException | None = None

    @classmethod
    async def open(
        cls,
        sock: socket.socket,
        *,
        tls: ssl.SSLContext | None,
        server_hostname: str,
        handshake_timeout: float,
    ) -> Wire:
        """The protocol on a connected socket; with `tls`, once the TLS handshake is done
        (implicit TLS) within `handshake_timeout` seconds."""
        wire = cls()
        loop = wire._loop
        if tls is None:
            await loop.create_connection(lambda: wire, sock=sock)
        else:
            await loop.create_connection(
                lambda: wire,
                sock=sock,
                ssl=tls,
                server_hostname=server_hostname,
                ssl_handshake_timeout=handshake_timeout,
            )
        return wire

    async def start_tls(
        self, context: ssl.SSLContext, server_hostname: str, handshake_timeout: float
    ) -> None:
        """Upgrade to TLS (after STARTTLS's 220). Anything the server sent before the handshake
        is dropped: RFC 3207 4.2, a man in the middle may have injected it."""
        self._buffer.clear()
        self._lines.clear()
        self._replies.clear()
        transport = await self._loop.start_tls(
            self._writable(),
            self,
            context,
            server_hostname=server_hostname,
            ssl_handshake_timeout=handshake_timeout,
        )
        if transport is None:
            raise self._lost()
        self._transport = transport

    @property
    def alive(self) -> bool:
        """Open, and the server said nothing unasked (no reply waits to be read)."""
        return self._failure is None and not self._replies and self._transport is not None

    @property
    def closed(self) -> bool:
        return self._failure is not None

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        if self._transport is None:
            return None
        return cast(ssl.SSLObject | None, self._transport.get_extra_info("ssl_object"))

    def write(self, data: bytes) -> None:
        self._writable().write(data)

    async def drain(self, within: float) -> None:
        """Wait, at most `within` seconds, until the kernel takes what was written."""
        if self._failure is not None:
            raise self._lost()
        if not self._paused:
            return
        waiter = self._drained = self._loop.create_future()
        await self._wait(waiter, within)

    async def reply(self, within: float | None) -> Reply:
        """The next reply, waiting at most `within` seconds for it (None: no limit of its own).

        A timeout closes the connection: the reply may still come, and would be taken for the
        next command's."""
        if not self._replies:
            if self._failure is not None:
                raise self._lost()
            waiter = self._waiter = self._loop.create_future()
            try:
                await self._wait(waiter, within)
            except TimeoutError:
                self.abort()
                raise
            finally:
                self._waiter = None
            if not self._replies:
                raise self._lost()
        return self._replies.popleft()

    def abort(self) -> None:
        """Close at once: no wait for the server's TLS close_notify."""
        if self._transport is not None:
            self._transport.abort()
        self._fail(Disconnected("the connection is closed"))

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            line = bytes(buffer[start : end + 1])
            start = end + 1
            if not self._take(line):
                return
        del buffer[:start]
        if len(buffer) > _MAX_LINE_BYTES:
            self._malformed("a reply line is too long")
        elif self._replies:
            self._wake(self._waiter)

    def eof_received(self) -> bool:
        self._fail(Disconnected("the server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self._cause is None:
            self._cause = exc
        self._fail(Disconnected("the connection was lost"))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake(self._drained)

    # the rest

    def _take(self, line: bytes) -> bool:
        """Add one line to the reply being read; False when it is no SMTP reply line."""
        code = line[:3]
        separator = line[3:4]
        if len(line) > _MAX_LINE_BYTES or not code.isdigit() or separator not in b" -\r\n":
            self._malformed(f"not an SMTP reply: {line[:80]!r}")
            return False
        text = line[4:].strip(b" \t\r\n")
        if separator == b"-":
            if len(self._lines) >= _MAX_REPLY_LINES:
                self._malformed("a reply has too many lines")
                return False
            self._lines.append(text)
            return True
        if self._lines:
            self._lines.append(text)
            text = b"\n".join(self._lines)
            self._lines = []
        self._replies.append(Reply(int(code), text.decode("utf-8", "surrogateescape")))
        return True

    def _malformed(self, why: str) -> None:
        self._buffer.clear()
        self._lines = []
        if self._transport is not None:
            self._transport.abort()
        self._fail(ProtocolError(why))

    def _fail(self, failure: SmtpError) -> None:
        if self._failure is None:
            self._failure = failure
        self._wake(self._waiter)
        self._wake(self._drained)

    def _lost(self) -> SmtpError:
        """A fresh exception saying why the connection gives nothing more."""
        failure = self._failure or Disconnected("the connection is closed")
        err = type(failure)(failure.message)
        err.__cause__ = self._cause
        return err

    def _writable(self) -> asyncio.Transport:
        transport = self._transport
        if self._failure is not None or transport is None or transport.is_closing():
            raise self._lost()
        return transport

    async def _wait(self, waiter: asyncio.Future[None], within: float | None) -> None:
        timer = None
        if within is not None:
            timer = self._loop.call_later(within, _time_out, waiter)
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
        if self._failure is not None and waiter is self._drained:
            raise self._lost()

    @staticmethod
    def _wake(waiter: asyncio.Future[None] | None) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("no reply in time"))
