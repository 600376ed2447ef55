"""POST /servers/{name}/test and /verify: try a profile now, with unsaved changes if given."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import Field

from app.db import transaction
from app.delivery import probe
from app.delivery.deps import ProbingDep
from app.delivery.probe import TestOutcome, VerifyOutcome
from app.delivery.vocabulary import tally
from app.deps import AdminUser, SessionsDep, client_address
from app.schemas import CamelModel, EmailAddress

router = APIRouter(prefix="/api/v1/servers", tags=["servers"])


class ProbeBody(CamelModel):
    changes: dict[str, Any] = Field(default_factory=dict)
    """Unsaved changes, as a merge patch onto the stored profile (secrets it omits are kept)."""


class TestBody(ProbeBody):
    to: EmailAddress | None = None
    """Default: the profile's sender."""


# Neither endpoint holds a database session while it talks to the server: the profile is read in
# a session of its own that is closed before any I/O (a verify whose AUTH never answers must not
# keep the dispatcher, or anyone, from the database).


@router.post("/{name}/test", response_model=TestOutcome)
async def test_server(
    name: str,
    body: TestBody,
    admin: AdminUser,
    request: Request,
    sessions: SessionsDep,
    probing: ProbingDep,
) -> TestOutcome:
    """Send the test mail now, not queued; at most a few a minute per profile (all replicas
    together). `to` defaults to the profile's sender, else the branding sender. The mail is kept
    in the sending records (`record`), sent or not."""
    async with sessions() as session:
        found = await probe.candidate(session, probing.profiles, name, body.changes)
        to = await probe.test_recipient(session, found, body.to)
    await probing.throttle.hit(name)
    test = await probe.send_test(found, to, probing.context)
    async with transaction(sessions) as session:
        events = await probe.record_test(
            session,
            probing.ledger,
            found,
            test,
            by=admin.name,
            client_ip=client_address(request),
        )
    probing.metrics.count_events(tally(events))
    return test


@router.post("/{name}/verify", response_model=VerifyOutcome)
async def verify_server(
    name: str, body: ProbeBody, _: AdminUser, sessions: SessionsDep, probing: ProbingDep
) -> VerifyOutcome:
    """Connect, greet, EHLO, TLS, AUTH and quit (or check an API's credentials): nothing is sent.
    Each DKIM key's DNS record is looked up too (`dkim`)."""
    async with sessions() as session:
        found = await probe.candidate(session, probing.profiles, name, body.changes)
    return await probe.verify(found, probing.context, probing.resolver)
