"""No event is lost when `postroom serve` is killed (kill -9) while receiving: a provider event
answered 200 is in the database after a restart, and the one in flight at the kill, which got no
2xx, is stored exactly once when the provider retries it. A real process, real SQLite."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from app.events.models import EventRow
from tests.events.hooks.conftest import MAILGUN_KEY
from tests.events.hooks.signing import mailgun_body, sample
from tests.reliability import crash
from tests.servers.helpers import body

pytestmark = pytest.mark.processes


def test_a_kill_while_receiving_loses_no_acknowledged_event(tmp_path: Path) -> None:
    place = crash.Place(tmp_path / "data")
    service = crash.Service(place, "serve", dispatcher=False)
    loop = crash.Loop()
    template = sample("mailgun", "complained")["body"]["event-data"]
    answered: list[str] = []
    unanswered: list[str] = []

    def post(client: httpx.Client, event_id: str) -> int:
        data = dict(template, id=event_id)
        response = client.post(
            f"{service.url}/api/v1/hooks/mg/events", content=mailgun_body(MAILGUN_KEY, data)
        )
        return response.status_code

    def provider() -> None:
        with httpx.Client(timeout=10) as client:
            for number in range(100_000):
                event_id = f"event-{number}"
                try:
                    status = post(client, event_id)
                except httpx.TransportError:
                    unanswered.append(event_id)
                    return
                assert status == 200
                answered.append(event_id)

    try:
        service.start()
        profile = body("mailgun", "mg")
        profile["settings"]["webhookSigningKey"] = MAILGUN_KEY
        created = httpx.post(f"{service.url}/api/v1/servers", json=profile, auth=crash.ADMIN)
        assert created.status_code == 201, created.text
        sending = threading.Thread(target=provider)
        sending.start()
        while len(answered) < 20:
            sending.join(0.01)
        threading.Event().wait(random.uniform(0.05, 0.5))
        service.kill()
        sending.join(20)
        assert len(answered) >= 20
        assert len(unanswered) == 1

        service.start()
        with httpx.Client(timeout=10) as client:
            assert post(client, unanswered[0]) == 200  # the provider retries what got no 2xx
        db = crash.Db(loop, place)
        try:
            rows = db.rows(select(EventRow.provider_event_id))
        finally:
            db.close()
        stored = [event_id for (event_id,) in rows]
        assert sorted(stored) == sorted(answered + unanswered), "each exactly once"
    finally:
        service.stop()
        crash.cleanup()
        loop.close()
