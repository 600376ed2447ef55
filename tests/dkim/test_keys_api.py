"""/api/v1/servers/{name}/dkim: keys made or imported, the records to publish, rotation, and bad
input answered with a 422 naming the field and nothing stored."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from app.config import Settings
from app.servers import service as servers
from app.wiring import Core
from tests.conftest import raw_dump
from tests.dkim.conftest import add_key, connections_in_use, publish
from tests.dnsd import DnsServer
from tests.servers.helpers import BODIES, body

pytestmark = pytest.mark.anyio

RELAY = {
    "name": "relay",
    "type": "smtp",
    "senderEmail": "noreply@example.com",
    "settings": {"host": "127.0.0.1", "port": 2525, "ignoreTLS": True},
}


def pem(
    key: Any, format_: Any = serialization.PrivateFormat.PKCS8, password: bytes | None = None
) -> str:
    encryption: Any = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    text: str = key.private_bytes(serialization.Encoding.PEM, format_, encryption).decode()
    return text


def spki(key: rsa.RSAPrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


@pytest.fixture
async def relay(admin: httpx.AsyncClient) -> dict[str, Any]:
    response = await admin.post("/api/v1/servers", json=RELAY)
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def test_a_new_rsa_key_signs_at_once_and_shows_its_record(
    admin: httpx.AsyncClient, relay: dict[str, Any]
) -> None:
    answer = await add_key(admin, selector="pr2026")
    assert answer["signing"] is True
    assert answer["carried"] is True
    assert answer["next"] is None
    active = answer["active"]
    assert (active["domain"], active["selector"], active["algorithm"]) == (
        "example.com",
        "pr2026",
        "rsa-sha256",
    ), "the domain defaults to the sender's"
    assert active["bits"] == 2048
    assert active["imported"] is False
    record = active["dns"]
    assert record["name"] == "pr2026._domainkey.example.com"
    assert record["type"] == "TXT"
    assert record["value"].startswith("v=DKIM1; k=rsa; p=MIIB")
    public = serialization.load_der_public_key(base64.b64decode(record["value"].split("p=")[1]))
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.key_size == 2048
    assert "".join(record["strings"]) == record["value"]
    assert [len(s) for s in record["strings"]] == [255, len(record["value"]) - 255]
    got = await admin.get("/api/v1/servers/relay/dkim")
    assert got.status_code == 200
    assert got.json() == answer


async def test_ed25519_and_larger_rsa_keys(admin: httpx.AsyncClient, relay: dict[str, Any]) -> None:
    answer = await add_key(admin, selector="ed", algorithm="ed25519-sha256")
    record = answer["active"]["dns"]["value"]
    assert record.startswith("v=DKIM1; k=ed25519; p=")
    assert len(base64.b64decode(record.split("p=")[1])) == 32, "RFC 8463: the raw 32-byte key"
    assert answer["active"]["bits"] == 256
    staged = await add_key(admin, selector="big", bits=3072)
    assert staged["next"]["bits"] == 3072
    assert staged["active"]["selector"] == "ed"


@pytest.mark.parametrize(
    ("make", "format_", "algorithm"),
    [
        (
            lambda: rsa.generate_private_key(65537, 2048),
            serialization.PrivateFormat.PKCS8,
            "rsa-sha256",
        ),
        (
            lambda: rsa.generate_private_key(65537, 2048),
            serialization.PrivateFormat.TraditionalOpenSSL,  # BEGIN RSA PRIVATE KEY (PKCS#1)
            "rsa-sha256",
        ),
        (ed25519.Ed25519PrivateKey.generate, serialization.PrivateFormat.PKCS8, "ed25519-sha256"),
    ],
)
async def test_an_imported_key_is_used_and_never_shown(
    admin: httpx.AsyncClient,
    relay: dict[str, Any],
    settings: Settings,
    runtime: Core,
    make: Any,
    format_: Any,
    algorithm: str,
) -> None:
    key = make()
    text = pem(key, format_)
    answer = await add_key(admin, selector="imported", privateKey=text)
    active = answer["active"]
    assert active["algorithm"] == algorithm
    assert active["imported"] is True
    if algorithm == "rsa-sha256":
        assert active["dns"]["value"].endswith(spki(key))
    public = active["dns"]["value"]
    body_lines = [  # a PKCS#1 key's lines of the modulus alone are in the public key too
        line for line in text.splitlines() if "-----" not in line and line not in public
    ]
    assert len(body_lines) >= 1
    answers = [
        (await admin.get(path)).text
        for path in ("/api/v1/servers", "/api/v1/servers/relay", "/api/v1/servers/relay/dkim")
    ]
    for shown in [*answers, str(answer)]:
        assert not any(line in shown for line in body_lines), "the private key is never shown"
    assert "privateKey" not in str(answer)
    dump = await asyncio.to_thread(raw_dump, settings)  # PostgreSQL: asyncio.run of its own
    assert not any(line.encode() in dump for line in body_lines), "encrypted at rest"
    async with runtime.sessions() as session:
        profile = await servers.get_profile(session, "relay")
        assert profile.dkim_keys is not None
        assert "PRIVATE KEY" in runtime.box.decrypt(profile.dkim_keys)["active"]


async def refused(
    admin: httpx.AsyncClient, runtime: Core, field: str, server: str = "relay", **body: Any
) -> str:
    """The request answers 422 naming `field`, and the profile's keys are as they were."""
    async with runtime.sessions() as session:
        before = await servers.get_profile(session, server)
        stored = (before.dkim, before.dkim_keys)
    body.setdefault("selector", "s9")
    response = await admin.post(f"/api/v1/servers/{server}/dkim", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert [d["field"] for d in error["details"]] == [field], error
    async with runtime.sessions() as session:
        after = await servers.get_profile(session, server)
        assert (after.dkim, after.dkim_keys) == stored, "nothing half-written"
    message: str = error["details"][0]["message"]
    return message


async def test_bad_keys_are_refused_naming_the_field(
    admin: httpx.AsyncClient, relay: dict[str, Any], runtime: Core
) -> None:
    short = rsa.generate_private_key(65537, 1024)
    message = await refused(admin, runtime, "privateKey", privateKey=pem(short))
    assert "1024-bit" in message
    assert "2048" in message
    huge = rsa.generate_private_key(65537, 4104)
    assert "4104-bit" in await refused(admin, runtime, "privateKey", privateKey=pem(huge))
    assert "PEM" in await refused(admin, runtime, "privateKey", privateKey="not a key")
    garbled = pem(rsa.generate_private_key(65537, 2048)).replace("A", "B", 40)
    await refused(admin, runtime, "privateKey", privateKey=garbled)
    locked = pem(rsa.generate_private_key(65537, 2048), password=b"secret")
    assert "passphrase" in await refused(admin, runtime, "privateKey", privateKey=locked)
    curve = ec.generate_private_key(ec.SECP256R1())
    assert "RSA or Ed25519" in await refused(admin, runtime, "privateKey", privateKey=pem(curve))
    ed = pem(ed25519.Ed25519PrivateKey.generate())
    message = await refused(admin, runtime, "privateKey", privateKey=ed, algorithm="rsa-sha256")
    assert "ed25519-sha256" in message
    await refused(admin, runtime, "bits", algorithm="ed25519-sha256", bits=2048)
    await refused(admin, runtime, "bits", bits=1024)
    await refused(admin, runtime, "algorithm", algorithm="rsa-sha1")
    await refused(admin, runtime, "selector", selector="bad_selector")
    await refused(admin, runtime, "selector", selector="-dash")
    await refused(admin, runtime, "privateKey", privateKey="x" * 20_000)


@pytest.mark.parametrize(
    ("domain", "says"),
    [
        ("other.org", "not the sender's domain"),
        ("example.com.evil.org", "not the sender's domain"),
        ("192.0.2.1", "not an address"),
        ("localhost", "single label"),
        ("exa mple.com", "not a valid host name"),
        ("xn--zz.example.com", "IDNA"),
        ("a..example.com", "empty label"),
    ],
)
async def test_a_wrong_domain_is_refused(
    admin: httpx.AsyncClient, relay: dict[str, Any], runtime: Core, domain: str, says: str
) -> None:
    assert says in await refused(admin, runtime, "domain", domain=domain)


async def test_aligned_domains_are_taken_in_a_labels(
    admin: httpx.AsyncClient, relay: dict[str, Any]
) -> None:
    answer = await add_key(admin, domain="mail.Example.com.", algorithm="ed25519-sha256")
    assert answer["active"]["domain"] == "mail.example.com", "a subdomain of the sender's"
    patched = await admin.patch("/api/v1/servers/relay", json={"senderEmail": "a@bücher.example"})
    assert patched.status_code == 200, patched.text
    staged = await add_key(
        admin, selector="s2", domain="Bücher.example", algorithm="ed25519-sha256"
    )
    assert staged["next"]["domain"] == "xn--bcher-kva.example"
    assert staged["next"]["dns"]["name"] == "s2._domainkey.xn--bcher-kva.example"


async def test_the_domain_is_needed_without_a_sender(
    admin: httpx.AsyncClient, runtime: Core
) -> None:
    bare = {**RELAY, "senderEmail": None}
    assert (await admin.post("/api/v1/servers", json=bare)).status_code == 201
    assert "senderEmail" in await refused(admin, runtime, "domain")
    answer = await add_key(admin, domain="example.net", algorithm="ed25519-sha256")
    assert answer["active"]["domain"] == "example.net", "any domain when nothing to align with"


async def test_the_next_key_needs_its_own_selector(
    admin: httpx.AsyncClient, relay: dict[str, Any], runtime: Core
) -> None:
    await add_key(admin, selector="s1", algorithm="ed25519-sha256")
    assert "active key" in await refused(admin, runtime, "selector", selector="s1")
    first = await add_key(admin, selector="s2", algorithm="ed25519-sha256")
    second = await add_key(admin, selector="s3", algorithm="ed25519-sha256")
    assert second["next"]["selector"] == "s3", "a new next key replaces the one waiting"
    assert second["next"]["dns"]["value"] != first["next"]["dns"]["value"]


async def test_providers_that_rebuild_the_message_cannot_sign(
    admin: httpx.AsyncClient, relay: dict[str, Any], runtime: Core
) -> None:
    created = await admin.post("/api/v1/servers", json=body("sendgrid", "sg"))
    assert created.status_code == 201
    response = await admin.post("/api/v1/servers/sg/dkim", json={"selector": "s1"})
    assert response.status_code == 409
    assert "SendGrid" in response.json()["error"]["message"]
    got = (await admin.get("/api/v1/servers/sg/dkim")).json()
    assert (got["carried"], got["signing"]) == (False, False)

    await add_key(admin, algorithm="ed25519-sha256")
    to_sendgrid = await admin.put("/api/v1/servers/relay", json=BODIES["sendgrid"])
    assert to_sendgrid.status_code == 422
    assert to_sendgrid.json()["error"]["details"][0]["field"] == "type"
    assert (await admin.get("/api/v1/servers/relay")).json()["type"] == "smtp"
    ses = await admin.get("/api/v1/servers/relay/dkim")
    assert ses.json()["signing"] is True


async def test_every_transport_type_says_what_becomes_of_a_signature() -> None:
    from app.servers.carriage import CARRIAGE
    from app.transports.registry import TRANSPORTS

    assert set(CARRIAGE) == set(TRANSPORTS)


async def test_rotation_wants_the_next_record_published(
    admin: httpx.AsyncClient, relay: dict[str, Any], dns_server: DnsServer
) -> None:
    nothing = await admin.post("/api/v1/servers/relay/dkim/rotate")
    assert nothing.status_code == 409, "no key at all"
    publish(dns_server, await add_key(admin, selector="s1", algorithm="ed25519-sha256"))
    alone = await admin.post("/api/v1/servers/relay/dkim/rotate")
    assert alone.status_code == 409
    assert "no next key" in alone.json()["error"]["message"]
    staged = await add_key(admin, selector="s2", algorithm="ed25519-sha256")

    unpublished = await admin.post("/api/v1/servers/relay/dkim/rotate", json={})
    assert unpublished.status_code == 409
    error = unpublished.json()["error"]
    assert "s2._domainkey.example.com" in error["message"]
    assert error["details"][0]["field"] == "force"
    assert (await admin.get("/api/v1/servers/relay/dkim")).json()["active"]["selector"] == "s1"

    publish(dns_server, staged, "next")
    rotated = await admin.post("/api/v1/servers/relay/dkim/rotate")
    assert rotated.status_code == 200, rotated.text
    assert (rotated.json()["active"]["selector"], rotated.json()["next"]["selector"]) == (
        "s2",
        "s1",
    )
    forced = await admin.post("/api/v1/servers/relay/dkim/rotate", json={"force": True})
    assert forced.status_code == 200, "back to s1, whose record is published anyway"
    assert forced.json()["active"]["selector"] == "s1"
    dns_server.publish("s2._domainkey.example.com")
    forced = await admin.post("/api/v1/servers/relay/dkim/rotate", json={"force": True})
    assert forced.status_code == 200, "force skips the lookup"
    assert forced.json()["active"]["selector"] == "s2"


async def test_no_session_is_held_while_rotation_looks_up_dns(
    admin: httpx.AsyncClient, relay: dict[str, Any], dns_server: DnsServer, runtime: Core
) -> None:

    await add_key(admin, selector="s1", algorithm="ed25519-sha256")
    publish(dns_server, await add_key(admin, selector="s2", algorithm="ed25519-sha256"), "next")
    dns_server.delay = 0.5
    rotation = asyncio.create_task(admin.post("/api/v1/servers/relay/dkim/rotate"))
    assert await asyncio.to_thread(dns_server.asked.wait, 10)
    assert connections_in_use(runtime) == 0, "no connection held across the lookup"
    assert (await rotation).status_code == 200


async def test_dkim_needs_an_admin_and_a_profile(
    admin: httpx.AsyncClient, sender: httpx.AsyncClient, relay: dict[str, Any]
) -> None:
    for method, path in [
        ("GET", "/api/v1/servers/relay/dkim"),
        ("POST", "/api/v1/servers/relay/dkim"),
        ("POST", "/api/v1/servers/relay/dkim/rotate"),
        ("DELETE", "/api/v1/servers/relay/dkim"),
    ]:
        response = await sender.request(method, path, json={"selector": "s1"})
        assert response.status_code == 403, path
    assert (await admin.get("/api/v1/servers/nope/dkim")).status_code == 404
    missing = await admin.post(
        "/api/v1/servers/nope/dkim", json={"selector": "s1", "algorithm": "ed25519-sha256"}
    )
    assert missing.status_code == 404
    assert (await admin.delete("/api/v1/servers/nope/dkim")).status_code == 404


async def test_rotate_takes_force_as_a_boolean_only(
    admin: httpx.AsyncClient, relay: dict[str, Any]
) -> None:
    response = await admin.post("/api/v1/servers/relay/dkim/rotate", json={"force": 1})
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "force"
