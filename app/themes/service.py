"""Templates and themes: storing them (every source must compile in the sandbox), and rendering
a template with a sender's data."""

from __future__ import annotations

import copy
import re
from typing import Any, TypeVar

from markupsafe import Markup
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.db import utcnow
from app.errors import Conflict, Invalid, NotFound
from app.identity import Actor
from app.servers.models import ServerProfile
from app.themes.models import Template, Theme
from app.themes.render import Layout, RenderError, compile_source, dress, render, variables
from app.themes.schemas import RenderIn, RenderOut, TemplateIn, ThemeIn

PARTS = ("subject", "text", "html")
NAME = re.compile(r"[A-Za-z0-9_]{1,50}")
Row = TypeVar("Row", Template, Theme)


def invalid(err: RenderError, *, field: str, data_field: str | None = None) -> Invalid:
    """A render problem as a 422. A missing variable names `data_field.<variable>`; anything
    else names `field` (the part at save time, the template at send time)."""
    detail: dict[str, Any] = {"field": field, "message": str(err)}
    if err.line is not None:
        detail["line"] = err.line
    if err.problem == "missing" and data_field is not None:
        if err.variable is not None:
            detail["field"] = f"{data_field}.{err.variable}"
            detail["message"] = f"missing template variable {err.variable!r} ({err.part}"
            detail["message"] += f", line {err.line})" if err.line else ")"
        else:
            detail["field"] = data_field
        detail["variable"] = err.variable
    return Invalid(detail["message"], details=[detail])


async def _get(session: AsyncSession, model: type[Row], name: str) -> Row | None:
    if not NAME.fullmatch(name):  # a name nothing can have is not looked up (NUL breaks PostgreSQL)
        return None
    row: Row | None = await session.scalar(select(model).where(model.name == name))
    return row


async def _store(session: AsyncSession, row: Template | Theme, what: str) -> None:
    session.add(row)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError as err:
        raise Conflict(f"a {what} named {row.name!r} already exists") from err


