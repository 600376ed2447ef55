"""The sandboxed renderer, the theme dressing and the generated text part, without the API."""

from __future__ import annotations

import pytest
from markupsafe import Markup

from app.themes import render as rendering
from app.themes.plaintext import html_to_text
from app.themes.render import Layout, RenderError, compile_source, dress, render, sign


def test_html_is_autoescaped_and_text_is_not() -> None:
    data = {"name": "<b>Ann & co</b>"}
    assert render("<p>{{ name }}</p>", data, html=True, part="html") == (
        "<p>&lt;b&gt;Ann &amp; co&lt;/b&gt;</p>"
    )
    assert render("Hi {{ name }}", data, html=False, part="text") == "Hi <b>Ann & co</b>"
    assert render("<p>{{ name|safe }}</p>", data, html=True, part="html") == (
        "<p><b>Ann & co</b></p>"
    )


def test_a_missing_variable_is_named_with_its_line() -> None:
    with pytest.raises(RenderError) as caught:
        render("Hello\n\n{{ first }} {{ last }}", {"first": "Ann"}, html=False, part="text")
    assert caught.value.problem == "missing"
    assert caught.value.variable == "last"
    assert caught.value.line == 3
    assert caught.value.part == "text"


def test_a_missing_attribute_is_missing_but_names_no_top_level_variable() -> None:
    with pytest.raises(RenderError) as caught:
        render("{{ user.email }}", {"user": {}}, html=True, part="html")
    assert caught.value.problem == "missing"
    assert caught.value.variable is None
    assert "email" in caught.value.message


def test_defaults_and_is_defined_still_work_with_strict_undefined() -> None:
    source = "{{ nick|default('friend') }}{% if extra is defined %}!{% endif %}"
    assert render(source, {}, html=False, part="text") == "friend"
    assert render(source, {"extra": 1}, html=False, part="text") == "friend!"


def test_a_syntax_error_names_the_line() -> None:
    with pytest.raises(RenderError) as caught:
        compile_source("ok\n{{ name }}\n{% endif %}", html=True, part="html")
    assert caught.value.problem == "syntax"
    assert caught.value.line == 3
    assert str(caught.value).startswith("html, line 3:")


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__ }}",
        "{{ x['__class__'] }}",
        "{{ cycler.__init__.__globals__ }}",
    ],
)
def test_private_attributes_are_refused_when_compiling(source: str) -> None:
    with pytest.raises(RenderError) as caught:
        compile_source(source, html=False, part="text")
    assert caught.value.problem == "sandbox"
    assert caught.value.line == 1


@pytest.mark.parametrize(
    "source",
    [
        "{{ x|attr('__class__') }}",
        "{{ '{0.__class__}'.format(x) }}",
        "{{ items.append(1) }}",
        "{{ 'a' * 100000000 }}",
        "{{ 2 ** 100000 }}",
        "{{ range(10 ** 7)|list }}",
    ],
)
def test_sandbox_escapes_and_bombs_are_refused_when_rendering(source: str) -> None:
    with pytest.raises(RenderError) as caught:
        render(source, {"x": 1, "items": [1]}, html=False, part="text")
    assert caught.value.problem in ("sandbox", "failed")


def test_runtime_errors_are_render_errors() -> None:
    with pytest.raises(RenderError) as caught:
        render("{{ 1 / n }}", {"n": 0}, html=False, part="subject")
    assert caught.value.problem == "failed"
    assert caught.value.part == "subject"


def test_output_is_limited() -> None:
    source = "{% for i in range(1000) %}{{ 'x' * 100 }}{% endfor %}"
    with pytest.raises(RenderError) as caught:
        render(source, {}, html=False, part="html", limit=50_000)
    assert caught.value.problem == "too_large"


def test_compiled_templates_are_cached_by_source() -> None:
    source = "cached {{ n }}"
    first = compile_source(source, html=False, part="text")
    assert compile_source(source, html=False, part="text") is first
    assert compile_source(source, html=True, part="html") is not first
    assert compile_source("other {{ n }}", html=False, part="text") is not first
    assert len(rendering._compiled) <= rendering.CACHE_SIZE


def test_html_to_text_keeps_paragraphs_lists_and_links() -> None:
    html = """<html><head><title>T</title><style>p {color: red}</style></head><body>
      <h1>Reset your   password</h1>
      <p>Hello <b>Ann</b>,<br>click <a href="https://example.com/r?t=1&amp;u=2">here</a>.</p>
      <ul><li>one</li><li>two</li></ul>
      <p><a href="https://example.com">https://example.com</a>
         <a href="mailto:help@example.com">help@example.com</a> <a href="#top">top</a></p>
      <script>alert(1)</script>
    </body></html>"""
    assert html_to_text(html) == (
        "Reset your password\n\n"
        "Hello Ann,\nclick here (https://example.com/r?t=1&u=2).\n\n"
        "- one\n- two\n\n"
        "https://example.com help@example.com top"
    )


def test_signature_is_delimited_in_text_and_escaped_in_html() -> None:
    text, html = sign("Hello\n", "<html><body><p>Hello</p></body></html>", "Ann <ops>\nAcme & Co")
    assert text == "Hello\n-- \nAnn <ops>\nAcme & Co"
    assert html == (
        '<html><body><p>Hello</p><p class="signature">Ann &lt;ops&gt;<br>\nAcme &amp; Co</p>\n'
        "</body></html>"
    )
    assert sign("Hi", None, "-- \nAcme") == ("Hi\n-- \nAcme", None)
    assert sign(None, "<p>Hi</p>", "Acme") == (None, '<p>Hi</p>\n<p class="signature">Acme</p>')


LAYOUT = Layout(
    name="brand",
    html=(
        '<html><body style="color: {{ colors.primary }}"><img src="{{ logoUrl }}">'
        "<h1>{{ subject }}</h1>{{ content }}<footer>{{ footer }}</footer></body></html>"
    ),
    text="{{ content }}\n\n{{ footer }}",
    logo_url="https://example.com/logo.png",
    colors={"primary": "#336699"},
    footer="Acme <Inc>",
)


def test_dress_wraps_both_bodies_and_keeps_the_content_unescaped() -> None:
    text, html = dress(
        subject="Hi & bye", text="Body", html="<p>Body</p>", layout=LAYOUT, signature="Acme"
    )
    assert html == (
        '<html><body style="color: #336699"><img src="https://example.com/logo.png">'
        '<h1>Hi &amp; bye</h1><p>Body</p>\n<p class="signature">Acme</p>'
        "<footer>Acme &lt;Inc&gt;</footer></body></html>"
    )
    assert text == "Body\n-- \nAcme\n\nAcme <Inc>"


def test_dress_generates_text_from_html_only_and_invents_no_html() -> None:
    text, html = dress(subject="s", text=None, html='<p>See <a href="https://x.test">x</a></p>')
    assert (text, html) == ("See x (https://x.test)", '<p>See <a href="https://x.test">x</a></p>')
    text, html = dress(subject="s", text="Only text", html=None, layout=LAYOUT)
    assert (text, html) == ("Only text\n\nAcme <Inc>", None)


def test_a_layout_without_text_leaves_the_text_body_alone() -> None:
    layout = Layout(name="plain", html="<div>{{ content }}</div>")
    text, html = dress(subject="s", text="t", html="<b>h</b>", layout=layout)
    assert (text, html) == ("t", "<div><b>h</b></div>")
    assert isinstance(Markup("<b>h</b>"), str)
