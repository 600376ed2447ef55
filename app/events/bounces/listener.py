"""The bounce listener (`postroom serve --bounce-port`, off by default): an SMTP server, aiosmtpd,
for an MX or relay that forwards the bounce domain's mail to Postroom.

It answers 250 only once the report's events are committed; a report it could not record is a
451 (the MTA keeps it and tries again), what is not a report a 550 (it never will be one), and a
message over 1 MiB a 552. Anyone who can connect can hand in reports: bind it where only the MTA
reaches it (POSTROOM_BOUNCE_HOST, default 127.0.0.1). VERP tokens are signed, so a forged report
cannot name a message through one."""

from __future__ import annotations

import asyncio
import logging

from aiosmtpd.smtp import SMTP, Envelope, Session

from app.events.bounces.dsn import MAX_REPORT_BYTES, NotAReport
from app.events.bounces.service import Bounces

log = logging.getLogger("postroom.bounces")


class ReportHandler:
    """aiosmtpd's handler: each message is one report for `Bounces.ingest`."""

    def __init__(self, bounces: Bounces) -> None:
        self.bounces = bounces

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        try:
            done = await self.bounces.ingest(bytes(raw), [str(r) for r in envelope.rcpt_tos])
        except NotAReport as err:
            return f"550 5.6.0 {err}"
        except Exception:
            log.exception("a report from %s was not recorded; the MTA will retry", session.peer)
            return "451 4.3.0 the report was not recorded; try again later"
        log.info("%s", done.summary())
        return "250 2.0.0 recorded"


class BounceListener:
    """Owns the listening socket; `ensure` (the supervised loop's step) opens it when it is not
    serving, so a socket that failed to bind is tried again."""

    def __init__(self, bounces: Bounces, host: str, port: int, hostname: str | None) -> None:
        self.handler = ReportHandler(bounces)
        self.host = host
        self.port = port
        self.hostname = hostname
        self.server: asyncio.Server | None = None

    def _protocol(self) -> SMTP:
        return SMTP(
            self.handler,
            data_size_limit=MAX_REPORT_BYTES,
            enable_SMTPUTF8=True,
            hostname=self.hostname,
            ident="Postroom bounce listener",
        )

    async def ensure(self) -> None:
        if self.server is not None and self.server.is_serving():
            return
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._protocol, self.host, self.port)
        log.info("bounce listener on %s:%d", self.host, self.port)

    async def aclose(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
