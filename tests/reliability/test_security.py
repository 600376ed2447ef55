"""Security: reliability checks 20 to 29 (auth, brute force, hashes, secrets in answers, logs and
at rest, mass assignment, SSRF, injection, transcript redaction, limits). Schemathesis (the
fuzzing half of 20 and 29) is in test_schemathesis.py."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import secrets
import socket
import statistics
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import select, text
from typer.testing import CliRunner

from app.cli import cli
from app.config import Settings
from app.crypto import KEY_FILE, SecretBoxError
from app.delivery.dispatcher import Dispatcher
from app.egress import EgressPolicy, parse_networks
from app.main import create_app
from app.messages.deps import SENDING
from app.messages.schemas import LINE_BREAKS
from app.servers.deps import PROFILES
from app.servers.models import ServerProfile
from app.throttle import Throttle
from app.transports import smtp
from app.transports.errors import ConfigError
from app.users import passwords
from app.wiring import CORE, Core
from tests.conftest import ADMIN, SENDER, allow_sender, basic, raw_dump
from tests.delivery.conftest import add_smtp_profile, record, send
from tests.reliability.conftest import FULL, Report
from tests.servers.helpers import BODIES, SECRETS, body
from tests.smtpd import SmtpServer, StartServer, make_message
from tests.test_secrets import encodings, leaks

ROOT = Path(__file__).resolve().parents[2]
OPENAPI = json.loads((ROOT / "openapi" / "openapi.json").read_text())
PUBLIC = {"/healthz", "/readyz", "/metrics"}
SIGNED = {"/api/v1/hooks/{profile}/events", "/u/{token}"}
"""Authenticated by a signature instead of Basic credentials: the provider's (tests/events/hooks:
unsigned or badly signed is a 401) and Postroom's own unsubscribe token (tests/suppressions)."""


def operations() -> list[tuple[str, str]]:
    """Every (method, path) of the OpenAPI document that needs credentials, parameters filled."""
    found = []
    for path, methods in OPENAPI["paths"].items():
        if path in PUBLIC or path in SIGNED:
            continue
        for method in methods:
            if method in ("get", "post", "put", "patch", "delete"):
                found.append((method.upper(), re.sub(r"\{[^}]+\}", "x", path)))
    return found


# --- 20: admin auth ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_every_operation_needs_credentials(
    anon: httpx.AsyncClient, runtime: Core, report: Report
) -> None:
    """Check 20: every operation without, with malformed and with wrong Basic credentials -> 401
    with `WWW-Authenticate: Basic`."""
    runtime.auth.throttle.limit = 10**6
    runtime.auth.lockout.limit = 10**6  # one address's wrong password locks it out after 10
    wrong = [
        {},
        {"Authorization": "Bearer abc"},
        basic((ADMIN[0], "not-the-password")),
        basic(("nobody", ADMIN[1])),
    ]
    checked = 0
    for method, path in operations():
        for headers in wrong:
            response = await anon.request(method, path, headers=headers, json={})
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.headers["www-authenticate"].lower().startswith("basic")
            checked += 1
    assert len(operations()) >= 30
    report(20, f"{len(operations())} operations x {len(wrong)} credentials: {checked} x 401")


@pytest.mark.anyio
async def test_unknown_user_and_wrong_password_take_as_long(
    anon: httpx.AsyncClient, runtime: Core, report: Report
) -> None:
    """Check 20: the median latency of an unknown user and of a known user's wrong password
    differ by less than 10 % (500 samples each on demand, 60 in the default suite).

    Timed in this process's CPU time (the argon2 thread's included): what would tell the two
    apart is work one of them skips, and CPU time shows it without the noise other processes on
    a loaded machine (the suite's other workers) add to the wall clock."""
    runtime.auth.throttle.limit = 10**6
    runtime.auth.lockout.limit = 10**6
    samples = 500 if FULL else 60
    unknown = basic(("no-such-user", "wrong-password-1"))
    known = basic((ADMIN[0], "wrong-password-1"))
    timings: dict[str, list[float]] = {"unknown": [], "known": []}
    for _ in range(3):  # warm up
        await anon.get("/api/v1/servers", headers=unknown)
        await anon.get("/api/v1/servers", headers=known)
    for i in range(samples * 2):
        kind, headers = ("unknown", unknown) if i % 2 else ("known", known)
        started = time.process_time()
        response = await anon.get("/api/v1/servers", headers=headers)
        timings[kind].append(time.process_time() - started)
        assert response.status_code == 401
    medians = {kind: statistics.median(values) * 1000 for kind, values in timings.items()}
    difference = abs(medians["unknown"] - medians["known"]) / medians["known"]
    assert difference < 0.10, medians
    report(
        20,
        f"median CPU of {samples} samples each: unknown user {medians['unknown']:.1f} ms, "
        f"wrong password {medians['known']:.1f} ms: {difference:.1%} apart",
    )


