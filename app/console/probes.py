"""Verify and test on the edit page, with the form's unsaved values: the API's merge of unsaved
changes onto the stored profile (app.delivery.probe), no database session held while probing."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from app.console import forms
from app.console.deps import Parts, PartsDep
from app.console.servers import page, posted_values
from app.console.web import (
    PREFIX,
    CheckedForm,
    ConsoleAdmin,
    ConsoleRoute,
    problems,
    render,
    status_of,
)
from app.db import transaction
from app.delivery import probe
from app.delivery.vocabulary import tally
from app.deps import client_address
from app.errors import AppError
from app.identity import Principal
from app.servers import service

router = APIRouter(prefix=f"{PREFIX}/servers", route_class=ConsoleRoute, include_in_schema=False)


async def _run(
    request: Request,
    name: str,
    admin: Principal,
    form: CheckedForm,
    parts: Parts,
    action: str,
) -> Response:
    async with parts.sessions() as session:
        stored = service.to_out(
            await service.get_profile(session, name),
            await service.get_routing(session),
            parts.profiles.box,
        )
    body, paths = await forms.read(form.data, stored.type)
    report = test = None
    error: tuple[str, dict[str, str]] | None = None
    status = 200
    try:
        async with parts.sessions() as session:
            found = await probe.candidate(
                session, parts.profiles, name, forms.as_patch(body, paths)
            )
            to = (
                await probe.test_recipient(session, found, form.text("to") or None)
                if action == "test"
                else None
            )
        if to is not None:
            await parts.probing.throttle.hit(name)
            test = await probe.send_test(found, to, parts.probing.context)
            async with transaction(parts.sessions) as session:
                events = await probe.record_test(
                    session,
                    parts.probing.ledger,
                    found,
                    test,
                    by=admin.name,
                    client_ip=client_address(request),
                )
            parts.probing.metrics.count_events(tally(events))
        else:
            report = await probe.verify(found, parts.probing.context, parts.probing.resolver)
    except (AppError, ValidationError) as err:
        error, status = problems(err), status_of(err)
    if request.headers.get("hx-request"):
        return render(
            request,
            "_probe.html",
            report=report,
            test=test,
            form_error=error[0] if error else None,
            errors=error[1] if error else {},
        )
    return await page(
        request,
        parts,
        stored.type,
        posted_values(form, stored.type),
        profile=stored,
        status=status,
        report=report,
        test=test,
        form_error=error[0] if error else None,
        errors=error[1] if error else {},
    )


@router.post("/{name}/verify")
async def verify(
    request: Request, name: str, admin: ConsoleAdmin, form: CheckedForm, parts: PartsDep
) -> Response:
    """Connect, greet, EHLO, TLS, AUTH, quit with the form as it is now: nothing is saved."""
    return await _run(request, name, admin, form, parts, "verify")


@router.post("/{name}/test")
async def test(
    request: Request, name: str, admin: ConsoleAdmin, form: CheckedForm, parts: PartsDep
) -> Response:
    """Send the test mail with the form as it is now (throttled like the API's)."""
    return await _run(request, name, admin, form, parts, "test")
