"""A small SMTP server on asyncio streams for what aiosmtpd does not do: CHUNKING (BDAT), every
segment it reads recorded (to see what the client put in one write), replies split across TCP
segments, and a server that closes or stalls wherever a test wants.

    async with ScriptedServer(extensions=("PIPELINING", "CHUNKING")) as server:
        config = server.config()          # an SmtpConfig pointing at it
        ...
        server.segments                   # each read, as it came
        server.messages                   # (mail_from, rcpt_tos, content), content as received

`replies` overrides the answer at a stage ("greeting", a verb: "MAIL", "RCPT", "DATA" for the
354, "DATA_END" for the final reply, "BDAT" for every chunk, "BDAT_LAST" for the last one): a
reply (lines joined by CRLF for a multi-line one; a 421 closes after it), DROP (close without
answering) or STALL (never answer).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from app.transports.smtp import SmtpConfig
from tests.transports._loopback import LoopbackServer

DROP = "<drop>"
STALL = "<stall>"


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    """What the server took: DATA's dot-stuffing undone and without the final ".", or the BDAT
    chunks joined."""


@dataclass
class _Envelope:
    mail_from: str | None = None
    rcpt_tos: list[str] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)


class _Closed(Exception):
    pass


class ScriptedServer(LoopbackServer):
    def __init__(
        self,
        *,
        extensions: tuple[str, ...] = ("PIPELINING", "CHUNKING", "8BITMIME", "SIZE 10000000"),
        replies: dict[str, str] | None = None,
        greeting: str = "220 scripted.test ESMTP",
        split_replies: bool = False,
        after_message: str | None = None,
    ) -> None:
        super().__init__()
        self.extensions = extensions
        self.replies = replies if replies is not None else {}
        self.greeting = greeting
        self.split_replies = split_replies
        """Send every reply in two segments, cut in the middle of a line."""
        self.after_message = after_message
        """Said unasked right after a message's final reply, a second before closing (as a server
        ending an idle connection does)."""
        self.segments: list[bytes] = []
        self.commands: list[str] = []
        self.messages: list[Received] = []
        self.sessions = 0

    def config(self, **overrides: Any) -> SmtpConfig:
        return SmtpConfig.model_validate({"host": "127.0.0.1", "port": self.port, **overrides})

    def segments_with(self, marker: bytes) -> list[bytes]:
        return [segment for segment in self.segments if marker in segment]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sessions += 1
        session = _Session(self, reader, writer)
        try:
            await session.run()
        except (_Closed, ConnectionError):
            return


class _Session:
    def __init__(
        self, server: ScriptedServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.buffer = bytearray()
        self.envelope = _Envelope()

    async def run(self) -> None:
        if not await self.override("greeting"):
            await self.say(self.server.greeting)
        while True:
            line = (await self.line()).decode("utf-8", "replace").rstrip("\r\n")
            self.server.commands.append(line)
            verb, _, argument = line.partition(" ")
            verb = verb.upper()
            if verb == "BDAT":
                await self.bdat(argument)
                continue
            if not await self.override(verb):
                await getattr(self, f"on_{verb.lower()}", self.on_unknown)(argument)

    async def override(self, stage: str) -> bool:
        reply = self.server.replies.get(stage)
        if reply is None:
            return False
        if reply == DROP:
            self.writer.transport.abort()
            raise _Closed
        if reply == STALL:
            await asyncio.sleep(3600)
        await self.say(reply)
        if reply.startswith("421"):  # the server closes, as RFC 5321 3.8 has it
            self.writer.close()
            raise _Closed
        return True

    async def on_ehlo(self, argument: str) -> None:
        lines = ["scripted.test", *self.server.extensions]
        await self.say("\r\n".join([*(f"250-{x}" for x in lines[:-1]), f"250 {lines[-1]}"]))

    async def on_helo(self, argument: str) -> None:
        await self.say("250 scripted.test")

    async def on_mail(self, argument: str) -> None:
        self.envelope = _Envelope(mail_from=argument.partition(":")[2].split(" ")[0].strip("<>"))
        await self.say("250 2.1.0 Ok")

    async def on_rcpt(self, argument: str) -> None:
        if self.envelope.mail_from is None:
            await self.say("503 5.5.1 Error: need MAIL command")
            return
        self.envelope.rcpt_tos.append(argument.partition(":")[2].strip("<>"))
        await self.say("250 2.1.5 Ok")

    async def on_data(self, argument: str) -> None:
        if not self.envelope.rcpt_tos:
            await self.say("554 5.5.1 Error: no valid recipients")
            return
        await self.say("354 End data with <CR><LF>.<CR><LF>")
        lines = []
        while (line := await self.line()) != b".\r\n":
            lines.append(line[1:] if line.startswith(b".") else line)
        await self.received(b"".join(lines), "DATA_END")

    async def bdat(self, argument: str) -> None:
        size, _, last = argument.partition(" ")
        chunk = await self.exactly(int(size))
        stage = "BDAT_LAST" if last.upper() == "LAST" else "BDAT"
        if await self.override("BDAT") or await self.override(stage):
            self.envelope = _Envelope()
            return
        if not self.envelope.rcpt_tos:
            await self.say("503 5.5.1 Error: send RCPT first")
            return
        self.envelope.chunks.append(chunk)
        if stage == "BDAT":
            await self.say(f"250 2.0.0 {len(chunk)} octets received")
            return
        await self.received(b"".join(self.envelope.chunks), None)

    async def received(self, content: bytes, stage: str | None) -> None:
        envelope = self.envelope
        self.envelope = _Envelope()
        if stage is not None and await self.override(stage):
            return
        self.server.messages.append(Received(envelope.mail_from or "", envelope.rcpt_tos, content))
        await self.say(f"250 2.0.0 Ok: queued as Q{len(self.server.messages)}")
        if self.server.after_message is not None:
            await self.say(self.server.after_message)
            await asyncio.sleep(1.0)  # closing later: the client sees the reply first
            self.writer.close()
            raise _Closed

    async def on_rset(self, argument: str) -> None:
        self.envelope = _Envelope()
        await self.say("250 2.0.0 Ok")

    async def on_noop(self, argument: str) -> None:
        await self.say("250 2.0.0 Ok")

    async def on_quit(self, argument: str) -> None:
        await self.say("221 2.0.0 Bye")
        self.writer.close()
        raise _Closed

    async def on_unknown(self, argument: str) -> None:
        await self.say("500 5.5.2 Error: command not recognized")

    async def say(self, reply: str) -> None:
        data = reply.encode() + b"\r\n"
        if self.server.split_replies and len(data) > 2:
            middle = len(data) // 2
            self.writer.write(data[:middle])
            await self.writer.drain()
            await asyncio.sleep(0.02)
            data = data[middle:]
        self.writer.write(data)
        await self.writer.drain()

    async def line(self) -> bytes:
        while (end := self.buffer.find(b"\n")) < 0:
            await self.more()
        line = bytes(self.buffer[: end + 1])
        del self.buffer[: end + 1]
        return line

    async def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            await self.more()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def more(self) -> None:
        data = await self.reader.read(1 << 20)
        if not data:
            raise _Closed
        self.server.segments.append(data)
        self.buffer += data
