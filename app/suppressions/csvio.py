"""The suppression list as CSV: an export streamed a page at a time, and an import that is checked
whole before anything is stored (a bad row is a 422 naming its row and column; nothing is half
imported). The columns are the JSON names; an export imports back as it is."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, cast

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import transaction
from app.delivery.transports import BUILTIN
from app.errors import BadRequest, Invalid
from app.schemas import EmailAddress, ProfileName
from app.servers.models import ServerProfile
from app.suppressions import service
from app.suppressions.models import REASONS, Reason
from app.suppressions.schemas import SuppressionOut

COLUMNS = ("address", "profile", "reason", "source", "eventId", "messageId", "createdAt")
IMPORTED = frozenset(COLUMNS[:3])
"""What an import reads; the other columns of an export are accepted and left out (an imported
entry's source is `import`, its time the import's)."""
PAGE = 1000
MAX_ERRORS = 50

_ADDRESS: TypeAdapter[str] = TypeAdapter(EmailAddress)
_PROFILE: TypeAdapter[str] = TypeAdapter(ProfileName)


async def export(
    sessions: async_sessionmaker[AsyncSession], where: service.Filter
) -> AsyncIterator[str]:
    """The entries `where` selects as CSV, the latest first, a page per short transaction (no
    transaction stays open while the client reads)."""
    yield _line(COLUMNS)
    cursor: str | None = None
    while True:
        async with transaction(sessions) as session:
            rows, cursor = await service.search(session, where, limit=PAGE, cursor=cursor)
        lines = []
        for row in rows:
            out = SuppressionOut.of(row).model_dump(mode="json", by_alias=True)
            lines.append(_line(tuple("" if out[c] is None else str(out[c]) for c in COLUMNS)))
        yield "".join(lines)
        if cursor is None:
            return


def _line(values: tuple[str, ...]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(values)
    return buffer.getvalue()


def csv_text(content_type: str, body: bytes) -> str:
    """The CSV of a request: a text/csv body, or the `file` field of a multipart/form-data one."""
    kind = content_type.partition(";")[0].strip().lower()
    if kind == "multipart/form-data":
        head = f"Content-Type: {content_type}\r\n\r\n".encode()
        form = BytesParser(policy=HTTP).parsebytes(head + body)
        parts = [
            part
            for part in (form.iter_parts() if form.is_multipart() else ())
            if part.get_param("name", header="content-disposition") == "file"
        ]
        if not parts:
            raise Invalid("a multipart import needs a `file` field holding the CSV", field="file")
        payload = parts[0].get_payload(decode=True)
        body = payload if isinstance(payload, bytes) else b""
    elif kind not in ("text/csv", "text/plain"):
        raise BadRequest(
            "send the CSV as a text/csv body, or as the `file` field of multipart/form-data",
            details=[{"field": "Content-Type", "message": f"{kind or 'none'} is not CSV"}],
        )
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise Invalid(f"the CSV is not UTF-8 text: {err}", field="file") from err


async def parse(session: AsyncSession, text: str) -> list[dict[str, Any]]:
    """The entries of a CSV, each checked; raises a 422 naming every bad row and column (up to
    MAX_ERRORS of them) before anything is stored."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    if "address" not in header:
        raise Invalid(
            "the CSV's first line must name its columns, `address` among them",
            field="row 1.address",
        )
    unknown = [name for name in header if name not in COLUMNS]
    if unknown:
        raise Invalid(
            f"unknown column {unknown[0]!r}; the columns are {', '.join(COLUMNS)}",
            field=f"row 1.{unknown[0]}",
        )
    errors: list[dict[str, Any]] = []
    entries: dict[tuple[str, str], dict[str, Any]] = {}
    profiles: dict[str, int] = {}
    try:
        for line, row in enumerate(reader, start=2):
            if None in row:
                errors.append(_error(line, "row", "more values than columns"))
                continue
            entry = _entry(line, row, errors, profiles)
            if entry is not None:
                entries.setdefault((entry["address"], entry["scope"]), entry)
    except csv.Error as err:
        raise Invalid(f"row {reader.line_num}: {err}", field=f"row {reader.line_num}") from err
    await _check_profiles(session, profiles, errors)
    if errors:
        first = errors[0]
        raise Invalid(
            f"{len(errors)} bad row{'s' if len(errors) > 1 else ''}, nothing imported; the "
            f"first: {first['field']}: "
            f"{first['message']}",
            details=errors[:MAX_ERRORS],
        )
    return list(entries.values())


def _error(line: int, column: str, message: str) -> dict[str, Any]:
    return {"field": f"row {line}.{column}", "message": message}


def _entry(
    line: int, row: dict[str, str], errors: list[dict[str, Any]], profiles: dict[str, int]
) -> dict[str, Any] | None:
    fault = len(errors)
    try:
        address = _ADDRESS.validate_python((row.get("address") or "").strip())
    except ValidationError as err:
        errors.append(_error(line, "address", err.errors()[0]["msg"].removeprefix("Value error, ")))
    profile = (row.get("profile") or "").strip() or None
    if profile is not None:
        try:
            _PROFILE.validate_python(profile)
        except ValidationError:
            errors.append(_error(line, "profile", "a profile name is 1-50 of A-Z a-z 0-9 _"))
        else:
            profiles.setdefault(profile, line)
    reason = (row.get("reason") or "").strip() or "manual"
    if reason not in REASONS:
        errors.append(_error(line, "reason", f"must be one of {', '.join(REASONS)}"))
    if len(errors) > fault:
        return None
    return service.import_row(address, profile, cast(Reason, reason))


async def _check_profiles(
    session: AsyncSession, profiles: dict[str, int], errors: list[dict[str, Any]]
) -> None:
    named = set(profiles) - {BUILTIN}
    if not named:
        return
    query = select(ServerProfile.name).where(ServerProfile.name.in_(sorted(named)))
    missing = named - set(await session.scalars(query))
    errors += [_error(profiles[name], "profile", f"no server profile {name!r}") for name in missing]
    errors.sort(key=lambda e: int(e["field"].split()[1].split(".")[0]))
