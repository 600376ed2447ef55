"""Issue 13 point 3: controls hold across replicas. Two real `postroom serve` processes on one
PostgreSQL database (a scratch one next to POSTROOM_TEST_DATABASE_URL) give the same limits as
one: test sends, the failed-login throttle, the lockout; and a password change or a deleted user
on one replica takes effect on the other within a second.

Clients come from distinct loopback addresses (127.0.0.2, .3, ...: Linux routes all of 127/8 to
lo), so per-address limits are exercised as they are in production. The same sharing on SQLite
(two apps on one file, in-process) is in tests/test_auth.py and tests/test_throttle.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet

from tests.conftest import PG_URL
from tests.reliability import crash
from tests.smtpd import SmtpServer

pytestmark = [
    pytest.mark.processes,
    pytest.mark.postgres,
    pytest.mark.skipif(PG_URL is None, reason="needs PostgreSQL: set POSTROOM_TEST_DATABASE_URL"),
]


class Replicas:
    def __init__(self, a: crash.Service, b: crash.Service) -> None:
        self.services = (a, b)

    def client(
        self, which: int, address: str, auth: tuple[str, str] | None = crash.ADMIN
    ) -> httpx.Client:
        """A client of replica `which` (0 = A, 1 = B) calling from `address`."""
        return httpx.Client(
            base_url=self.services[which].url,
            auth=auth,
            timeout=30,
            transport=httpx.HTTPTransport(local_address=address),
        )


@pytest.fixture
def sink() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Replicas]:
    keys = Fernet.generate_key().decode()  # shared, as replicas must share POSTROOM_SECRET_KEYS
    settings = {"secret_keys": keys, "login_failures_per_minute": 20}
    try:
        with crash.place_for("replicas", tmp_path, PG_URL) as place:
            a = crash.Service(place, "a", dispatcher=False, **settings)
            a.start()  # migrates and creates the admin
            b = crash.Service(place, "b", dispatcher=False, migrate_on_start="false", **settings)
            b.start()
            try:
                yield Replicas(a, b)
            finally:
                a.stop()
                b.stop()
    finally:
        crash.cleanup()


def until_status(client: httpx.Client, path: str, status: int, within: float = 1.0) -> float:
    """tests/test_auth.py's until_status over a blocking client: when the last request that
    still answered otherwise was sent; fails when one sent `within` seconds or later did."""
    started = time.monotonic()
    last_old = 0.0
    while True:
        sent = time.monotonic() - started
        response = client.get(path)
        if response.status_code == status:
            return last_old
        assert sent < within, (response.status_code, response.text)
        last_old = sent
        time.sleep(0.05)


def test_two_serve_processes_share_every_control(
    replicas: Replicas, sink: SmtpServer, capsys: pytest.CaptureFixture[str]
) -> None:
    found: dict[str, object] = {}
    with replicas.client(0, "127.0.0.1") as admin_a, replicas.client(1, "127.0.0.1") as admin_b:
        # test sends: 5 a minute per profile, both replicas together
        profile = {
            "name": "sink",
            "type": "smtp",
            "senderEmail": "replicas@example.com",
            "settings": {"host": sink.host, "port": sink.port, "ignoreTLS": True},
        }
        assert admin_a.post("/api/v1/servers", json=profile).status_code == 201
        sends = [
            (admin_a if n % 2 else admin_b).post("/api/v1/servers/sink/test", json={})
            for n in range(5)
        ]
        assert [s.status_code for s in sends] == [200] * 5, [s.text for s in sends]
        sixth = admin_b.post("/api/v1/servers/sink/test", json={})
        assert sixth.status_code == 429, sixth.text
        assert len(sink.transactions) == 5
        found["6th test send, on the other replica"] = sixth.status_code

        # the failed-login throttle (20 a minute per address here): other names each time, so
        # no lockout is involved
        with (
            replicas.client(0, "127.0.0.2", None) as on_a,
            replicas.client(1, "127.0.0.2", None) as on_b,
        ):
            codes = [
                (on_a if n % 2 else on_b)
                .get("/api/v1/servers", auth=(f"nobody{n}", "x"))
                .status_code
                for n in range(21)
            ]
        assert codes == [401] * 20 + [429], codes
        found["21st failed login from one address, either replica"] = codes[-1]

        # a brute forcer on one address locks itself out of the admin account (a tenth of the
        # account's 100), on both replicas; the admin from an address it never used gets in
        with (
            replicas.client(0, "127.0.0.3", (crash.ADMIN[0], "guess")) as guess_a,
            replicas.client(1, "127.0.0.3", (crash.ADMIN[0], "guess")) as guess_b,
        ):
            codes = [
                (guess_a if n % 2 else guess_b).get("/api/v1/servers").status_code
                for n in range(12)
            ]
            assert codes == [401] * 10 + [429] * 2, codes
            locked = guess_a.get("/api/v1/servers", auth=crash.ADMIN)
            assert locked.status_code == 429, "the right password from the locked address"
            assert int(locked.headers["retry-after"]) > 60
        found["brute forcer, 11th and 12th try"] = codes[-2:]
        with (
            replicas.client(1, "127.0.0.4") as admin_new_b,
            replicas.client(0, "127.0.0.4") as admin_new_a,
        ):
            assert admin_new_b.get("/api/v1/servers").status_code == 200
            assert admin_new_a.get("/api/v1/servers").status_code == 200
        found["admin from another address"] = 200

        # a password change on A: the old password fails on B within a second
        user = {"name": "svc", "role": "sender", "password": "first-password-123"}
        assert admin_a.post("/api/v1/users", json=user).status_code == 201
        with replicas.client(1, "127.0.0.5", ("svc", "first-password-123")) as svc_b:
            assert svc_b.get("/api/v1/messages/none").status_code == 404  # verified, cached on B
            changed = admin_a.patch("/api/v1/users/svc", json={"password": "second-password-456"})
            assert changed.status_code == 200
            took_password = until_status(svc_b, "/api/v1/messages/none", 401)
        found["old password last accepted on B at"] = f"{took_password:.2f} s"

        # a deleted user: refused on B within a second
        with replicas.client(1, "127.0.0.5", ("svc", "second-password-456")) as svc_b:
            assert svc_b.get("/api/v1/messages/none").status_code == 404
            assert admin_a.delete("/api/v1/users/svc").status_code == 204
            took_delete = until_status(svc_b, "/api/v1/messages/none", 401)
        found["deleted user last accepted on B at"] = f"{took_delete:.2f} s"

    assert took_password < 1.0
    assert took_delete < 1.0
    for service in replicas.services:
        assert service.process is not None
        assert "Traceback" not in service.process.output()
    with capsys.disabled():
        print(f"\ntwo `postroom serve` on one PostgreSQL: {found}")  # noqa: T201
