"""aiosmtplib's client and protocol, adapted: the debug transcript of the conversation, and replies
kept when several arrive at once (PIPELINING)."""

from __future__ import annotations

import logging
from typing import Literal

import aiosmtplib
from aiosmtplib import SMTPResponse
from aiosmtplib.protocol import SMTPProtocol
from aiosmtplib.typing import Default

REDACTED = "[REDACTED]"
"""What the debug transcript shows instead of a credential."""


class PipeliningProtocol(SMTPProtocol):
    """aiosmtplib's protocol, keeping the replies that arrive before they are read.

    aiosmtplib expects one reply per command awaited and drops bytes that arrive while a parsed
    reply waits to be picked up; with PIPELINING several replies come at once, so they are kept in
    the buffer and `read_response` takes the next one from there before waiting for more.

    aiosmtplib builds its own protocol when it connects; `Connection.handshake` (session.py) turns
    it into this class right after the greeting and hands it to the transport again, since
    uvloop's transports keep the protocol's bound methods from when they were given it.
    """

    def data_received(self, data: bytes) -> None:
        waiter = self._response_waiter
        if self._response_pending and waiter is not None and waiter.done():
            self._buffer.extend(data)
            return
        super().data_received(data)

    async def read_response(self, timeout: float | None = None) -> SMTPResponse:  # noqa: ASYNC109
        waiter = self._response_waiter
        if waiter is not None and not waiter.done() and self._buffer:
            buffered = self._read_response_from_buffer()
            if buffered is not None:
                return buffered
        return await super().read_response(timeout)


class Client(aiosmtplib.SMTP):
    """aiosmtplib's client, telling the transcript (when debugging) each command and reply."""

    transcript: Transcript | None = None

    async def execute_command(
        self,
        *args: bytes,
        timeout: float | Literal[Default.token] | None = Default.token,  # noqa: ASYNC109 (aiosmtplib's signature)
    ) -> SMTPResponse:
        if self.transcript is not None:
            self.transcript.client(*args)
        response = await super().execute_command(*args, timeout=timeout)
        if self.transcript is not None:
            self.transcript.server(response)
        return response


class Transcript:
    """The SMTP conversation at DEBUG, every credential replaced by REDACTED.

    An AUTH command keeps its mechanism and loses its initial response; a line sent in answer to a
    334 challenge (LOGIN's user and password, CRAM-MD5's digest, XOAUTH2's error reply) is hidden.
    """

    def __init__(self, logger: logging.Logger, label: str) -> None:
        self._logger = logger
        self._label = label
        self._challenged = False

    def client(self, *args: bytes) -> None:
        if self._challenged:
            line = REDACTED
        elif args and args[0].upper() == b"AUTH":
            line = " ".join(arg.decode("ascii", "replace") for arg in args[:2])
            if len(args) > 2:
                line += " " + REDACTED
        else:
            line = b" ".join(args).decode("utf-8", "replace")
        self._logger.debug("%s C: %s", self._label, line)

    def server(self, response: SMTPResponse) -> None:
        self._challenged = response.code == 334
        *first, last = response.message.split("\n")
        lines = [f"{response.code}-{line}" for line in first] + [f"{response.code} {last}"]
        self._logger.debug("%s S: %s", self._label, "\n".join(lines))

    def note(self, text: str) -> None:
        self._logger.debug("%s C: %s", self._label, text)
