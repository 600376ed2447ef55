"""Starts the bounce loops a process is configured for (the listener, the IMAP poller, the
Microsoft Graph poller), each supervised, and stops them with the process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx

from app.config import Settings
from app.crypto import SecretBox
from app.delivery.liveness import HEARTBEAT_EVERY
from app.delivery.supervised import Supervised
from app.events.bounces.graph import GraphPoller
from app.events.bounces.imap import ImapPoller, ImapSettings
from app.events.bounces.listener import BounceListener
from app.events.bounces.service import Bounces


@asynccontextmanager
async def running_bounce_loops(
    settings: Settings, bounces: Bounces, box: SecretBox, http: httpx.AsyncClient
) -> AsyncIterator[list[Supervised]]:
    """Yields the loops started (none when nothing is configured)."""
    loops: list[Supervised] = []
    async with AsyncExitStack() as stack:
        if settings.bounce_port:
            listener = BounceListener(
                bounces, settings.bounce_host, settings.bounce_port, settings.hostname
            )
            stack.push_async_callback(listener.aclose)
            loops.append(
                Supervised(
                    bounces.sessions,
                    bounces.metrics,
                    "bounce-listener",
                    listener.ensure,
                    HEARTBEAT_EVERY,
                    what="bounce listener",
                )
            )
        imap = ImapSettings.of(settings)
        if imap is not None:
            poller = ImapPoller(bounces, imap)
            loops.append(
                Supervised(
                    bounces.sessions,
                    bounces.metrics,
                    "bounce-imap",
                    poller.poll,
                    settings.bounce_poll_interval,
                    what="bounce mailbox poller",
                )
            )
        if settings.bounce_graph_poll:
            graph = GraphPoller(bounces.sessions, box, http, bounces)
            loops.append(
                Supervised(
                    bounces.sessions,
                    bounces.metrics,
                    "bounce-graph",
                    graph.poll,
                    settings.bounce_poll_interval,
                    what="Microsoft Graph bounce poller",
                )
            )
        stopping = asyncio.Event()
        tasks = [loop.start(stopping) for loop in loops]
        try:
            yield loops
        finally:
            stopping.set()
            await asyncio.gather(*tasks, return_exceptions=True)
