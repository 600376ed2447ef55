"""verify looks up each DKIM key's record in DNS (a real UDP server here) and says whether it
holds the key: match, mismatch, missing, or error when the lookup itself fails."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from typer.testing import CliRunner

from app.cli import cli
from app.config import Settings
from app.db import transaction
from app.dkim import keys
from app.dkim import service as dkim
from app.dkim.schemas import DkimKeyIn
from app.servers import service as servers
from app.wiring import Core, open_core
from tests.delivery.conftest import add_smtp_profile
from tests.dkim.conftest import add_key, connections_in_use, publish
from tests.dnsd import DnsServer
from tests.smtpd import SmtpServer, StartServer

pytestmark = pytest.mark.anyio


async def verify(admin: httpx.AsyncClient) -> dict[str, Any]:
    response = await admin.post("/api/v1/servers/relay/verify", json={})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


@pytest.fixture
async def relay(admin: httpx.AsyncClient, smtp_server_factory: StartServer) -> SmtpServer:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    return server


async def test_a_profile_without_keys_checks_no_dns(
    admin: httpx.AsyncClient, relay: SmtpServer, dns_server: DnsServer
) -> None:
    answer = await verify(admin)
    assert answer["ok"] is True
    assert answer["dkim"] == []
    assert dns_server.queries == []


async def test_match_missing_mismatch_and_revoked(
    admin: httpx.AsyncClient, relay: SmtpServer, dns_server: DnsServer
) -> None:
    answer = await add_key(admin, selector="s1", algorithm="ed25519-sha256")
    name = answer["active"]["dns"]["name"]

    missing = await verify(admin)
    assert missing["ok"] is False, "receivers would find every signature broken"
    [check] = missing["dkim"]
    assert (check["slot"], check["name"], check["status"]) == ("active", name, "missing")
    assert name in missing["hint"]
    assert [step["ok"] for step in missing["steps"]] == [True] * len(missing["steps"])

    publish(dns_server, answer)
    found = await verify(admin)
    assert found["ok"] is True
    assert found["dkim"][0]["status"] == "match"
    assert found["dkim"][0]["found"] == [answer["active"]["dns"]["value"]]
    assert found["hint"] is None

    other = keys.generate("ed25519-sha256")
    dns_server.publish(name, keys.record("ed25519-sha256", other.public))
    wrong = (await verify(admin))["dkim"][0]
    assert wrong["status"] == "mismatch"
    assert "another key" in wrong["detail"]

    dns_server.publish(name, "v=DKIM1; k=ed25519; p=")
    assert "revoked" in (await verify(admin))["dkim"][0]["detail"]
    dns_server.publish(name, "v=DKIM1; k=rsa; p=" + other.public)
    assert "k=rsa" in (await verify(admin))["dkim"][0]["detail"]
    dns_server.publish(name, "v=spf1 -all", answer["active"]["dns"]["value"])
    assert (await verify(admin))["dkim"][0]["status"] == "match", "any record with the key"


async def test_a_long_rsa_record_split_in_strings_matches(
    admin: httpx.AsyncClient, relay: SmtpServer, dns_server: DnsServer
) -> None:
    answer = await add_key(admin, selector="s1")
    assert len(answer["active"]["dns"]["strings"]) == 2
    publish(dns_server, answer)  # published as two strings, joined by the resolver
    assert (await verify(admin))["dkim"][0]["status"] == "match"


async def test_the_next_key_is_reported_without_failing_verify(
    admin: httpx.AsyncClient, relay: SmtpServer, dns_server: DnsServer
) -> None:
    publish(dns_server, await add_key(admin, selector="s1", algorithm="ed25519-sha256"))
    await add_key(admin, selector="s2", algorithm="ed25519-sha256")
    answer = await verify(admin)
    assert answer["ok"] is True
    assert [(c["slot"], c["status"]) for c in answer["dkim"]] == [
        ("active", "match"),
        ("next", "missing"),
    ]


async def test_a_failing_lookup_is_an_error_not_a_verdict(
    admin: httpx.AsyncClient, relay: SmtpServer, dns_server: DnsServer
) -> None:
    await add_key(admin, selector="s1", algorithm="ed25519-sha256")
    dns_server.servfail = True
    answer = await verify(admin)
    [check] = answer["dkim"]
    assert check["status"] == "error"
    assert answer["ok"] is True, "the record may be there: only a verdict fails verify"


async def test_no_session_is_held_while_verify_looks_up_dns(
    admin: httpx.AsyncClient, relay: SmtpServer, dns_server: DnsServer, runtime: Core
) -> None:
    await add_key(admin, selector="s1", algorithm="ed25519-sha256")
    dns_server.delay = 0.5
    probe = asyncio.create_task(admin.post("/api/v1/servers/relay/verify", json={}))
    assert await asyncio.to_thread(dns_server.asked.wait, 10)
    assert connections_in_use(runtime) == 0
    assert (await probe).status_code == 200


def test_the_command_line_verify_and_rotate_keys(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    smtp_server_factory: StartServer,
    dns_server: DnsServer,
) -> None:
    """`postroom verify` prints each key's check; `postroom rotate-keys` re-encrypts the DKIM
    private keys with the new secret key too."""
    server = smtp_server_factory()
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    monkeypatch.setenv("POSTROOM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("POSTROOM_DATABASE_URL", raising=False)
    monkeypatch.setenv("POSTROOM_ADMIN_PASSWORD", "cli-admin-password")
    monkeypatch.setenv("POSTROOM_DNS_SERVERS", dns_server.address)
    monkeypatch.setenv("POSTROOM_SECRET_KEYS", old)

    async def add_profile() -> dict[str, Any]:
        async with open_core(Settings()) as runtime, transaction(runtime.sessions) as session:
            body = servers.PROFILE_BODY.validate_python(
                {
                    "name": "relay",
                    "type": "smtp",
                    "senderEmail": "noreply@example.com",
                    "settings": {"host": server.host, "port": server.port},
                }
            )
            await servers.create_profile(session, runtime.profiles, body, actor=None)
            wanted = DkimKeyIn(selector="s1", algorithm="ed25519-sha256")
            added = await dkim.add_key(
                session, runtime.box, "relay", wanted, await dkim.make_key(wanted), actor=None
            )
            return added.model_dump(by_alias=True)

    answer = asyncio.run(add_profile())
    failed = CliRunner().invoke(cli, ["verify", "relay"])
    assert failed.exit_code == 1, failed.output
    assert "FAIL dkim active no TXT record at s1._domainkey.example.com" in failed.output
    publish(dns_server, answer)
    passed = CliRunner().invoke(cli, ["verify", "relay"])
    assert passed.exit_code == 0, passed.output
    assert "ok   dkim active" in passed.output

    monkeypatch.setenv("POSTROOM_SECRET_KEYS", f"{new},{old}")
    rotated = CliRunner().invoke(cli, ["rotate-keys"])
    assert rotated.exit_code == 0, rotated.output

    async def signer_with_new_key_alone() -> bool:
        async with open_core(Settings(secret_keys=new)) as runtime:
            async with runtime.sessions() as session:
                profile = await servers.get_profile(session, "relay")
            return dkim.signer_of(profile, runtime.box) is not None

    assert asyncio.run(signer_with_new_key_alone())
