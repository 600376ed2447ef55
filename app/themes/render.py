"""Rendering with jinja2's sandbox: templates at enqueue, theme layouts and signatures at compose.

The environment is sandboxed and immutable (no attribute starting with `_`, no changing lists or
dicts), StrictUndefined (a missing variable is an error, not an empty string), and autoescapes
only what becomes html. A source compiles once: compiled templates are cached by the SHA-256 of
their source, so rendering a stored template or theme again costs only the render. Every problem
is a RenderError naming the part and, when known, the line and the missing variable; the API turns
it into a 422, the dispatcher into a permanent failure of the batch.
"""

from __future__ import annotations

import hashlib
import html as html_lib
import traceback
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache, partial
from typing import Any, Literal

from jinja2 import StrictUndefined, Template, TemplateError, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing
from markupsafe import Markup

from app.themes.plaintext import html_to_text

Problem = Literal["syntax", "sandbox", "missing", "failed", "too_large"]

CACHE_SIZE = 256
MAX_OUTPUT = 20_000_000
"""Characters one render may produce unless the caller sets a lower limit."""
MAX_REPEAT = 1_000_000
"""The longest string or list `*` may build in a template."""
MAX_EXPONENT = 100


class RenderError(Exception):
    """A source that does not compile, or a render that failed; `part` is subject, text or html."""

    def __init__(
        self,
        message: str,
        *,
        part: str,
        problem: Problem,
        line: int | None = None,
        variable: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.part = part
        self.problem = problem
        self.line = line
        self.variable = variable
        """The missing top-level variable, when that is the problem."""

    def __str__(self) -> str:
        where = f"{self.part}, line {self.line}" if self.line else self.part
        return f"{where}: {self.message}"


class MissingVariable(UndefinedError):
    def __init__(self, message: str | None = None, *, name: Any = None, top: bool = False) -> None:
        super().__init__(message)
        self.name = name if top and isinstance(name, str) else None


class _Strict(StrictUndefined):
    """StrictUndefined whose error says which variable was missing."""

    __slots__ = ()

    def __init__(
        self,
        hint: str | None = None,
        obj: Any = missing,
        name: str | None = None,
        exc: type[Any] = UndefinedError,
    ) -> None:
        if exc is UndefinedError:
            exc = partial(MissingVariable, name=name, top=obj is missing)  # type: ignore[assignment]
        super().__init__(hint, obj, name, exc)


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox, also refusing `*` and `**` that would build huge values."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"exponents above {MAX_EXPONENT} are not allowed")
        if operator == "*":
            for value, times in ((left, right), (right, left)):
                if (
                    isinstance(value, str | list | tuple)
                    and isinstance(times, int)
                    and len(value) * times > MAX_REPEAT
                ):
                    raise SecurityError(f"`*` may build at most {MAX_REPEAT} items")
        return super().call_binop(context, operator, left, right)


@cache
def _environment(html: bool) -> _Sandbox:
    return _Sandbox(autoescape=html, undefined=_Strict)


_compiled: OrderedDict[tuple[bytes, bool], Template] = OrderedDict()


def _parse(source: str, *, html: bool, part: str) -> nodes.Template:
    try:
        tree = _environment(html).parse(source)
    except TemplateSyntaxError as err:
        raise RenderError(
            err.message or "syntax error", part=part, problem="syntax", line=err.lineno
        ) from err
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        name: object = None
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            name = node.arg.value
        if isinstance(name, str) and name.startswith("_"):
            raise RenderError(
                f"refused by the sandbox: {name!r} is not accessible",
                part=part,
                problem="sandbox",
                line=node.lineno,
            )
    return tree


def compile_source(source: str, *, html: bool, part: str) -> Template:
    """The compiled template for `source` (html: autoescaped), from the cache when it is there."""
    key = (hashlib.sha256(source.encode()).digest(), html)
    template = _compiled.get(key)
    if template is not None:
        _compiled.move_to_end(key)
        return template
    tree = _parse(source, html=html, part=part)
    try:
        template = _environment(html).from_string(tree)
    except TemplateSyntaxError as err:
        raise RenderError(
            err.message or "syntax error", part=part, problem="syntax", line=err.lineno
        ) from err
    _compiled[key] = template
    if len(_compiled) > CACHE_SIZE:
        _compiled.popitem(last=False)
    return template


def variables(source: str, *, html: bool, part: str) -> set[str]:
    """The variables `source` takes from its context."""
    return meta.find_undeclared_variables(_parse(source, html=html, part=part))


def _line(err: BaseException) -> int | None:
    frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename == "<template>"]
    return frames[-1].lineno if frames else None


