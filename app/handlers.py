"""The one handler: every error the app meets rendered as {"error": {"code", "message", "details"}}.

Apart from the error tree (app/errors.py) so that what raises those errors (the transports, the
CLI) loads no web framework."""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError
from sqlalchemy.exc import StatementError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from app.errors import AppError, error_body, invalid_body

log = logging.getLogger("postroom")


def error_response(
    status: int,
    code: str,
    message: str,
    details: Sequence[dict[str, Any]] = (),
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=status, headers=headers)


async def _app_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return error_response(exc.status_code, exc.code, exc.message, exc.details, exc.headers)


def _invalid(errors: Sequence[Any], union_tags: Collection[str]) -> JSONResponse:
    return JSONResponse(invalid_body(errors, union_tags), status_code=422)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(request: Request) -> str:
    """The methods served at this path (Starlette's 405 names only the first route's).

    Read from the OpenAPI document: when templates with fewer parameters match too
    (`/messages/batch` and `/messages/{message_id}`), only theirs count, the literal path being
    the resource the client named."""
    path = request.url.path
    candidates: list[tuple[int, set[str]]] = []
    for template, operations in request.app.openapi().get("paths", {}).items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            candidates.append((template.count("{"), {m.upper() for m in operations}))
    fewest = min((count for count, _ in candidates), default=0)
    methods = set().union(*(ops for count, ops in candidates if count == fewest))
    return ", ".join(method for method in _METHODS if method in methods)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code == 405 and (allowed := allowed_methods(request)):
        headers = {**(headers or {}), "Allow": allowed}
    codes = {
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
    }
    return error_response(
        exc.status_code,
        codes.get(exc.status_code, "http_error"),
        str(exc.detail),
        headers=headers,
    )


def unstorable_text(exc: BaseException) -> bool:
    """True when `exc` comes from text that is valid JSON but that no database keeps: an unpaired
    surrogate (a "\\ud800" escape) anywhere, or a NUL character in PostgreSQL."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if "surrogates not allowed" in str(current):
            return True
        if getattr(current, "sqlstate", None) == "22021":  # character_not_in_repertoire
            return True
        current = current.__cause__ or current.__context__ or getattr(current, "orig", None)
    return False


async def _unstorable(_: Request, exc: Exception) -> JSONResponse:
    if not unstorable_text(exc):
        raise exc
    return error_response(
        400,
        "invalid_text",
        "the request holds text that cannot be stored: a NUL character or an unpaired surrogate",
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI, *, union_tags: Collection[str] = ()) -> None:
    """`union_tags`: see `validation_details`."""
    tags = frozenset(union_tags)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        if any(err.get("type") == "json_invalid" for err in errors):
            return error_response(400, "malformed_json", "the request body is not valid JSON")
        return _invalid(errors, tags)

    async def model_error(_: Request, exc: Exception) -> JSONResponse:
        """A model validated by a service (a merged PATCH, say) rather than by FastAPI."""
        assert isinstance(exc, ValidationError)
        return _invalid(exc.errors(), tags)

    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ValidationError, model_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for unstorable in (UnicodeEncodeError, StatementError, PydanticSerializationError):
        app.add_exception_handler(unstorable, _unstorable)
    app.add_exception_handler(Exception, _unexpected)
