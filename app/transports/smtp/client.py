"""The SMTP commands of a session over its Wire: each one told, with its reply, to the debug
transcript; EHLO's extensions; STARTTLS; AUTH with PLAIN, LOGIN, CRAM-MD5 and XOAUTH2."""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import ssl

from app.transports.smtp.wire import ProtocolError, Reply, ReplyError, Wire

REDACTED = "[REDACTED]"
"""What the debug transcript shows instead of a credential."""

_QUIT_TIMEOUT_SECONDS = 5.0


class Client:
    """One SMTP connection's commands: `command` sends one and reads its reply; `send` writes
    several at once (PIPELINING) and `reply` reads their replies in order."""

    def __init__(self, wire: Wire, *, timeout: float, transcript: Transcript | None) -> None:
        self.wire = wire
        self.timeout = timeout
        """socketTimeout in seconds: the longest wait for a reply."""
        self.transcript = transcript
        self.extensions: dict[str, str] = {}
        """EHLO's extensions, by lower-case keyword: their parameters ("" when none)."""
        self.auth_methods: list[str] = []
        """The AUTH mechanisms the server offers, in lower case."""

    def supports(self, extension: str) -> bool:
        return extension in self.extensions

    async def greeting(self) -> Reply:
        """The server's 220; no time limit of its own (the caller's greetingTimeout)."""
        reply = await self._read(None, None)
        if reply.code != 220:
            self.wire.abort()
            raise ReplyError(reply)
        return reply

    def send(self, *lines: bytes) -> None:
        """Write command lines in one go; their replies are read with `reply`."""
        for line in lines:
            if b"\r" in line or b"\n" in line:
                raise ValueError("an SMTP command holds CR or LF")
        self.wire.write(b"\r\n".join(lines) + b"\r\n")

    async def reply(self, command: bytes) -> Reply:
        """The next reply, to `command` (for the transcript), within socketTimeout."""
        return await self._read(command, self.timeout)

    async def command(self, line: bytes, *, expect: int | None = None) -> Reply:
        """Send one command and read its reply; a reply other than `expect` (when given) raises."""
        self.send(line)
        reply = await self._read(line, self.timeout)
        if expect is not None and reply.code != expect:
            raise ReplyError(reply)
        return reply

    async def _read(self, command: bytes | None, within: float | None) -> Reply:
        """The next reply, told to the transcript after `command`; a 421 closes the connection
        (the server is closing: nothing more will come)."""
        transcript = self.transcript
        if transcript is not None and command is not None:
            transcript.client(command)
        reply = await self.wire.reply(within)
        if transcript is not None:
            transcript.server(reply)
        if reply.code == 421:
            self.wire.abort()
        return reply

    async def ehlo(self, name: str) -> Reply:
        """EHLO, and the extensions it lists (RFC 5321 4.1.1.1: the first line is the server's
        name; the old `AUTH=` form of AUTH is understood too)."""
        reply = await self.command(b"EHLO " + name.encode("ascii"), expect=250)
        self.extensions, self.auth_methods = {}, []
        for line in reply.message.split("\n")[1:]:
            line = line.strip()
            if line[:5].lower() == "auth=":
                line = "AUTH " + line[5:]
            keyword, _, parameters = line.partition(" ")
            keyword = keyword.lower()
            if not keyword:
                continue
            if keyword == "auth":
                self.auth_methods.extend(method.lower() for method in parameters.split())
            self.extensions[keyword] = parameters
        return reply

    async def helo(self, name: str) -> Reply:
        reply = await self.command(b"HELO " + name.encode("ascii"), expect=250)
        self.extensions, self.auth_methods = {}, []
        return reply

    async def starttls(self, context: ssl.SSLContext, server_hostname: str) -> Reply:
        """STARTTLS and the TLS handshake; what EHLO said before is forgotten (RFC 3207 4.2)."""
        reply = await self.command(b"STARTTLS", expect=220)
        await self.wire.start_tls(context, server_hostname, self.timeout)
        self.extensions, self.auth_methods = {}, []
        return reply

    async def auth_plain(self, user: str, password: str) -> None:
        token = _b64(f"\0{user}\0{password}".encode())
        await self.command(b"AUTH PLAIN " + token, expect=235)

    async def auth_login(self, user: str, password: str) -> None:
        await self.command(b"AUTH LOGIN " + _b64(user.encode()), expect=334)
        await self.command(_b64(password.encode()), expect=235)

    async def auth_cram_md5(self, user: str, password: str) -> None:
        challenge = await self.command(b"AUTH CRAM-MD5", expect=334)
        try:
            decoded = base64.b64decode(challenge.message, validate=True)
        except (binascii.Error, ValueError) as err:
            raise ProtocolError("the CRAM-MD5 challenge is not base64") from err
        digest = hmac.new(password.encode(), decoded, "md5").hexdigest()
        await self.command(_b64(f"{user} {digest}".encode()), expect=235)

    async def auth_xoauth2(self, user: str, token: str) -> None:
        """XOAUTH2 (Google's and Microsoft's SASL for OAuth2): a refusal comes as a 334 with a
        JSON error, answered with an empty line to get the final reply."""
        sasl = _b64(f"user={user}\x01auth=Bearer {token}\x01\x01".encode())
        reply = await self.command(b"AUTH XOAUTH2 " + sasl)
        if reply.code == 334:
            reply = await self.command(b"")
        if reply.code != 235:
            raise ReplyError(reply)

    async def rset(self) -> None:
        await self.command(b"RSET", expect=250)

    async def quit(self) -> Reply:
        """QUIT and its 221, then close."""
        try:
            self.send(b"QUIT")
            reply = await self._read(b"QUIT", min(self.timeout, _QUIT_TIMEOUT_SECONDS))
            if reply.code != 221:
                raise ReplyError(reply)
            return reply
        finally:
            self.wire.abort()


def _b64(value: bytes) -> bytes:
    return base64.b64encode(value)


class Transcript:
    """The SMTP conversation at DEBUG, every credential replaced by REDACTED.

    An AUTH command keeps its mechanism and loses its initial response; a line sent in answer to a
    334 challenge (LOGIN's password, CRAM-MD5's digest, XOAUTH2's error reply) is hidden.
    """

    def __init__(self, logger: logging.Logger, label: str) -> None:
        self._logger = logger
        self._label = label
        self._challenged = False

    def client(self, line: bytes) -> None:
        if self._challenged:
            text = REDACTED
        elif line[:5].upper() == b"AUTH ":
            words = line.split(b" ", 2)
            text = b" ".join(words[:2]).decode("ascii", "replace")
            if len(words) > 2:
                text += " " + REDACTED
        else:
            text = line.decode("utf-8", "replace")
        self._logger.debug("%s C: %s", self._label, text)

    def server(self, reply: Reply) -> None:
        self._challenged = reply.code == 334
        *first, last = reply.message.split("\n")
        lines = [f"{reply.code}-{line}" for line in first] + [f"{reply.code} {last}"]
        self._logger.debug("%s S: %s", self._label, "\n".join(lines))

    def note(self, text: str) -> None:
        self._logger.debug("%s C: %s", self._label, text)
