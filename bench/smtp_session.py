"""The SMTP send path alone, in-process: a pooled SmtpTransport sending N prebuilt messages over K
connections to a sink in its own process; messages per second and this process's CPU per message.

No database, no composing, no dispatcher: `transport.send` on messages built before the clock
starts, K at a time (one per pooled connection), on uvloop as `postroom worker` runs. It uses only
what every tree has (smtp.create, send, aclose), so copy it and bench/checkout.py into an older
checkout for an A/B.

    .venv/bin/python bench/smtp_session.py [--n 5000] [-k 4] [--reps 3] [--sink smtp-sink]

`--sink smtp-sink` is postfix's (PIPELINING, no CHUNKING; bench/run.sh installs it);
`aiosmtpd` is bench/sink.py (no PIPELINING). Prints one JSON line per round and the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import time

import httpx
import uvloop
from checkout import require_own_app
from harness import AiosmtpdSink, PostfixSink, Sink

from app.egress import EgressPolicy
from app.transports import smtp
from app.transports.base import Address, Content, OutgoingMessage, TransportContext
from app.transports.smtp import SmtpConfig

require_own_app()

SENDER = "bench@example.com"
TEXT = "Hello,\r\n\r\nthis is benchmark message {i}.\r\nNothing to see here.\r\n"


def message(i: int) -> OutgoingMessage:
    to = f"rcpt{i}@example.com"
    mime = (
        f"From: Bench <{SENDER}>\r\nTo: {to}\r\nSubject: Bench message {i}\r\n"
        f"Message-ID: <{i}.bench@example.com>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: 7bit\r\n\r\n'
        + TEXT.format(i=i)
    ).encode()
    return OutgoingMessage(
        envelope_from=SENDER,
        recipients=(to,),
        mime=mime,
        message_id=f"<{i}.bench@example.com>",
        content=Content(sender=Address(SENDER), to=(Address(to),), subject=f"Bench message {i}"),
    )


async def one_round(port: int, n: int, k: int) -> dict[str, float]:
    messages = [message(i) for i in range(n)]
    config = SmtpConfig(
        host="127.0.0.1",
        port=port,
        ignore_tls=True,
        name="bench-client.example",
        pool=True,
        max_connections=k,
        max_messages=100_000,
    )
    async with httpx.AsyncClient() as http:
        context = TransportContext(
            http=http, egress=EgressPolicy(deny=()), logger=logging.getLogger("bench")
        )
        transport = smtp.create("bench", config, context)
        todo = list(reversed(messages))

        async def worker() -> int:
            sent = 0
            while todo:
                result = await transport.send(todo.pop())
                sent += all(r.status == "sent" for r in result.recipients.values())
            return sent

        cpu = time.process_time()
        started = time.perf_counter()
        sent = sum(await asyncio.gather(*(worker() for _ in range(k))))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
        await transport.aclose()
    return {
        "sent": sent,
        "msgs_per_s": round(n / elapsed, 1),
        "cpu_ms_per_msg": round(cpu * 1000 / n, 4),
    }


async def run(n: int, k: int, reps: int, sink_name: str) -> None:
    sink: Sink = await (PostfixSink.start() if sink_name == "smtp-sink" else AiosmtpdSink.start())
    rounds = []
    try:
        await one_round(sink.port, min(n, 500), k)  # warm-up: imports, TLS-free pool start
        for _ in range(reps):
            rounds.append(await one_round(sink.port, n, k))
            print(json.dumps(rounds[-1]), flush=True)  # noqa: T201
    finally:
        await sink.stop()
    summary = {
        "sink": sink_name,
        "n": n,
        "k": k,
        "msgs_per_s": statistics.median(r["msgs_per_s"] for r in rounds),
        "cpu_ms_per_msg": statistics.median(r["cpu_ms_per_msg"] for r in rounds),
    }
    print(json.dumps({"median": summary}))  # noqa: T201


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("-k", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sink", choices=("smtp-sink", "aiosmtpd"), default="smtp-sink")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    uvloop.run(run(args.n, args.k, args.reps, args.sink))


if __name__ == "__main__":
    main()