# --- 21: brute force --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_brute_force_is_throttled_per_client_and_per_account(
    anon: httpx.AsyncClient,
    admin: httpx.AsyncClient,
    runtime: Core,
    monkeypatch: pytest.MonkeyPatch,
    report: Report,
) -> None:
    """Check 21: the 11th failed login from one client within 60 s -> 429 with Retry-After; an
    account locks after 100 failures (from any number of clients; a success does not reset the
    account's count, only its own address's), known user or not; clients that logged in with
    the right password before keep working."""
    wrong = basic((ADMIN[0], "wrong-password"))
    codes = [(await anon.get("/api/v1/servers", headers=wrong)).status_code for _ in range(11)]
    assert codes == [401] * 10 + [429]
    throttled = await anon.get("/api/v1/servers", headers=wrong)
    retry_after = int(throttled.headers["retry-after"])
    assert throttled.status_code == 429
    assert 1 <= retry_after <= 66  # the sliding estimate: until 6 s into the next minute

    auth = runtime.auth
    auth.throttle = Throttle(runtime.engine, name="login-2", limit=10, what="failed logins")
    assert (await admin.get("/api/v1/servers")).status_code == 200  # this client: trusted now
    real_verify = passwords.verify_password  # argon2 only for the right password: fast failures
    monkeypatch.setattr(
        "app.security.verify_password",
        lambda password, stored: password == ADMIN[1] and real_verify(password, stored),
    )
    limit = runtime.settings.account_lockout_failures
    assert limit <= 100
    already = await auth.lockout.failures(ADMIN[0])
    assert already == 10, "the first client's failures count for the account"
    engaged_at = None
    for attempt in range(1, 200):
        client = f"198.51.100.{attempt}"  # a new client each time: the per-client limit never hits
        status = await auth_status(auth, wrong, client)
        if status == 429:
            engaged_at = attempt
            break
        assert status == 401
    assert engaged_at is not None
    assert already + engaged_at == limit + 1, engaged_at
    failures = await auth.lockout.failures(ADMIN[0])
    right_new_client = await auth_status(auth, basic(ADMIN), "192.0.2.200")
    right_trusted = await auth_status(auth, basic(ADMIN), "203.0.113.8")
    auth._cache.clear()  # once the cached verification has expired too
    right_trusted_uncached = await auth_status(auth, basic(ADMIN), "203.0.113.8")
    locked = await anon.get("/api/v1/servers", headers=basic((ADMIN[0], "another-guess-1")))
    assert locked.status_code == 429
    assert int(locked.headers["retry-after"]) > 60
    for attempt in range(limit):
        await auth_status(auth, basic(("ghost", "guess")), f"198.51.101.{attempt % 250}")
    ghost = await auth_status(auth, basic(("ghost", "guess")), "192.0.2.202")
    assert (right_new_client, right_trusted, right_trusted_uncached, ghost) == (429, 200, 200, 429)
    report(
        21,
        f"11th failure from one client -> 429 (Retry-After {retry_after}); account locked after "
        f"{failures} failures from {engaged_at} clients (attempt {engaged_at} -> 429, "
        f"HTTP Retry-After {locked.headers['retry-after']}); right password from a new client "
        f"{right_new_client}, from a client that logged in before {right_trusted}; an unknown "
        f"user locks the same: {ghost}",
    )


async def auth_status(auth: Any, headers: dict[str, str], client: str) -> int:
    try:
        await auth.authenticate(headers["Authorization"], client)
    except Exception as err:
        return int(getattr(err, "status_code", 500))
    return 200


# --- 22: password storage ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_password_hashes(
    admin: httpx.AsyncClient, sender: httpx.AsyncClient, runtime: Core, report: Report
) -> None:
    """Check 22: argon2id with m >= 19456 KiB, t >= 2, p >= 1."""
    from app.users.models import User

    async with runtime.sessions() as session:
        hashes = list(await session.scalars(select(User.password_hash)))
    params = set()
    for stored in hashes:
        match = re.fullmatch(r"\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$[^$]+\$[^$]+", stored)
        assert match, stored
        memory, rounds, lanes = map(int, match.groups())
        assert (memory >= 19_456, rounds >= 2, lanes >= 1) == (True, True, True)
        params.add((memory, rounds, lanes))
        assert ADMIN[1] not in stored
        assert SENDER[1] not in stored
    report(22, f"{len(hashes)} hashes, argon2id (m, t, p) = {sorted(params)}")


# --- 23, 24: secrets --------------------------------------------------------------------------

SECRET_COUNT = 50


def seeded_profiles() -> tuple[list[dict[str, Any]], list[str]]:
    """50 profiles of every type, each with a secret of its own, and those secrets."""
    types = sorted(BODIES)
    payloads, values = [], []
    for n in range(SECRET_COUNT):
        type_ = types[n % len(types)]
        payload = body(type_, f"p{n}")
        if type_ == "smtp":
            payload["settings"]["pool"] = False
        value = f"{type_}-{secrets.token_urlsafe(12)}-#&+/=?%{n}"
        payload["settings"][SECRETS[type_][0]] = value
        payloads.append(payload)
        values.append(value)
    return payloads, values


