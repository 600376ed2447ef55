"""POST /api/v1/hooks/dsn: a bounce report as raw message/rfc822, for MTAs that post rather than
pipe. Answers 200 only once the events are committed (the request session commits before the
response is sent); a body that is not a report is a 422 and changes nothing."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.delivery.vocabulary import tally
from app.deps import AdminUser, SessionDep
from app.errors import Invalid, PayloadTooLarge
from app.events.bounces.deps import BouncesDep
from app.events.bounces.dsn import MAX_REPORT_BYTES, NotAReport, parse
from app.events.bounces.schemas import IngestedOut
from app.events.bounces.service import record_report

router = APIRouter(prefix="/api/v1/hooks", tags=["events"])

RAW_MESSAGE = {
    "requestBody": {
        "required": True,
        "content": {"message/rfc822": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.post("/dsn", openapi_extra=RAW_MESSAGE)
async def post_dsn(
    request: Request, _: AdminUser, session: SessionDep, bounces: BouncesDep
) -> IngestedOut:
    """Record an RFC 3464 delivery status notification or an RFC 5965 complaint (at most 1 MiB).
    A report Postroom cannot match to a message is stored as `unknown`; posting the same report
    again stores nothing new."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_REPORT_BYTES:
            raise PayloadTooLarge(f"a report is at most {MAX_REPORT_BYTES} bytes")
    try:
        report = parse(bytes(raw))
    except NotAReport as err:
        raise Invalid(str(err), field="body") from err
    done = await record_report(session, bounces.verp, report)
    bounces.metrics.count_events(tally(done.events))
    return IngestedOut.of(done)
