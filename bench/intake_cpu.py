"""The intake alone, in process: CPU per accepted message of POST /messages/batch and of
concurrent single POSTs, with the dispatcher off, on the embedded database.

The end-to-end and POST scenarios of run.py carry the HTTP server, the clients and (on a shared
machine) other work in their figures; this times the service's own path from request to commit,
so an A/B of two trees run one after the other (alternating rounds) shows what a change costs.
It uses only what every tree since issue 6 has: create_app, the lifespan, the admin user.

    .venv/bin/python bench/intake_cpu.py [--batches 60] [--size 100] [--posts 2000] [--clients 32]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from app.config import Settings
from app.main import create_app

ADMIN = ("admin", "bench-password-123")


def _message(i: int) -> dict[str, Any]:
    return {
        "from": {"email": "sender@example.com", "name": "Bench"},
        "to": [{"email": f"rcpt{i}@example.com"}],
        "subject": f"bench {i}",
        "text": "Hello from the bench.",
    }


async def measure(batches: int, size: int, posts: int, clients: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(  # type: ignore[call-arg]
            data_dir=Path(folder),
            admin_user=ADMIN[0],
            admin_password=ADMIN[1],
            dispatcher=False,
            _env_file=None,
        )
        app = create_app(settings)
        token = base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
            async with httpx.AsyncClient(
                transport=transport,
                base_url="http://postroom.bench",
                headers={"Authorization": f"Basic {token}"},
            ) as client:
                # warm up: the credential cache, the statement caches, the lazy imports
                for i in range(3):
                    r = await client.post("/api/v1/messages", json=_message(i))
                    assert r.status_code == 202, r.text
                began = time.process_time()
                for b in range(batches):
                    body = {"messages": [_message(b * size + i) for i in range(size)]}
                    r = await client.post("/api/v1/messages/batch", json=body)
                    assert r.status_code in (200, 202, 207), r.text
                batch_cpu = time.process_time() - began

                counter = iter(range(posts))

                async def one_client() -> None:
                    for i in counter:
                        r = await client.post("/api/v1/messages", json=_message(i))
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