@pytest.mark.anyio
async def test_no_secret_in_any_answer_or_log(
    admin: httpx.AsyncClient,
    runtime: Core,
    respx_mock: respx.MockRouter,
    caplog: pytest.LogCaptureFixture,
    report: Report,
) -> None:
    """Check 23: 50 seeded passwords and API keys; every admin answer (create, list, detail,
    update, verify, 4xx incl. a 422 for a missing required field) and every log line: 0 of them,
    plain, base64 or URL-encoded."""
    caplog.set_level(logging.DEBUG)
    respx_mock.route().respond(401, json={"message": "bad key"})
    payloads, values = seeded_profiles()
    answers: list[httpx.Response] = []

    async def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = await admin.request(method, path, **kwargs)
        answers.append(response)
        return response

    for payload in payloads:
        assert (await call("POST", "/api/v1/servers", json=payload)).status_code == 201
    await call("GET", "/api/v1/servers")
    for payload in payloads:
        name, settings = payload["name"], payload["settings"]
        await call("GET", f"/api/v1/servers/{name}")
        await call("PATCH", f"/api/v1/servers/{name}", json={"description": "changed"})
        await call("PUT", f"/api/v1/servers/{name}", json=payload)
        await call("POST", "/api/v1/servers", json=payload)  # 409
        missing = {k: v for k, v in payload.items() if k != "type"}
        await call("POST", "/api/v1/servers", json=missing)  # 422: no type
        await call("PUT", f"/api/v1/servers/{name}", json={**payload, "bogus": 1})
        await call("PATCH", f"/api/v1/servers/{name}", json={"settings": {**settings, "x": [1]}})
        await call("POST", f"/api/v1/servers/{name}/duplicate", json={})
    for payload in payloads[:12]:
        await call("POST", f"/api/v1/servers/{payload['name']}/verify", json={})
    await call("POST", "/api/v1/settings/email_server", json={"host": "h", "pass": values[0]})
    await call("POST", "/api/v1/settings/email_server", json={"port": "x", "pass": values[1]})
    await call("GET", "/api/v1/settings/email_server")

    statuses = sorted({a.status_code for a in answers})
    assert {200, 201, 409, 422} <= set(statuses)
    assert leaks(json.dumps(payloads), values) == values, "the detector finds them all"
    leaked = [a.request.url for a in answers if leaks(a.text + str(a.headers), values)]
    logged = caplog.text + "".join(repr(r.args) for r in caplog.records)
    in_logs = leaks(logged, values)
    assert leaked == []
    assert in_logs == []
    forms = sum(len(encodings(v)) for v in values)
    report(
        23,
        f"{SECRET_COUNT} secrets x {forms // SECRET_COUNT} encodings: 0 in {len(answers)} answers "
        f"(statuses {statuses}) and 0 in {len(caplog.records)} log records",
    )


def run_app(settings: Settings, work: Any) -> Any:
    async def main() -> Any:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://postroom.test", headers=basic(ADMIN)
            ) as client:
                return await work(client, CORE.of(app))

    return asyncio.run(main())


def test_secrets_at_rest_and_key_rotation(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, report: Report
) -> None:
    """Check 24: the raw database holds none of 50 seeded secrets and no key; after a new primary
    key and `postroom rotate-keys`, every row decrypts with the new key alone and the old key
    decrypts none."""
    payloads, values = seeded_profiles()

    async def seed(client: httpx.AsyncClient, runtime: Core) -> None:
        for payload in payloads:
            assert (await client.post("/api/v1/servers", json=payload)).status_code == 201

    run_app(settings, seed)
    dump = raw_dump(settings)
    assert b"p49" in dump
    old = (settings.data_dir / KEY_FILE).read_text().strip()
    in_dump = leaks(dump, values)
    assert in_dump == []
    assert old.encode() not in dump
    assert base64.urlsafe_b64decode(old) not in dump

    new = Fernet.generate_key().decode()
    monkeypatch.chdir(tmp_path)
    env = {
        "POSTROOM_DATA_DIR": str(settings.data_dir),
        "POSTROOM_SECRET_KEYS": f"{new},{old}",
        "POSTROOM_MIGRATE_ON_START": str(settings.migrate_on_start).lower(),
        "POSTROOM_DATABASE_URL": settings.database_url or "",
    }
    rotated = CliRunner().invoke(cli, ["rotate-keys"], env=env)
    assert rotated.exit_code == 0, rotated.output

    def decryptable(key: str) -> Any:
        async def work(client: httpx.AsyncClient, runtime: Core) -> list[str]:
            found: list[str] = []
            async with runtime.sessions() as session:
                for profile in await session.scalars(select(ServerProfile)):
                    assert profile.secrets is not None
                    try:
                        stored = runtime.box.decrypt(profile.secrets)
                    except SecretBoxError:
                        continue
                    found += [value for value in stored.values() if value in values]
            return found

        return run_app(settings.model_copy(update={"secret_keys": key}), work)

    with_new = decryptable(new)
    with_old = decryptable(old)
    assert sorted(with_new) == sorted(values)
    assert with_old == []
    after = raw_dump(settings)
    assert leaks(after, values) == []
    assert new.encode() not in after
    report(
        24,
        f"raw database: {len(in_dump)} of {SECRET_COUNT} secrets, 0 keys; after rotation "
        f"{len(with_new)}/{SECRET_COUNT} rows decrypt with the new key alone, "
        f"{len(with_old)} with the old one",
    )


# --- 25: mass assignment ----------------------------------------------------------------------


async def snapshot(runtime: Core) -> dict[str, list[Any]]:
    """Every row of the tables an admin writes, as stored."""
    tables = ("server_profiles", "users", "templates", "themes", "branding", "messages")
    found = {}
    async with runtime.engine.connect() as conn:
        for table in tables:
            result = await conn.execute(text(f"SELECT * FROM {table} ORDER BY 1"))
            found[table] = [tuple(row) for row in result]
    return found


