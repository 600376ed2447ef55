"""The built-in default server: each message becomes an .eml file in a directory."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
from pathlib import Path

from app.schemas import CamelModel
from app.transports.base import (
    OutgoingMessage,
    TransportContext,
    VerifyReport,
    VerifyStep,
    refuse_options,
)
from app.transports.errors import TemporaryError
from app.transports.result import SendResult


class FileConfig(CamelModel):
    directory: Path


class FileTransport:
    """Writes each message atomically (temp file, fsync, rename) as `<message-id>-<hash>.eml`.

    The envelope goes in X-Postroom-Envelope-* headers on top, as a mail queue would keep it.
    """

    def __init__(self, name: str, config: FileConfig) -> None:
        self.name = name
        self.directory = config.directory

    async def send(self, message: OutgoingMessage) -> SendResult:
        refuse_options(message, "the built-in server")
        try:
            path = await asyncio.to_thread(self._write, message)
        except OSError as err:
            raise TemporaryError(f"cannot write to {self.directory}: {err}", code="EFILE") from err
        return SendResult.all(list(message.recipients), "sent", provider_id=path.name)

    def _write(self, message: OutgoingMessage) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        key = hashlib.sha256("\n".join(message.recipients).encode()).hexdigest()[:12]
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", message.message_id.strip("<>"))
        path = self.directory / f"{stem}-{key}.eml"
        envelope = (
            f"X-Postroom-Envelope-From: <{message.envelope_from}>\r\n"
            + "".join(f"X-Postroom-Envelope-To: <{rcpt}>\r\n" for rcpt in message.recipients)
        ).encode()
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".eml")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(envelope + message.mime)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    async def verify(self) -> VerifyReport:
        writable = os.access(self.directory, os.W_OK) or not self.directory.exists()
        step = VerifyStep("directory", writable, 0.0, str(self.directory))
        return VerifyReport(steps=[step])

    async def aclose(self) -> None:
        return None


def create(name: str, config: FileConfig, context: TransportContext) -> FileTransport:
    return FileTransport(name, config)
