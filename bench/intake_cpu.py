"""The intake alone, in process: CPU per accepted message of POST /messages/batch and of
concurrent single POSTs, with the dispatcher off, on the embedded database, after gc.freeze() as
the service runs (without it, full collections walk every start-up object and swamp the figure).

The end-to-end and POST scenarios of run.py carry the HTTP server, the clients and (on a shared
machine) other work in their figures; this times the service's own path from request to commit,
so an A/B of two trees run one after the other (alternating rounds) shows what a change costs.
It uses bench/inprocess.py and bench/checkout.py (copy all three), which need only what every
tree since issue 6 has: create_app, the lifespan, the admin user.

    .venv/bin/python bench/intake_cpu.py [--batches 60] [--size 100] [--posts 2000] [--clients 32]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time

from inprocess import message, running_app


async def measure(batches: int, size: int, posts: int, clients: int) -> dict[str, float]:
    async with running_app() as (_, client):
        # warm up: the credential cache, the statement caches, the lazy imports
        for i in range(3):
            r = await client.post("/api/v1/messages", json=message(i))
            assert r.status_code == 202, r.text
        gc.collect()  # as `postroom serve` does after start-up (app/cli_process.py)
        gc.freeze()
        began = time.process_time()
        for b in range(batches):
            body = {"messages": [message(b * size + i) for i in range(size)]}
            r = await client.post("/api/v1/messages/batch", json=body)
            assert r.status_code in (200, 202, 207), r.text
        batch_cpu = time.process_time() - began

        counter = iter(range(posts))

        async def one_client() -> None:
            for i in counter:
                r = await client.post("/api/v1/messages", json=message(i))
                assert r.status_code == 202, r.text

        began = time.process_time()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        post_cpu = time.process_time() - began
    return {
        "batch_cpu_ms_per_message": round(batch_cpu / max(batches * size, 1) * 1000, 4),
        "post_cpu_ms_per_message": round(post_cpu / max(posts, 1) * 1000, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--posts", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    result = asyncio.run(measure(args.batches, args.size, args.posts, args.clients))
    print(json.dumps(result))  # noqa: T201


if __name__ == "__main__":
    main()
