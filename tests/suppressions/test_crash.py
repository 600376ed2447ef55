"""No suppression is lost when the process is killed: `postroom serve` is killed with SIGKILL in
the middle of a burst of POST /suppressions and one-click unsubscribes, and after a restart every
entry it had acknowledged is there (each answer comes after its commit)."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.reliability.crash import ADMIN, Place, Service, cleanup
from tests.smtpd import SmtpServer, StartServer

pytestmark = pytest.mark.processes

PUBLIC = "http://127.0.0.1"
Entry = tuple[str, str | None]


def test_acknowledged_suppressions_survive_kill_9(
    tmp_path: Path, smtp_server_factory: StartServer
) -> None:
    sink = smtp_server_factory()
    service = Service(Place(tmp_path / "data"), "suppress", dispatcher=True, public_url=PUBLIC)
    rng = random.Random(14)
    try:
        service.start()
        group = [f"member{n}@example.com" for n in range(20)]
        with httpx.Client(base_url=service.url, auth=ADMIN, timeout=10) as client:
            profile = {
                "name": "relay", "type": "smtp", "senderEmail": "noreply@example.com",
                "listUnsubscribe": True,
                "settings": {"host": sink.host, "port": sink.port, "ignoreTLS": True},
            }  # fmt: skip
            assert client.post("/api/v1/servers", json=profile).status_code == 201
            sent = client.post("/api/v1/messages", json={"recipients": group, "text": "x"})
            assert sent.status_code == 202
        links = unsubscribe_links(sink, len(group))
        acknowledged: set[Entry] = set()
        kill_after = rng.randint(5, 25)
        killer: threading.Timer | None = None
        with httpx.Client(base_url=service.url, auth=ADMIN, timeout=10) as client:
            for n in range(40):
                try:
                    if n % 2 and links:
                        address, path = links.pop()
                        answer = client.post(path, data={"List-Unsubscribe": "One-Click"})
                        entry: Entry = (address, "relay")
                    else:
                        address = f"burst{n}@example.com"
                        answer = client.post("/api/v1/suppressions", json={"address": address})
                        entry = (address, None)
                except httpx.TransportError:
                    break
                if answer.status_code in (200, 201):
                    acknowledged.add(entry)
                if len(acknowledged) == kill_after and killer is None:
                    killer = threading.Timer(rng.uniform(0, 0.01), service.kill)
                    killer.start()
        if killer is not None:
            killer.join()
        service.kill()
        service.start()
        with httpx.Client(base_url=service.url, auth=ADMIN, timeout=10) as client:
            items = client.get("/api/v1/suppressions", params={"limit": 1000}).json()["items"]
        stored = {(e["address"], e["profile"]) for e in items}
        assert len(acknowledged) >= kill_after
        assert acknowledged <= stored, f"lost: {acknowledged - stored}"
    finally:
        service.stop()
        cleanup()


def unsubscribe_links(sink: SmtpServer, count: int) -> list[tuple[str, str]]:
    """Each group member's unsubscribe link (its path), as the sink received it."""
    deadline = time.monotonic() + 30
    while len(sink.transactions) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    found = []
    for transaction in sink.transactions:
        header = str(transaction.message["List-Unsubscribe"])
        found.append((transaction.rcpt_tos[0], header[1:-1].removeprefix(PUBLIC)))
    assert len(found) == count, f"{len(found)} of {count} messages reached the sink"
    return found
