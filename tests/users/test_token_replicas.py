"""A token revoked through one `postroom serve` is refused by another within a second: two real
processes on one database (one SQLite file, or a scratch PostgreSQL database next to
POSTROOM_TEST_DATABASE_URL), the token cached on the second before the revocation. The refusal's
reason is in that process's log, not in its answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet

from tests.conftest import PG_URL
from tests.reliability import crash
from tests.reliability.test_replicas import until_status

pytestmark = pytest.mark.processes


@pytest.fixture
def services(tmp_path: Path) -> Iterator[tuple[crash.Service, crash.Service]]:
    keys = Fernet.generate_key().decode()  # shared, as replicas must share POSTROOM_SECRET_KEYS
    try:
        with crash.place_for("tokens", tmp_path, PG_URL) as place:
            a = crash.Service(place, "a", dispatcher=False, secret_keys=keys)
            a.start()  # migrates and creates the admin
            b = crash.Service(
                place, "b", dispatcher=False, secret_keys=keys, migrate_on_start="false"
            )
            b.start()
            try:
                yield a, b
            finally:
                a.stop()
                b.stop()
    finally:
        crash.cleanup()


def test_a_token_revoked_on_one_serve_is_refused_by_the_other_within_a_second(
    services: tuple[crash.Service, crash.Service],
) -> None:
    a, b = services
    with httpx.Client(base_url=a.url, auth=crash.ADMIN, timeout=30) as admin_a:
        user = {"name": "svc", "role": "sender", "password": "svc-password-123"}
        assert admin_a.post("/api/v1/users", json=user).status_code == 201
        created = admin_a.post("/api/v1/users/svc/tokens", json={"name": "on b"})
        assert created.status_code == 201, created.text
        token, token_id = created.json()["token"], created.json()["id"]
        bearer = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=b.url, headers=bearer, timeout=30) as svc_b:
            assert svc_b.get("/api/v1/messages/none").status_code == 404  # cached on B
            assert svc_b.get("/api/v1/users").status_code == 403  # a sender's token
            revoked = admin_a.delete(f"/api/v1/users/svc/tokens/{token_id}")
            assert revoked.status_code == 204
            took = until_status(svc_b, "/api/v1/messages/none", 401)
            refused = svc_b.get("/api/v1/messages/none")
    assert took < 1.0
    assert refused.json()["error"] == {
        "code": "unauthorized",
        "message": "invalid credentials",
        "details": [],
    }
    b.stop()
    assert b.process is not None
    log = b.process.output()
    assert f"token {token_id} of 'svc' revoked at" in log, log[-3000:]
    assert token not in log
    assert "Traceback" not in log
