"""The error tree of the service (app/handlers.py renders every error as JSON).

Every error answer has the shape {"error": {"code": str, "message": str, "details": [...]}};
a detail names its field by the camelCase path of the request body ("settings.port").
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel


class AppError(Exception):
    """Base of every error the API answers with; subclasses set the status and code."""

    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        details: Sequence[dict[str, Any]] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details)
        self.headers = headers


class BadRequest(AppError):
    pass


class Unauthorized(AppError):
    status_code = 401
    code = "unauthorized"


class Forbidden(AppError):
    status_code = 403
    code = "forbidden"


class NotFound(AppError):
    status_code = 404
    code = "not_found"


class Conflict(AppError):
    status_code = 409
    code = "conflict"


class Gone(AppError):
    """What was asked for existed and was removed for good (a message body the retention purge
    removed, say)."""

    status_code = 410
    code = "gone"


class PayloadTooLarge(AppError):
    status_code = 413
    code = "payload_too_large"


class Invalid(AppError):
    """The request is well-formed but breaks a rule; `field` names what to fix."""

    status_code = 422
    code = "validation_error"

    def __init__(self, message: str, *, field: str | None = None, **kwargs: Any) -> None:
        if field is not None and "details" not in kwargs:
            kwargs["details"] = [{"field": field, "message": message}]
        super().__init__(message, **kwargs)


class TooManyRequests(AppError):
    status_code = 429
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after))})
        self.retry_after = retry_after


class ErrorDetail(BaseModel):
    field: str
    message: str
    type: str | None = None


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail]


class ErrorBody(BaseModel):
    """The body of every error answer, for the OpenAPI document."""

    error: ErrorInfo


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in [
        (400, "Malformed request"),
        (401, "Missing or invalid credentials"),
        (403, "The caller's role does not allow this"),
        (404, "No such resource"),
        (409, "Conflicts with the current state (a name taken, a profile in use, ...)"),
        (413, "The request body is over POSTROOM_MAX_MESSAGE_BYTES"),
        (422, "Validation error: each detail names its field"),
        (429, "Too many requests (failed logins, sends, test mails): see Retry-After"),
    ]
}
"""For FastAPI(responses=...): the error shape in the OpenAPI document (not HTTPValidationError)."""


def error_body(code: str, message: str, details: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": list(details)}}


def field_path(loc: Sequence[str | int]) -> str:
    """('body', 'settings', 'port') -> 'settings.port'; list indexes as [0]."""
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-after", "function-before", "function-wrap")):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


class FieldsError(ValueError):
    """Raised by a validator to name the fields at fault (camelCase, relative to its model), when
    they are not the one pydantic would name: both fields of a conflicting pair, say."""

    def __init__(self, message: str, *fields: str) -> None:
        super().__init__(message)
        self.fields = fields


def validation_details(
    errors: Sequence[Any], union_tags: Collection[str] = ()
) -> list[dict[str, Any]]:
    """Pydantic errors without their `input` (it may hold a password) or internals.

    `union_tags`: the tags of the discriminated unions the errors may come from (the profile
    types, app.servers.schemas.PROFILE_TYPES, which this module cannot import): pydantic puts
    the tag in an error's path, where the body has no such field, so it is left out."""
    details = []
    for err in errors:
        loc = tuple(err.get("loc", ()))
        tag = next((i for i, part in enumerate(loc[:2]) if part in union_tags), None)
        if tag is not None and len(loc) > tag + 1:
            loc = loc[:tag] + loc[tag + 1 :]
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, FieldsError) and cause.fields:
            parent = loc[:-1] if loc and loc[-1] in cause.fields else loc
            locs = [(*parent, name) for name in cause.fields]
        else:
            locs = [loc]
        for where in locs:
            field = field_path(where) or "body"
            if err.get("type") in ("union_tag_invalid", "union_tag_not_found"):
                field = f"{field}.type" if field != "body" else "type"
            details.append({"field": field, "message": message, "type": err.get("type")})
    return details


def invalid_body(errors: Sequence[Any], union_tags: Collection[str] = ()) -> dict[str, Any]:
    """The 422 body for pydantic errors (`union_tags`: see `validation_details`)."""
    details = validation_details(errors, union_tags)
    fields = ", ".join(dict.fromkeys(d["field"] for d in details))
    return error_body("validation_error", f"invalid request: {fields}", details)