@pytest.mark.anyio
async def test_unknown_and_read_only_fields_are_refused(
    admin: httpx.AsyncClient, sender: httpx.AsyncClient, runtime: Core, report: Report
) -> None:
    """Check 25: create and update bodies with an unknown field or a read-only one (id,
    createdAt, updatedAt, status, attempts, health, passSet, ...) -> 422, every stored row
    byte-identical afterwards."""
    profile = body("smtp", "relay")
    assert (await admin.post("/api/v1/servers", json=profile)).status_code == 201
    template = {"name": "welcome", "subject": "Hi", "text": "Hello"}
    assert (await admin.post("/api/v1/templates", json=template)).status_code == 201
    theme = {"name": "brand", "html": "<p>{{ content }}</p>"}
    assert (await admin.post("/api/v1/themes", json=theme)).status_code == 201
    message = {"from": "a@example.com", "to": ["b@example.com"], "text": "t"}
    assert (await sender.post("/api/v1/messages", json=message)).status_code == 202
    before = await snapshot(runtime)

    extras: list[dict[str, Any]] = [
        {"id": 7},
        {"createdAt": "2020-01-01T00:00:00Z"},
        {"updatedAt": "2020-01-01T00:00:00Z"},
        {"status": "sent"},
        {"attempts": 0},
        {"health": {"status": "ok"}},
        {"passSet": True},
        {"isAdmin": True},
        {"unknown": "x"},
    ]
    requests: list[tuple[str, str, dict[str, Any]]] = []
    for extra in extras:
        requests += [
            ("POST", "/api/v1/servers", {**body("smtp", "other"), **extra}),
            ("PUT", "/api/v1/servers/relay", {**profile, **extra}),
            ("PATCH", "/api/v1/servers/relay", extra),
            ("PATCH", "/api/v1/servers/relay", {"settings": extra}),
            ("POST", "/api/v1/settings/email_server", {"host": "h.example", **extra}),
            ("POST", "/api/v1/users", {"name": "eve", "role": "sender", **extra}),
            ("PATCH", "/api/v1/users/sender", {"role": "admin", **extra}),
            ("POST", "/api/v1/templates", {**template, "name": "t2", **extra}),
            ("PUT", "/api/v1/templates/welcome", {**template, **extra}),
            ("PATCH", "/api/v1/templates/welcome", extra),
            ("POST", "/api/v1/themes", {**theme, "name": "t2", **extra}),
            ("PATCH", "/api/v1/themes/brand", extra),
            ("POST", "/api/branding", {"emails": {"senderEmail": "x@example.com", **extra}}),
            ("POST", "/api/branding", {"emails": {}, **extra}),
            ("POST", "/api/v1/messages", {**message, **extra}),
        ]
    codes = []
    for method, path, payload in requests:
        response = await admin.request(method, path, json=payload)
        codes.append(response.status_code)
        assert response.status_code == 422, (method, path, payload, response.text)
    after = await snapshot(runtime)
    assert after == before
    changed = sum(1 for table in before if before[table] != after[table])
    report(
        25,
        f"{len(requests)} bodies with unknown/read-only fields: all 422, {changed} tables changed",
    )


# --- 26: SSRF ---------------------------------------------------------------------------------

HOSTILE_DENY = (
    "0.0.0.0/8,127.0.0.0/8,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,169.254.0.0/16,"
    "::1/128,fc00::/7,fe80::/10"
)
HOSTILE_HOSTS = [
    "127.0.0.1",
    "127.1",
    "2130706433",
    "0x7f000001",
    "0.0.0.0",
    "::1",
    "::ffff:127.0.0.1",
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "fd00::1",
    "fe80::1",
    "localhost",
]


async def save_smtp(admin: httpx.AsyncClient, name: str, host: str, port: int = 25) -> int:
    payload = {"name": name, "type": "smtp", "settings": {"host": host, "port": port}}
    return (await admin.post("/api/v1/servers", json=payload)).status_code


@pytest.mark.anyio
async def test_hostile_hosts_are_refused_at_save(
    admin: httpx.AsyncClient, app_runtime: tuple[Any, Core], report: Report
) -> None:
    """Check 26: with the deny list configured, the 13 hostile addresses and a name resolving to
    one are refused at save (422, 14/14). By default (DESIGN.md: LAN relays and localhost stay
    allowed) only link-local is: 169.254.169.254 and fe80::1."""
    default = {host: await save_smtp(admin, f"d{i}", host) for i, host in enumerate(HOSTILE_HOSTS)}
    refused_by_default = sorted(h for h, code in default.items() if code == 422)
    assert refused_by_default == sorted(["169.254.169.254", "fe80::1"])
    assert {code for h, code in default.items() if h not in refused_by_default} == {201}

    egress = EgressPolicy(deny=parse_networks(HOSTILE_DENY))
    PROFILES.set(app_runtime[0], replace(PROFILES.of(app_runtime[0]), egress=egress))
    configured = {
        host: await save_smtp(admin, f"h{i}", host) for i, host in enumerate(HOSTILE_HOSTS)
    }
    sisense = await admin.post(
        "/api/v1/settings/email_server", json={"host": "2130706433", "port": 25}
    )
    refused = sum(1 for code in configured.values() if code == 422)
    assert refused == len(HOSTILE_HOSTS), configured
    assert sisense.status_code == 422
    report(
        26,
        f"deny list configured: {refused}/{len(HOSTILE_HOSTS)} hostile hosts refused at save; "
        f"default policy refuses {refused_by_default} and keeps LAN/loopback",
    )