def _merged(current: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """A merge patch over the stored fields: the keys given replace, `null` resets one."""
    merged = {key: value for key, value in current.items() if value is not None}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _keep_name(name: str, body_name: str | None, what: str) -> None:
    if body_name is not None and body_name != name:
        raise Invalid(f"a {what} cannot be renamed: create a new one", field="name")


# Templates


def check_template(body: TemplateIn) -> None:
    """Every part must compile (html with autoescape): a 422 names the part and the line."""
    for part in PARTS:
        source = getattr(body, part)
        if source is not None:
            try:
                compile_source(source, html=part == "html", part=part)
            except RenderError as err:
                raise invalid(err, field=part) from err


def _apply_template(template: Template, body: TemplateIn) -> None:
    check_template(body)
    template.description = body.description
    template.subject = body.subject
    template.text = body.text
    template.html = body.html
    template.updated_at = utcnow()


async def list_templates(session: AsyncSession) -> list[Template]:
    return list(await session.scalars(select(Template).order_by(Template.name)))


async def get_template(session: AsyncSession, name: str) -> Template:
    template = await _get(session, Template, name)
    if template is None:
        raise NotFound(f"no template {name!r}")
    return template


def _template_fields(template: Template) -> dict[str, Any]:
    return {"description": template.description} | {p: getattr(template, p) for p in PARTS}


async def create_template(session: AsyncSession, body: TemplateIn, actor: Actor) -> Template:
    if body.name is None:
        raise Invalid("name is required", field="name")
    template = Template(name=body.name)
    _apply_template(template, body)
    template.created_at = template.updated_at
    await _store(session, template, "template")
    what = audit.changes(None, _template_fields(template))
    await audit.record(session, actor, "template.create", template.name, what)
    return template


async def replace_template(
    session: AsyncSession, name: str, body: TemplateIn, actor: Actor
) -> Template:
    template = await get_template(session, name)
    _keep_name(name, body.name, "template")
    before = _template_fields(template)
    _apply_template(template, body)
    what = audit.changes(before, _template_fields(template))
    await audit.record(session, actor, "template.update", name, what)
    return template


async def patch_template(
    session: AsyncSession, name: str, patch: dict[str, Any], actor: Actor
) -> Template:
    template = await get_template(session, name)
    _keep_name(name, patch.get("name"), "template")
    current = {part: getattr(template, part) for part in PARTS}
    current["description"] = template.description
    body = TemplateIn.model_validate({**_merged(current, patch), "name": name})
    return await replace_template(session, name, body, actor)


async def delete_template(session: AsyncSession, name: str, actor: Actor) -> None:
    """Sent messages keep the template's name in their record; queued ones are already rendered."""
    template = await get_template(session, name)
    await session.delete(template)
    what = audit.changes(_template_fields(template), None)
    await audit.record(session, actor, "template.delete", name, what)


async def find_template(session: AsyncSession, name: str) -> Template:
    """The template a message names; a 422 on `template` when there is none."""
    template = await _get(session, Template, name)
    if template is None:
        raise Invalid(f"no template {name!r}", field="template")
    return template


def render_template(
    template: Template,
    data: dict[str, Any],
    *,
    limit: int,
    skip: frozenset[str] = frozenset(),
    data_field: str = "data",
) -> dict[str, str]:
    """The template's parts rendered with `data`, but not those in `skip` (the message gives them).

    A missing variable is a 422 naming `<data_field>.<variable>`; a subject that renders with a
    line break is a 422 on `data_field` (it would break the header)."""
    out: dict[str, str] = {}
    for part in PARTS:
        source = getattr(template, part)
        if source is None or part in skip:
            continue
        try:
            out[part] = render(source, data, html=part == "html", part=part, limit=limit)
        except RenderError as err:
            raise invalid(err, field="template", data_field=data_field) from err
    if "subject" in out:
        subject = out["subject"].strip()
        if any(ch in subject for ch in "\r\n\0") or len(subject) > 998:
            raise Invalid(
                "the rendered subject has a line break or NUL, or is over 998 characters",
                field=data_field,
            )
        out["subject"] = subject
    return out


def draft_template(body: TemplateIn) -> Template:
    """An unsaved template, checked as saving it would be: the console previews an edit."""
    template = Template(name=body.name or "draft")
    _apply_template(template, body)
    return template


async def preview(session: AsyncSession, name: str, body: RenderIn, limit: int) -> RenderOut:
    """Render a template as a message would carry it (wrapped in `theme` when given)."""
    return await preview_of(session, await get_template(session, name), body, limit)


async def preview_of(
    session: AsyncSession, template: Template, body: RenderIn, limit: int
) -> RenderOut:
    """`preview` of a template given as a row, stored or a draft."""
    layout = layout_of(await find_theme(session, body.theme)) if body.theme else None
    parts = render_template(template, body.data, limit=limit)
    subject = parts.get("subject", "")
    try:
        text, html = dress(
            subject=subject, text=parts.get("text"), html=parts.get("html"), layout=layout
        )
    except RenderError as err:
        raise invalid(err, field="theme") from err
    return RenderOut(subject=parts.get("subject"), text=text, html=html)


# Themes


def layout_of(theme: Theme) -> Layout:
    return Layout(
        name=theme.name,
        html=theme.html,
        text=theme.text,
        logo_url=theme.logo_url,
        colors=dict(theme.colors or {}),
        footer=theme.footer,
    )


def check_theme(body: ThemeIn) -> None:
    """Each layout must compile, have a `{{ content }}` slot, and render with the theme's own data
    (so a colour it uses but does not define is a 422 now, not a failed send later)."""
    layout = Layout(
        name=body.name or "",
        html=body.html,
        text=body.text,
        logo_url=body.logo_url,
        colors=body.colors,
        footer=body.footer,
    )
    for part, source in (("html", body.html), ("text", body.text)):
        if source is None:
            continue
        is_html = part == "html"
        try:
            if "content" not in variables(source, html=is_html, part=part):
                raise Invalid("the layout has no {{ content }} slot", field=part)
            sample = Markup("<p>Content</p>") if is_html else "Content"
            render(source, layout.context(sample, "Subject"), html=is_html, part=part)
        except RenderError as err:
            raise invalid(err, field=part) from err


def _apply_theme(theme: Theme, body: ThemeIn) -> None:
    check_theme(body)
    theme.description = body.description
    theme.html = body.html
    theme.text = body.text
    theme.logo_url = body.logo_url
    theme.colors = dict(body.colors)
    theme.footer = body.footer
    theme.updated_at = utcnow()


async def list_themes(session: AsyncSession) -> list[Theme]:
    return list(await session.scalars(select(Theme).order_by(Theme.name)))


async def get_theme(session: AsyncSession, name: str) -> Theme:
    theme = await _get(session, Theme, name)
    if theme is None:
        raise NotFound(f"no theme {name!r}")
    return theme


def _theme_fields(theme: Theme) -> dict[str, Any]:
    """The theme as the API names its fields (what a patch merges onto, what the audit logs)."""
    return {
        "description": theme.description,
        "html": theme.html,
        "text": theme.text,
        "logoUrl": theme.logo_url,
        "colors": theme.colors,
        "footer": theme.footer,
    }


async def create_theme(session: AsyncSession, body: ThemeIn, actor: Actor) -> Theme:
    if body.name is None:
        raise Invalid("name is required", field="name")
    theme = Theme(name=body.name)
    _apply_theme(theme, body)
    theme.created_at = theme.updated_at
    await _store(session, theme, "theme")
    await audit.record(
        session, actor, "theme.create", theme.name, audit.changes(None, _theme_fields(theme))
    )
    return theme


async def replace_theme(session: AsyncSession, name: str, body: ThemeIn, actor: Actor) -> Theme:
    theme = await get_theme(session, name)
    _keep_name(name, body.name, "theme")
    before = _theme_fields(theme)
    _apply_theme(theme, body)
    await audit.record(
        session, actor, "theme.update", name, audit.changes(before, _theme_fields(theme))
    )
    return theme


async def patch_theme(
    session: AsyncSession, name: str, patch: dict[str, Any], actor: Actor
) -> Theme:
    theme = await get_theme(session, name)
    _keep_name(name, patch.get("name"), "theme")
    body = ThemeIn.model_validate({**_merged(_theme_fields(theme), patch), "name": name})
    return await replace_theme(session, name, body, actor)


async def delete_theme(session: AsyncSession, name: str, actor: Actor) -> None:
    """A theme a profile uses cannot go: change those profiles first (409 names them)."""
    theme = await get_theme(session, name)
    users = list(
        await session.scalars(
            select(ServerProfile.name)
            .where(ServerProfile.theme == name)
            .order_by(ServerProfile.name)
        )
    )
    if users:
        raise Conflict(f"theme {name!r} is used by the server profiles {', '.join(users)}")
    await session.delete(theme)
    await audit.record(
        session, actor, "theme.delete", name, audit.changes(_theme_fields(theme), None)
    )


async def find_theme(session: AsyncSession, name: str) -> Theme:
    """The theme a message names; a 422 on `theme` when there is none."""
    theme = await _get(session, Theme, name)
    if theme is None:
        raise Invalid(f"no theme {name!r}", field="theme")
    return theme
