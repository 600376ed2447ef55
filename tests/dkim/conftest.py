"""DKIM tests: a DNS server of their own (tests/dnsd.py) that Postroom's resolver asks, and
dkimpy's verifier reading the same records."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dkim
import httpx
import pytest
from sqlalchemy.pool import QueuePool

from app.config import Settings
from app.delivery.dispatcher import Dispatcher
from app.wiring import Core
from tests.dnsd import DnsServer

PUBLIC_URL = "https://mail.example.com"


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


@pytest.fixture
def settings(settings: Settings, dns_server: DnsServer) -> Settings:
    """The shared settings, with the test DNS server as the resolver (and a public URL, for
    one-click unsubscribe links)."""
    return settings.model_copy(update={"dns_servers": dns_server.address, "public_url": PUBLIC_URL})


@pytest.fixture
def dispatcher(runtime: Core) -> Dispatcher:
    return Dispatcher(
        runtime.sessions, runtime.settings, runtime.transports, runtime.metrics, runtime.ledger
    )


async def add_key(
    admin: httpx.AsyncClient, server: str = "relay", status: int = 201, **body: Any
) -> dict[str, Any]:
    body.setdefault("selector", "s1")
    response = await admin.post(f"/api/v1/servers/{server}/dkim", json=body)
    assert response.status_code == status, response.text
    answer: dict[str, Any] = response.json()
    return answer


def publish(dns_server: DnsServer, answer: dict[str, Any], slot: str = "active") -> None:
    """Publish a key's record as the answer gives it."""
    record = answer[slot]["dns"]
    dns_server.publish(record["name"], record["value"])


def verified(data: bytes, dns_server: DnsServer) -> bool:
    """dkimpy's verdict on the first DKIM-Signature, its key looked up in the test DNS."""
    return bool(dkim.verify(data, dnsfunc=dns_server.dkim_txt))


def tags(data: bytes) -> dict[str, str]:
    """The first DKIM-Signature's tags, unfolded."""
    headers, _ = dkim.rfc822_parse(data)
    value = next(v for name, v in headers if name.lower() == b"dkim-signature")
    parsed = dkim.util.parse_tag_value(b" ".join(value.split()))
    return {k.decode(): v.decode() for k, v in parsed.items()}


def connections_in_use(runtime: Core) -> int:
    """Database connections checked out of the pool right now (sessions holding one)."""
    pool = runtime.engine.pool
    assert isinstance(pool, QueuePool)
    return pool.checkedout()


def signed_headers(data: bytes) -> list[str]:
    return [name.strip() for name in tags(data)["h"].split(":")]