class CountingListener:
    """A loopback TCP listener that counts connections and answers nothing useful."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
async def hostile(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Core]]:
    """The app with the deny list configured from the start (as POSTROOM_EGRESS_DENY would)."""
    settings.egress_deny = HOSTILE_DENY
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.8", 5555))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://postroom.test", headers=basic(ADMIN)
        ) as client:
            yield client, CORE.of(app)


@pytest.fixture
def listener() -> Iterator[CountingListener]:
    counting = CountingListener()
    yield counting
    counting.close()


@pytest.mark.anyio
async def test_dns_rebinding_is_caught_at_connect_time(
    hostile: tuple[httpx.AsyncClient, Core],
    listener: CountingListener,
    monkeypatch: pytest.MonkeyPatch,
    report: Report,
) -> None:
    """Check 26: a name that resolves to a public address when saved and to 127.0.0.1 when used
    -> 0 TCP connections to a loopback listener, for SMTP and for a provider API; the message
    fails with EPOLICY naming the setting."""
    admin, runtime = hostile
    answers = {"now": "93.184.216.34"}
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.test":
            return await real(answers["now"], port, *args, **kwargs)
        return await real(host, port, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", rebinding)
    smtp_body = {
        "name": "rebound",
        "type": "smtp",
        "senderEmail": "noreply@example.com",
        "settings": {"host": "rebind.test", "port": listener.port},
    }
    assert (await admin.post("/api/v1/servers", json=smtp_body)).status_code == 201
    api_body = {
        "name": "api",
        "type": "sendgrid",
        "senderEmail": "noreply@example.com",
        "settings": {"apiKey": "SG.k", "baseUrl": f"http://rebind.test:{listener.port}"},
    }
    assert (await admin.post("/api/v1/servers", json=api_body)).status_code == 201
    answers["now"] = "127.0.0.1"
    ids = [
        await send(admin, to=["ann@example.com"], server="rebound"),
        await send(admin, to=["ann@example.com"], server="api"),
    ]
    await Dispatcher(
        runtime.sessions, runtime.settings, runtime.transports, runtime.metrics, runtime.ledger
    ).drain()
    for message_id in ids:
        saved = await record(admin, message_id)
        assert saved["status"] == "failed", saved
        assert saved["attemptLog"][0]["errorCode"] == "EPOLICY"
    await asyncio.sleep(0.05)
    assert listener.accepted == 0
    report(
        26,
        f"rebinding to 127.0.0.1: SMTP and HTTP failed EPOLICY, {listener.accepted} TCP connects",
    )


@pytest.mark.anyio
async def test_the_port_allow_list(
    admin: httpx.AsyncClient,
    app_runtime: tuple[Any, Core],
    listener: CountingListener,
    report: Report,
) -> None:
    """Check 26: with POSTROOM_EGRESS_PORTS=25,465,587,2525 a port outside it is refused at save
    (422 naming settings.port) and at connect (0 connections); by default (DESIGN.md: LAN relays
    use odd ports) any port is allowed."""
    app, runtime = app_runtime
    assert runtime.settings.egress_ports == ""
    assert await save_smtp(admin, "odd_default", "127.0.0.1", 2526) == 201
    egress = EgressPolicy(deny=(), ports=frozenset({25, 465, 587, 2525}))
    PROFILES.set(app, replace(PROFILES.of(app), egress=egress))
    refused = await admin.post(
        "/api/v1/servers",
        json={"name": "odd", "type": "smtp", "settings": {"host": "mail.invalid", "port": 2526}},
    )
    assert refused.status_code == 422
    assert refused.json()["error"]["details"][0]["field"] == "settings.port"
    allowed = {port: await save_smtp(admin, f"p{port}", "127.0.0.1", port) for port in (25, 587)}
    assert set(allowed.values()) == {201}

    async with httpx.AsyncClient() as http:
        context = runtime.transport_context
        context = type(context)(http, egress, context.logger)
        transport = smtp.create("t", smtp.SmtpConfig(host="127.0.0.1", port=listener.port), context)
        with pytest.raises(ConfigError) as caught:
            await transport.send(make_message())
    assert caught.value.code == "EPOLICY"
    assert listener.accepted == 0
    report(
        26,
        f"ports {{25,465,587,2525}}: 2526 -> {refused.status_code} at save, EPOLICY and "
        f"{listener.accepted} connects at send; default: any port (2526 -> 201)",
    )


@pytest.mark.anyio
async def test_provider_calls_follow_no_redirect(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    respx_mock: respx.MockRouter,
    report: Report,
) -> None:
    """Check 26: a provider answering 302 to the metadata address is not followed."""
    payload = {
        "name": "sg",
        "type": "sendgrid",
        "senderEmail": "noreply@example.com",
        "settings": {"apiKey": "SG.k", "baseUrl": "https://sg.example.test"},
    }
    assert (await admin.post("/api/v1/servers", json=payload)).status_code == 201
    target = respx_mock.get("http://169.254.169.254/latest/meta-data/").respond(200)
    respx_mock.post("https://sg.example.test/v3/mail/send").respond(
        302, headers={"Location": "http://169.254.169.254/latest/meta-data/"}
    )
    message_id = await send(sender, to=["ann@example.com"], server="sg")
    await dispatcher.drain()
    saved = await record(admin, message_id)
    assert saved["status"] == "failed"
    assert target.call_count == 0
    report(26, f"302 to 169.254.169.254: {target.call_count} redirects followed, message failed")


# --- 27: injection ----------------------------------------------------------------------------

CONTROL = ["\r", "\n", "\0"]


@pytest.mark.anyio
async def test_control_characters_are_refused_everywhere(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
    report: Report,
) -> None:
    """Check 27: CR, LF or NUL in the subject, display names, addresses, custom header names and
    values, or the EHLO name -> 422 (never 5xx), and nothing extra reaches the sink."""
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    base = {"to": [{"email": "ann@example.com", "name": "Ann"}], "subject": "Hi", "text": "t"}
    placements: dict[str, Callable[[str], dict[str, Any]]] = {
        "subject": lambda c: {**base, "subject": f"Hi{c}Bcc: evil@example.com"},
        "to name": lambda c: {**base, "to": [{"email": "ann@example.com", "name": f"A{c}nn"}]},
        "from name": lambda c: {**base, "from": {"email": "me@example.com", "name": f"M{c}e"}},
        "cc name": lambda c: {**base, "cc": [{"email": "c@example.com", "name": f"C{c}"}]},
        "replyTo name": lambda c: {**base, "replyTo": [{"email": "r@x.example", "name": f"R{c}"}]},
        "to address": lambda c: {**base, "to": [f"ann@example.com{c}RCPT TO:<evil@example.com>"]},
        "from address": lambda c: {**base, "from": f"me@example.com{c}"},
        "header name": lambda c: {**base, "headers": {f"X-A{c}Bcc": "v"}},
        "header value": lambda c: {**base, "headers": {"X-A": f"v{c}Bcc: evil@example.com"}},
        "attachment name": lambda c: {
            **base,
            "attachments": [{"filename": f"a{c}.txt", "content": "SGk="}],
        },
    }
    codes = []
    for build in placements.values():
        for char in CONTROL:
            response = await sender.post("/api/v1/messages", json=build(char))
            codes.append(response.status_code)
    ehlo = []
    for char in CONTROL:
        response = await admin.patch(
            "/api/v1/servers/relay", json={"settings": {"name": f"host{char}MAIL FROM:<x>"}}
        )
        ehlo.append(response.status_code)
    assert set(codes) == {422}, codes
    assert set(ehlo) == {422}, ehlo
    await send(sender, **base)
    await dispatcher.drain()
    [transaction] = server.transactions
    assert transaction.rcpt_tos == ["ann@example.com"]
    assert transaction.message["Bcc"] is None
    assert b"evil" not in transaction.data
    report(
        27,
        f"{len(codes)} messages + {len(ehlo)} EHLO names with CR/LF/NUL: all 422; sink: "
        f"{len(server.transactions)} message, {len(transaction.rcpt_tos)} RCPT",
    )


@pytest.mark.anyio
@pytest.mark.parametrize(
    "lookalike", ["\n.\r\n", "\r\n.\n", "\r\n.\r\n", "\n.\n", "\r.\r", "\r\n.\r\nQUIT\r\n"]
)
async def test_end_of_data_lookalikes_in_the_body(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
    report: Report,
    lookalike: str,
) -> None:
    """Check 27: a body with `\\n.\\r\\n`, `\\r\\n.\\n` or `\\r\\n.\\r\\n` arrives as exactly one
    message, body intact (line ends normalised)."""
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    text_body = f"before{lookalike}MAIL FROM:<evil@example.com>\r\nafter"
    await send(sender, to=["ann@example.com"], text=text_body)
    await dispatcher.drain()
    [transaction] = server.transactions
    received = transaction.message.get_content()
    normalised = re.sub(r"\r\n|\r|\n", "\n", text_body)
    assert re.sub(r"\r\n|\r|\n", "\n", received).rstrip("\n") == normalised
    assert len(server.sessions[0].verbs) == server.sessions[0].verbs.count("MAIL") + len(
        [v for v in server.sessions[0].verbs if v != "MAIL"]
    )
    assert server.sessions[0].verbs.count("MAIL") == 1
    report(27, f"body with {lookalike!r}: {len(server.transactions)} message, body intact")


HEADER_EXAMPLES = 1000 if FULL else 200


@pytest.fixture
async def injection_sink(admin: httpx.AsyncClient, smtp_server_factory: StartServer) -> SmtpServer:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server, settings={"pool": True, "maxConnections": 2})
    return server


@pytest.mark.anyio
async def test_arbitrary_unicode_never_changes_the_header_count(
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    injection_sink: SmtpServer,
    report: Report,
) -> None:
    """Check 27, property: arbitrary Unicode in the subject and display names is refused (422,
    with CR/LF/NUL) or arrives with the same headers and the one recipient (1,000 examples on
    demand, 200 in the default suite)."""
    server = injection_sink
    baseline_body = {
        "from": {"email": "me@example.com", "name": "Me"},
        "to": [{"email": "ann@example.com", "name": "Ann"}],
        "subject": "Hello",
        "text": "t",
    }
    await send(sender, **baseline_body)
    await dispatcher.drain()
    headers = sorted(server.transactions[-1].message.keys())
    seen = {"accepted": 0, "refused": 0}

    @hypothesis_settings(
        max_examples=HEADER_EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )
    @given(
        subject=st.text(max_size=80),
        name=st.text(max_size=40),
        from_name=st.text(max_size=40),
    )
    def property_test(subject: str, name: str, from_name: str) -> None:
        payload = {
            "from": {"email": "me@example.com", "name": from_name},
            "to": [{"email": "ann@example.com", "name": name}],
            "subject": subject,
            "text": "t",
        }
        status = asyncio.run_coroutine_threadsafe(post_and_deliver(payload), loop).result()
        assert status in (202, 422), status
        hostile = any(c in LINE_BREAKS for c in subject + name + from_name)
        if status == 422:
            assert hostile or any("\ud800" <= c <= "\udfff" for c in subject + name + from_name), (
                payload
            )
            seen["refused"] += 1
            return
        assert not hostile
        received = server.transactions[-1]
        assert received.rcpt_tos == ["ann@example.com"]
        assert sorted(received.message.keys()) == headers, (payload, received.data[:2000])
        seen["accepted"] += 1

    async def post_and_deliver(payload: dict[str, Any]) -> int:
        response = await sender.post("/api/v1/messages", json=payload)
        if response.status_code == 202:
            await dispatcher.drain()
        return response.status_code

    loop = asyncio.get_running_loop()
    await asyncio.to_thread(property_test)
    total = seen["accepted"] + seen["refused"]
    assert total >= HEADER_EXAMPLES
    assert len(server.transactions) == seen["accepted"] + 1
    report(
        27,
        f"hypothesis: {total} examples, {seen['accepted']} delivered with exactly "
        f"{len(headers)} headers and 1 RCPT, {seen['refused']} refused (422)",
    )


# --- 28: transcript redaction -----------------------------------------------------------------


@pytest.mark.anyio
async def test_debug_logs_hold_no_credential(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
    respx_mock: respx.MockRouter,
    caplog: pytest.LogCaptureFixture,
    report: Report,
) -> None:
    """Check 28: with debug logging, deliver through AUTH PLAIN, AUTH LOGIN and an HTTP provider;
    the logs hold no password, base64(password), base64("\\0user\\0password"), API key or
    Authorization value, and do hold the redaction marker."""
    caplog.set_level(logging.DEBUG)
    user, password, api_key = "alice", "Tr4nscript-Pa55!", "SG.transcript-key-9f8e"
    server = smtp_server_factory(users={user: password}, auth_mechanisms=("PLAIN", "LOGIN"))
    for method in ("plain", "login"):
        await add_smtp_profile(
            admin,
            server,
            name=method,
            settings={
                "user": user,
                "pass": password,
                "authMethod": method,
                "debug": True,
                "logger": True,
            },
        )
    route = respx_mock.post("https://sg.example.test/v3/mail/send").respond(
        202, headers={"X-Message-Id": "sg-1"}
    )
    provider = {
        "name": "sg",
        "type": "sendgrid",
        "senderEmail": "noreply@example.com",
        "settings": {"apiKey": api_key, "baseUrl": "https://sg.example.test"},
    }
    assert (await admin.post("/api/v1/servers", json=provider)).status_code == 201
    await allow_sender(admin, "sg")
    for name in ("plain", "login", "sg"):
        await send(sender, to=["ann@example.com"], server=name)
    await dispatcher.drain()
    assert len(server.transactions) == 2
    assert {t.authenticated_as for t in server.transactions} == {user}
    assert route.calls.last.request.headers["authorization"] == f"Bearer {api_key}"

    logged = caplog.text + "".join(repr(r.args) for r in caplog.records)
    needles = {
        "password": password,
        "base64(password)": base64.b64encode(password.encode()).decode(),
        "base64(\\0user\\0password)": base64.b64encode(f"\0{user}\0{password}".encode()).decode(),
        "base64(user\\0user\\0password)": base64.b64encode(
            f"{user}\0{user}\0{password}".encode()
        ).decode(),
        "API key": api_key,
        "Authorization": f"Bearer {api_key}",
    }
    found = {label: needle for label, needle in needles.items() if needle in logged}
    assert found == {}
    assert "AUTH PLAIN" in logged
    assert "AUTH LOGIN" in logged
    markers = logged.count(smtp.REDACTED)
    assert markers >= 3
    report(
        28,
        f"{len(caplog.records)} debug records: 0 of {len(needles)} credential forms, "
        f"{markers} '{smtp.REDACTED}' markers",
    )


# --- 29: limits -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_limits(
    sender: httpx.AsyncClient, app_runtime: tuple[Any, Core], report: Report
) -> None:
    """Check 29: a body over 10,240,000 bytes -> 413; > 100 visible recipients -> 422; > 10,000
    in a group -> 422; > 100 attachments or attachments over the size -> 422; an Idempotency-Key
    over 255 characters -> 400; the per-user send rate (POSTROOM_SEND_RATE_PER_MINUTE) -> 429 with
    Retry-After."""
    app, runtime = app_runtime
    limit = runtime.settings.max_message_bytes
    assert limit == 10_240_000
    base = {"from": "me@example.com", "to": ["a@example.com"], "text": "t"}
    found: dict[str, int] = {}

    huge = {**base, "text": "A" * limit}
    found["body > limit"] = (await sender.post("/api/v1/messages", json=huge)).status_code

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(limit // 65536 + 2):
            yield b"A" * 65536

    streamed = await sender.post(
        "/api/v1/messages", content=chunks(), headers={"content-type": "application/json"}
    )
    found["streamed body > limit"] = streamed.status_code
    many = [f"u{i}@example.com" for i in range(101)]
    found["101 to"] = (await sender.post("/api/v1/messages", json={**base, "to": many})).status_code
    found["100 to"] = (
        await sender.post("/api/v1/messages", json={**base, "to": many[:100]})
    ).status_code
    group = [f"u{i}@example.com" for i in range(10_001)]
    found["10,001 in a group"] = (
        await sender.post(
            "/api/v1/messages", json={"from": "me@example.com", "recipients": group, "text": "t"}
        )
    ).status_code
    attachment = {"filename": "a.txt", "content": "SGk="}
    found["101 attachments"] = (
        await sender.post("/api/v1/messages", json={**base, "attachments": [attachment] * 101})
    ).status_code
    big = base64.b64encode(b"x" * (limit // 2)).decode()
    found["attachments over the size"] = (
        await sender.post(
            "/api/v1/messages",
            json={**base, "attachments": [{"filename": "a", "content": big}] * 2},
        )
    ).status_code
    found["256-char Idempotency-Key"] = (
        await sender.post("/api/v1/messages", json=base, headers={"Idempotency-Key": "k" * 256})
    ).status_code

    limit5 = Throttle(runtime.engine, name="send", limit=5, what="messages")
    SENDING.set(app, replace(SENDING.of(app), throttle=limit5))
    rates = [(await sender.post("/api/v1/messages", json=base)) for _ in range(6)]
    found["6th send in a minute (limit 5)"] = rates[-1].status_code
    retry_after = int(rates[-1].headers["retry-after"])
    assert [r.status_code for r in rates[:5]] == [202] * 5
    assert found == {
        "body > limit": 413,
        "streamed body > limit": 413,
        "101 to": 422,
        "100 to": 202,
        "10,001 in a group": 422,
        "101 attachments": 422,
        "attachments over the size": 413,
        "256-char Idempotency-Key": 400,
        "6th send in a minute (limit 5)": 429,
    }
    assert 1 <= retry_after <= 72  # the sliding estimate: until 12 s into the next minute
    report(29, f"{found}; Retry-After {retry_after}")


@pytest.mark.anyio
async def test_what_the_fuzzers_found_stays_fixed(
    admin: httpx.AsyncClient, sender: httpx.AsyncClient, report: Report
) -> None:
    """Check 29: the answers Schemathesis and Hypothesis found wrong, each pinned.

    A subject with a line separator other than CR/LF (VT, FF, U+2028, ...) was accepted and then
    failed in Python's email on every attempt; a date-time without an offset was a 500; a number
    was taken as a date-time; a cursor with a date-time without offset was a 500 (now a 400, as
    any cursor the API did not issue); a 405's Allow named one route's
    methods only; 404, 409, 413 and 429 were undocumented; /healthz and /metrics were documented
    as JSON."""
    base = {"from": "me@example.com", "to": ["a@example.com"], "text": "t"}
    separators = ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
    codes = {
        repr(sep): (
            await sender.post("/api/v1/messages", json={**base, "subject": f"a{sep}b"})
        ).status_code
        for sep in separators
    }
    assert set(codes.values()) == {422}, codes
    naive = await admin.get("/api/v1/messages", params={"createdFrom": "2026-11-01T00:00:00"})
    number = await admin.get("/api/v1/messages", params={"createdTo": "0.5"})
    cursors = [
        (await admin.get("/api/v1/messages", params={"cursor": cursor})).status_code
        for cursor in ("", "AAAA", base64.urlsafe_b64encode(b"2026-01-01|x").decode())
    ]
    allow = (await admin.request("OPTIONS", "/api/v1/servers/x")).headers["allow"]
    assert (naive.status_code, number.status_code, cursors) == (200, 422, [400, 400, 400])
    assert allow == "GET, PUT, PATCH, DELETE"
    responses = OPENAPI["paths"]["/api/v1/servers/{name}"]["get"]["responses"]
    assert {"404", "409", "413", "429"} <= set(responses)
    assert "text/plain" in OPENAPI["paths"]["/healthz"]["get"]["responses"]["200"]["content"]
    report(
        29,
        f"pinned fuzz findings: line separators in a subject -> {set(codes.values())}, naive "
        f"date-time -> {naive.status_code}, number as date-time -> {number.status_code}, bad "
        f"cursors -> {cursors}, Allow '{allow}'",
    )


@pytest.mark.anyio
async def test_a_boolean_is_not_a_timeout(admin: httpx.AsyncClient) -> None:
    sisense = await admin.post(
        "/api/v1/settings/email_server", json={"host": "smtp.example.com", "greetingTimeout": True}
    )
    profile = await admin.post(
        "/api/v1/servers",
        json={
            "name": "b",
            "type": "smtp",
            "settings": {"host": "h.example", "socketTimeout": True},
        },
    )
    assert (sisense.status_code, profile.status_code) == (422, 422)
