"""A counting SMTP sink: aiosmtpd that accepts every message and counts messages and recipients.

Runs as its own process so that its CPU is not the sender's. The counters are read over a tiny
line protocol on a second loopback port: send `STATS\\n`, get one JSON line back
(`{"messages": M, "recipients": R, "sessions": S}`). Counters only grow; the harness takes a
baseline before each run.

    python bench/sink.py --port 2525 --control-port 2526
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


class Counter:
    """The aiosmtpd handler: every DATA is accepted and counted, nothing is kept."""

    def __init__(self) -> None:
        self.messages = 0
        self.recipients = 0
        self.sessions = 0
        self.bytes = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages += 1
        self.recipients += len(envelope.rcpt_tos)
        content = envelope.original_content or b""
        self.bytes += len(content)
        return "250 2.0.0 Ok: queued"

    def stats(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "recipients": self.recipients,
            "sessions": self.sessions,
            "bytes": self.bytes,
        }


class CountingSMTP(SMTP):
    """Counts sessions too (one per connection)."""

    def __init__(self, handler: Counter) -> None:
        super().__init__(
            handler,
            hostname="bench-sink",
            data_size_limit=64 * 1024 * 1024,
            enable_SMTPUTF8=True,
            decode_data=False,
            ident="bench-sink",
        )
        handler.sessions += 1


async def control(
    counter: Counter, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """One control client: a JSON line of counters for each `STATS` line."""
    try:
        while line := await reader.readline():
            if line.strip().upper() == b"STATS":
                writer.write(json.dumps(counter.stats()).encode() + b"\n")
                await writer.drain()
            else:
                writer.write(b'{"error": "unknown command"}\n')
                await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def serve(host: str, port: int, control_port: int) -> None:
    counter = Counter()
    loop = asyncio.get_running_loop()
    smtp = await loop.create_server(lambda: CountingSMTP(counter), host, port, backlog=1024)
    ctl = await asyncio.start_server(
        lambda r, w: control(counter, r, w), host, control_port, backlog=64
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"ready": True, "port": port, "control_port": control_port}), flush=True)  # noqa: T201
    async with smtp, ctl:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control-port", type=int, required=True)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (a faster sink)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    if args.uvloop:
        import uvloop

        uvloop.run(serve(args.host, args.port, args.control_port))
    else:
        asyncio.run(serve(args.host, args.port, args.control_port))


if __name__ == "__main__":
    main()
