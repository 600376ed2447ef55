"""A readable text part from an html body (for messages that give only html), with the stdlib's
html.parser: paragraphs and line breaks kept, links kept as "text (url)", scripts and styles
dropped."""

from __future__ import annotations

import re
from html.parser import HTMLParser

_BLOCKS = frozenset(
    {
        "address", "article", "aside", "blockquote", "dd", "div", "dl", "dt", "figure", "footer",
        "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "main", "nav", "ol", "p", "pre",
        "section", "table", "ul",
    }
)  # fmt: skip
_LINES = frozenset({"br", "tr", "li"})
_HIDDEN = frozenset({"head", "script", "style", "template", "title", "noscript"})


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.hidden = 0
        self.pre = 0
        self.links: list[tuple[str, int]] = []

    def _at_line_start(self) -> bool:
        return not self.out or self.out[-1].endswith("\n")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN:
            self.hidden += 1
        elif self.hidden:
            return
        elif tag in _BLOCKS:
            self.out.append("\n\n")
        elif tag in _LINES:
            self.out.append("\n")
            if tag == "li":
                self.out.append("- ")
        elif tag == "hr":
            self.out.append("\n\n----\n\n")
        elif tag in ("td", "th") and not self._at_line_start():
            self.out.append(" ")
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self.out.append(alt)
        elif tag == "a":
            self.links.append(((dict(attrs).get("href") or "").strip(), len(self.out)))
        if tag == "pre":
            self.pre += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif self.hidden:
            return
        elif tag in _BLOCKS:
            self.out.append("\n\n")
        elif tag == "a" and self.links:
            href, start = self.links.pop()
            label = "".join(self.out[start:]).strip()
            if href and not href.startswith("#") and href not in (label, f"mailto:{label}"):
                self.out.append(f" ({href})" if label else href)
        if tag == "pre":
            self.pre = max(0, self.pre - 1)

    def handle_data(self, data: str) -> None:
        if self.hidden:
            return
        if not self.pre:
            data = re.sub(r"\s+", " ", data)
            if self._at_line_start():
                data = data.lstrip(" ")
        if data:
            self.out.append(data)


def html_to_text(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    parser.close()
    text = re.sub(r"[ \t]+\n", "\n", "".join(parser.out))
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n ")
