"""The Python reference: raw aiosmtplib sending N small messages over K reused connections.

Two variants:
  naive     compose an email.message.EmailMessage per message and `send_message` it (what a
            careful but plain Python client does);
  prebuilt  the bytes of every message are built before the clock starts, `sendmail` sends them.

Prints one JSON line: {"elapsed": seconds from the first connect to the last reply, "sent": n,
"cpu": process CPU seconds in that window}.

    python bench/smtp_ref.py --port 2525 --n 5000 -k 4 --mode naive
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import aiosmtplib

SENDER = "bench@example.com"
TEXT = "Hello,\n\nthis is benchmark message {i}.\nNothing to see here.\n\n-- \nThe bench\n"


def recipient(i: int) -> str:
    return f"rcpt{i}@example.com"


def compose(i: int) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"Bench <{SENDER}>"
    msg["To"] = recipient(i)
    msg["Subject"] = f"Bench message {i}"
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain="example.com")
    msg.set_content(TEXT.format(i=i))
    return msg


def prebuilt(i: int) -> bytes:
    return (
        f"From: Bench <{SENDER}>\r\nTo: {recipient(i)}\r\nSubject: Bench message {i}\r\n"
        f"Date: {formatdate(localtime=False)}\r\nMessage-ID: <{i}.bench@example.com>\r\n"
        'MIME-Version: 1.0\r\nContent-Type: text/plain; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: 7bit\r\n\r\n" + TEXT.format(i=i).replace("\n", "\r\n")
    ).encode()


async def worker(host: str, port: int, mode: str, todo: list[int], bodies: list[bytes]) -> int:
    sent = 0
    async with aiosmtplib.SMTP(
        hostname=host, port=port, start_tls=False, use_tls=False, local_hostname="bench-client"
    ) as smtp:
        while todo:
            i = todo.pop()
            if mode == "naive":
                await smtp.send_message(compose(i))
            else:
                await smtp.sendmail(SENDER, [recipient(i)], bodies[i])
            sent += 1
    return sent


async def run(host: str, port: int, n: int, k: int, mode: str) -> dict[str, float | int]:
    bodies = [prebuilt(i) for i in range(n)] if mode == "prebuilt" else []
    todo = list(range(n - 1, -1, -1))
    cpu = time.process_time()
    started = time.perf_counter()
    counts = await asyncio.gather(*(worker(host, port, mode, todo, bodies) for _ in range(k)))
    elapsed = time.perf_counter() - started
    return {"elapsed": elapsed, "sent": sum(counts), "cpu": time.process_time() - cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("-k", type=int, required=True)
    parser.add_argument("--mode", choices=("naive", "prebuilt"), required=True)
    args = parser.parse_args()
    result = asyncio.run(run(args.host, args.port, args.n, args.k, args.mode))
    print(json.dumps(result))  # noqa: T201


if __name__ == "__main__":
    main()
