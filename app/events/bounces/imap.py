"""The IMAP poller of a bounce mailbox, for relays that deliver bounces to a mailbox rather than
to an address Postroom's MTA receives (Microsoft 365, a hosted relay).

Each poll reads the unseen messages of POSTROOM_BOUNCE_IMAP_FOLDER (at most BATCH), records each
report in its own transaction, and only then marks it \\Seen (or moves it to
POSTROOM_BOUNCE_IMAP_DONE_FOLDER): a poll cut short leaves the rest unseen for the next one, and
a report recorded twice is stored once (its event ids). Mail that is not a report (or is over
1 MiB) is marked too, with a warning, so it is not read again on every poll. imaplib is blocking:
every IMAP command runs in a thread, and no database session is open meanwhile."""

from __future__ import annotations

import asyncio
import imaplib
import logging
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from app.config import Settings
from app.events.bounces.dsn import MAX_REPORT_BYTES, NotAReport
from app.events.bounces.service import Bounces

log = logging.getLogger("postroom.bounces")

BATCH = 100
"""Messages read per poll, at most."""
TIMEOUT = 60.0
_SIZE = re.compile(rb"UID (\d+) RFC822\.SIZE (\d+)|RFC822\.SIZE (\d+) UID (\d+)")


class ImapError(RuntimeError):
    """The server refused a command: said with its answer."""


@dataclass(frozen=True, slots=True)
class ImapSettings:
    host: str
    port: int
    security: str
    user: str
    password: str
    folder: str
    done_folder: str

    @classmethod
    def of(cls, settings: Settings) -> ImapSettings | None:
        if not settings.bounce_imap_host:
            return None
        return cls(
            host=settings.bounce_imap_host,
            port=settings.bounce_imap_port,
            security=settings.bounce_imap_security,
            user=settings.bounce_imap_user,
            password=settings.bounce_imap_password,
            folder=settings.bounce_imap_folder,
            done_folder=settings.bounce_imap_done_folder,
        )


def _ok(answer: tuple[str, Sequence[object]], what: str) -> Sequence[object]:
    status, data = answer
    if status != "OK":
        raise ImapError(f"IMAP {what} refused: {data!r}")
    return data


class ImapPoller:
    def __init__(self, bounces: Bounces, config: ImapSettings) -> None:
        self.bounces = bounces
        self.config = config

    async def poll(self) -> int:
        """One pass over the unseen mail; returns how many messages were handled."""
        imap = await asyncio.to_thread(self._open)
        try:
            sizes = await asyncio.to_thread(self._unseen, imap)
            for uid, size in sizes:
                await self._one(imap, uid, size)
            return len(sizes)
        finally:
            await asyncio.to_thread(self._close, imap)

    async def _one(self, imap: imaplib.IMAP4, uid: str, size: int) -> None:
        if size > MAX_REPORT_BYTES:
            log.warning("IMAP message %s is %d bytes, over the 1 MiB a report may be", uid, size)
        else:
            raw = await asyncio.to_thread(self._fetch, imap, uid)
            try:
                done = await self.bounces.ingest(raw)
            except NotAReport as err:
                log.warning("IMAP message %s is not a report: %s", uid, err)
            else:
                log.info("%s", done.summary())
        await asyncio.to_thread(self._done, imap, uid)

    def _open(self) -> imaplib.IMAP4:
        c = self.config
        imap: imaplib.IMAP4
        if c.security == "tls":
            imap = imaplib.IMAP4_SSL(
                c.host, c.port, ssl_context=ssl.create_default_context(), timeout=TIMEOUT
            )
        else:
            imap = imaplib.IMAP4(c.host, c.port, timeout=TIMEOUT)
            if c.security == "starttls":
                imap.starttls(ssl.create_default_context())
        try:
            _ok(imap.login(c.user, c.password), "LOGIN")
            # The capabilities after login (MOVE, for one) are not those imaplib read at connect.
            listed = _ok(imap.capability(), "CAPABILITY")[-1]
            if isinstance(listed, bytes):
                imap.capabilities = tuple(listed.decode().upper().split())
            _ok(imap.select(_quoted(c.folder)), f"SELECT {c.folder}")
        except BaseException:
            imap.shutdown()
            raise
        return imap

    def _unseen(self, imap: imaplib.IMAP4) -> list[tuple[str, int]]:
        [found] = _ok(imap.uid("SEARCH", "UNSEEN"), "SEARCH")
        uids = found.split()[:BATCH] if isinstance(found, bytes) else []
        if not uids:
            return []
        data = _ok(imap.uid("FETCH", b",".join(uids).decode(), "(RFC822.SIZE)"), "FETCH")
        sizes = []
        for line in data:
            match = _SIZE.search(line if isinstance(line, bytes) else b"")
            if match is not None:
                uid, size = (
                    (match.group(1), match.group(2))
                    if match.group(1)
                    else (
                        match.group(4),
                        match.group(3),
                    )
                )
                sizes.append((uid.decode(), int(size)))
        return sizes

    def _fetch(self, imap: imaplib.IMAP4, uid: str) -> bytes:
        for item in _ok(imap.uid("FETCH", uid, "(BODY.PEEK[])"), "FETCH"):
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], bytes):
                return item[1]
        raise ImapError(f"IMAP FETCH of message {uid} returned no content")

    def _done(self, imap: imaplib.IMAP4, uid: str) -> None:
        folder = self.config.done_folder
        if not folder:
            _ok(imap.uid("STORE", uid, "+FLAGS", "(\\Seen)"), "STORE")
            return
        _ok(imap.uid("STORE", uid, "+FLAGS", "(\\Seen)"), "STORE")
        if "MOVE" in imap.capabilities:
            _ok(imap.uid("MOVE", uid, _quoted(folder)), "MOVE")
            return
        _ok(imap.uid("COPY", uid, _quoted(folder)), "COPY")
        _ok(imap.uid("STORE", uid, "+FLAGS", "(\\Deleted)"), "STORE")
        _ok(imap.expunge(), "EXPUNGE")

    @staticmethod
    def _close(imap: imaplib.IMAP4) -> None:
        try:
            imap.logout()
        except (OSError, imaplib.IMAP4.error):
            imap.shutdown()


def _quoted(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'
