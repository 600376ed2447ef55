"""The base for every model at the API's edge: camelCase on the wire, unknown fields refused."""

from __future__ import annotations

import re
from typing import Annotated

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, ConfigDict, Strict
from pydantic.alias_generators import to_camel


class CamelModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        str_strip_whitespace=False,
    )


_CONTROL = re.compile("[\r\n\0]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _no_control(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain CR, LF or NUL")
    if _SURROGATE.search(value):
        raise ValueError("must not contain unpaired surrogates")
    return value


SafeStr = Annotated[str, AfterValidator(_no_control)]
"""A string that can go into a header or an SMTP command: no CR, LF or NUL."""


def _email(value: str) -> str:
    _no_control(value)
    try:
        result = validate_email(value, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as err:
        raise ValueError(str(err)) from err
    return result.normalized


EmailAddress = Annotated[str, AfterValidator(_email)]
"""An address email-validator accepts (`#` and `&` are fine in the local part), normalised."""


Integer = Annotated[int, Strict()]
"""An integer in the body: JSON true/false or "25" are refused, not read as 1/0 or 25."""