def render(
    source: str,
    context: Mapping[str, Any],
    *,
    html: bool,
    part: str,
    limit: int = MAX_OUTPUT,
) -> str:
    """Render `source` with `context`; at most `limit` characters come out."""
    template = compile_source(source, html=html, part=part)
    out: list[str] = []
    size = 0
    try:
        for chunk in template.generate(context):
            size += len(chunk)
            if size > limit:
                raise RenderError(
                    f"renders more than {limit} characters", part=part, problem="too_large"
                )
            out.append(chunk)
    except MissingVariable as err:
        raise RenderError(
            str(err.message), part=part, problem="missing", line=_line(err), variable=err.name
        ) from err
    except SecurityError as err:
        raise RenderError(
            f"refused by the sandbox: {err.message}", part=part, problem="sandbox", line=_line(err)
        ) from err
    except (TemplateError, ArithmeticError, LookupError, TypeError, ValueError) as err:
        raise RenderError(str(err), part=part, problem="failed", line=_line(err)) from err
    except RecursionError as err:
        raise RenderError("too deep a recursion", part=part, problem="failed") from err
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Layout:
    """A theme as compose needs it: layouts with a `content` slot, and the data they may use."""

    name: str
    html: str
    text: str | None = None
    logo_url: str | None = None
    colors: Mapping[str, str] = field(default_factory=dict)
    footer: str | None = None

    def context(self, content: str, subject: str) -> dict[str, Any]:
        """What a layout sees: the body (html: marked safe), the subject and the theme's data."""
        return {
            "content": content,
            "subject": subject,
            "logoUrl": self.logo_url or "",
            "colors": dict(self.colors),
            "footer": self.footer or "",
        }


def sign(text: str | None, html: str | None, signature: str) -> tuple[str | None, str | None]:
    """The signature after the text body ("-- " line first) and, escaped, at the end of the html
    body (before </body> when there is one)."""
    signature = signature.replace("\r\n", "\n").removeprefix("-- \n").strip("\n")
    if not signature:
        return text, html
    if text is not None:
        text = f"{text.rstrip(chr(10))}\n-- \n{signature}"
    if html is not None:
        block = '<p class="signature">{}</p>'.format(
            "<br>\n".join(html_lib.escape(line) for line in signature.split("\n"))
        )
        end = html.lower().rfind("</body>")
        html = f"{html[:end]}{block}\n{html[end:]}" if end >= 0 else f"{html}\n{block}"
    return text, html


def dress(
    *,
    subject: str,
    text: str | None,
    html: str | None,
    layout: Layout | None = None,
    signature: str | None = None,
) -> tuple[str | None, str | None]:
    """The bodies as they go out: a text part generated when there is only html, the signature
    appended, then the theme's layouts around them (the text layout only when the theme has one;
    no html part is invented for a text-only message)."""
    if text is None and html is not None:
        text = html_to_text(html)
    if signature:
        text, html = sign(text, html, signature)
    if layout is not None:
        if html is not None:
            html = render(
                layout.html, layout.context(Markup(html), subject), html=True, part="html"
            )
        if text is not None and layout.text is not None:
            text = render(layout.text, layout.context(text, subject), html=False, part="text")
    return text, html
