"""Bounces of Microsoft Graph profiles: Graph has no delivery event feed, its non-delivery reports
come back to the sending mailbox. A profile with `pollBounces` has its Inbox read through Graph
(the Mail.Read application permission) and each message's MIME fed to the DSN parser.

Mail.Read cannot mark what it read, so the poll keeps a cursor per profile in the database
(`bounce_cursors`): the receivedDateTime it got to, read again from there next time (a report
recorded twice is stored once). A profile polled for the first time starts FIRST_LOOK back.
Mail that is not a report (replies to the sender) is skipped. The token, the list and each
message are network I/O with no database session open; each report is its own transaction."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.crypto import SecretBox
from app.db import table_of, transaction, utcnow
from app.events.bounces.dsn import MAX_REPORT_BYTES, NotAReport
from app.events.bounces.models import BounceCursor
from app.events.bounces.service import Bounces
from app.servers.models import ServerProfile
from app.servers.service import config_of
from app.throttle import upsert
from app.transports.http import request, unexpected_answer
from app.transports.msgraph import API, MsgraphConfig, token_request
from app.transports.oauth import TokenCache

log = logging.getLogger("postroom.bounces")

FIRST_LOOK = timedelta(days=1)
PAGE = 50
CURSORS = table_of(BounceCursor)


@dataclass(frozen=True, slots=True)
class Mailbox:
    """One profile's mailbox to poll, read in a short transaction before any I/O."""

    profile: str
    version: datetime
    """The profile's updated_at: its token cache is rebuilt when an admin changes it."""
    config: MsgraphConfig
    since: datetime


@dataclass(frozen=True, slots=True)
class Listed:
    """A message of the Inbox listing."""

    id: str
    received: datetime


class GraphPoller:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        box: SecretBox,
        http: httpx.AsyncClient,
        bounces: Bounces,
    ) -> None:
        self.sessions = sessions
        self.box = box
        self.http = http
        self.bounces = bounces
        self._tokens: dict[str, tuple[datetime, TokenCache]] = {}

    async def poll(self) -> int:
        """One pass over every polled profile; returns how many reports were new. A profile
        that fails does not stop the others; the first failure is raised at the end."""
        failed: Exception | None = None
        recorded = 0
        for mailbox in await self._mailboxes():
            try:
                recorded += await self._poll(mailbox)
            except Exception as err:
                log.warning("polling the mailbox of profile %s failed: %s", mailbox.profile, err)
                failed = failed or err
        if failed is not None:
            raise failed
        return recorded

    async def _mailboxes(self) -> list[Mailbox]:
        async with transaction(self.sessions) as session:
            profiles = list(
                await session.scalars(select(ServerProfile).where(ServerProfile.type == "msgraph"))
            )
            polled = [p for p in profiles if p.settings.get("pollBounces") is True]
            cursors = {
                name: position
                for name, position in await session.execute(
                    select(BounceCursor.name, BounceCursor.position)
                )
            }
        start = utcnow() - FIRST_LOOK
        mailboxes = []
        for profile in polled:
            config = config_of(profile, self.box)
            assert isinstance(config, MsgraphConfig)
            since = cursors.get(_cursor(profile.name), start)
            mailboxes.append(Mailbox(profile.name, profile.updated_at, config, since))
        return mailboxes

    def _token(self, mailbox: Mailbox) -> TokenCache:
        cached = self._tokens.get(mailbox.profile)
        if cached is None or cached[0] != mailbox.version:
            cached = (mailbox.version, TokenCache(self.http, token_request(mailbox.config)))
            self._tokens[mailbox.profile] = cached
        return cached[1]

    async def _poll(self, mailbox: Mailbox) -> int:
        config = mailbox.config
        user = f"{config.graph_url.rstrip('/')}/v1.0/users/{quote(config.user_id, safe='@')}"
        since = mailbox.since.strftime("%Y-%m-%dT%H:%M:%SZ")
        url: str | None = f"{user}/mailFolders/inbox/messages"
        params: dict[str, Any] | None = {
            "$filter": f"receivedDateTime ge {since}",
            "$orderby": "receivedDateTime asc",
            "$select": "id,receivedDateTime,subject",
            "$top": PAGE,
        }
        recorded = 0
        while url is not None:
            page = await self._get(mailbox, url, params)
            params = None  # the next link carries them
            for item in _items(page):
                recorded += await self._report(mailbox, user, item)
                await self._advance(mailbox.profile, item.received)
            link = page.get("@odata.nextLink")
            url = link if isinstance(link, str) else None
        return recorded

    async def _report(self, mailbox: Mailbox, user: str, item: Listed) -> int:
        response = await self._request(
            mailbox, f"{user}/messages/{quote(item.id, safe='=')}/$value"
        )
        if len(response.content) > MAX_REPORT_BYTES:
            log.info("%s: message %s is over 1 MiB: no report", mailbox.profile, item.id)
            return 0
        try:
            done = await self.bounces.ingest(response.content)
        except NotAReport:
            log.debug("%s: message %s is not a report", mailbox.profile, item.id)
            return 0
        log.info("%s: %s", mailbox.profile, done.summary())
        return 1 if done.events else 0

    async def _advance(self, profile: str, received: datetime) -> None:
        async with transaction(self.sessions) as session:
            conn = await session.connection()
            statement = upsert(conn, CURSORS).values(
                name=_cursor(profile), position=received, updated_at=utcnow()
            )
            await session.execute(
                statement.on_conflict_do_update(
                    index_elements=[CURSORS.c.name],
                    set_={"position": received, "updated_at": utcnow()},
                    where=CURSORS.c.position < received,
                )
            )

    async def _get(
        self, mailbox: Mailbox, url: str, params: dict[str, Any] | None
    ) -> dict[str, Any]:
        response = await self._request(mailbox, url, params=params)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("value"), list):
            raise unexpected_answer(API, response, "a JSON object with a value list")
        return body

    async def _request(self, mailbox: Mailbox, url: str, **kwargs: Any) -> httpx.Response:
        tokens = self._token(mailbox)
        headers = {"Authorization": f"Bearer {await tokens.get()}"}
        return await request(self.http, API, "GET", url, headers=headers, **kwargs)


def _cursor(profile: str) -> str:
    return f"graph:{profile}"


def _items(page: dict[str, Any]) -> list[Listed]:
    """The page's messages with an id and a parsed receivedDateTime; others are skipped."""
    items = []
    for entry in page["value"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            continue
        try:
            received = datetime.fromisoformat(str(entry.get("receivedDateTime")))
        except ValueError:
            continue
        if received.tzinfo is None:
            continue
        items.append(Listed(entry["id"], received))
    return items
