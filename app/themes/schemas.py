"""Templates and themes at the API's edge."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Self

from pydantic import Field, model_validator

from app.errors import FieldsError
from app.schemas import CamelModel, ProfileName, SafeStr

MAX_SOURCE = 500_000
"""Characters in one template or layout source."""

ColorName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,39}$")]
CssColor = Annotated[
    str,
    Field(
        max_length=100,
        pattern=r"^(#[0-9A-Fa-f]{3,8}|[A-Za-z]{3,30}|(rgb|rgba|hsl|hsla)\([0-9.,%/ ]+\))$",
    ),
]
"""#rgb, #rrggbb(aa), a named colour, or rgb()/hsl() with numbers: nothing that escapes CSS."""


class TemplateIn(CamelModel):
    """A template: jinja sources for the subject, text and html (html is autoescaped)."""

    name: ProfileName | None = None
    """Required when creating; when replacing, it must match the path if given."""
    description: str = Field("", max_length=1000)
    subject: SafeStr | None = Field(None, max_length=998)
    text: str | None = Field(None, max_length=MAX_SOURCE)
    html: str | None = Field(None, max_length=MAX_SOURCE)

    @model_validator(mode="after")
    def _content(self) -> Self:
        if self.text is None and self.html is None:
            raise FieldsError("a template needs text or html", "text", "html")
        return self


class TemplateOut(CamelModel):
    name: str
    description: str
    subject: str | None
    text: str | None
    html: str | None
    created_at: datetime
    updated_at: datetime


class TemplateList(CamelModel):
    items: list[TemplateOut]


class RenderIn(CamelModel):
    data: dict[str, Any] = Field(default_factory=dict)
    """The template's variables."""
    theme: ProfileName | None = None
    """A theme to wrap the result in, to see the message as it would go out."""


class RenderOut(CamelModel):
    """What the message would carry: text is generated when the template has only html."""

    subject: str | None
    text: str | None
    html: str | None


class ThemeIn(CamelModel):
    """A layout for the html body (and optionally the text body) with a `{{ content }}` slot.

    Layouts may use `content`, `subject`, `logoUrl`, `colors` (a dict) and `footer`.
    """

    name: ProfileName | None = None
    description: str = Field("", max_length=1000)
    html: str = Field(min_length=1, max_length=MAX_SOURCE)
    text: str | None = Field(None, max_length=MAX_SOURCE)
    logo_url: SafeStr | None = Field(None, max_length=2000, pattern=r"^https?://\S+$")
    colors: dict[ColorName, CssColor] = Field(default_factory=dict, max_length=30)
    footer: str | None = Field(None, max_length=2000)


class ThemeOut(CamelModel):
    name: str
    description: str
    html: str
    text: str | None
    logo_url: str | None
    colors: dict[str, str]
    footer: str | None
    created_at: datetime
    updated_at: datetime


class ThemeList(CamelModel):
    items: list[ThemeOut]
