"""HTML and SVG built from untrusted text: every value is escaped unless it is :class:`Safe`
(markup this package built), so a tenant named ``<script>`` is text wherever it lands:
element content, a quoted attribute, an SVG ``<text>`` or ``<title>``, a link's query."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from decimal import Decimal
from urllib.parse import urlencode

from cost_middleware.ops import render

#: C0 controls (but tab and newline), DEL and C1 controls: shown as ``\\xNN``, never raw
#: (XML, hence inline SVG, forbids most of them; a terminal-escape in a name stays visible).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class Safe(str):
    """Markup built here from escaped parts; inserted as it is."""

    __slots__ = ()


def esc(value: object) -> Safe:
    """``value`` as text in HTML or XML content or a double- or single-quoted attribute."""
    if isinstance(value, Safe):
        return value
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))
    return Safe(html.escape(text, quote=True))


def tag(template: str, **values: object) -> Safe:
    """``template`` (ours, with ``{name}`` fields) filled with escaped ``values``."""
    return Safe(template.format(**{name: esc(value) for name, value in values.items()}))


def join(parts: Iterable[Safe], separator: str = "") -> Safe:
    return Safe(separator.join(esc(part) for part in parts))


def href(path: str, **query: str | None) -> str:
    """A link's target (escape it with the attribute): untrusted values percent-encoded."""
    pairs = [(name, value) for name, value in query.items() if value not in (None, "")]
    return path + ("?" + urlencode(pairs) if pairs else "")


def clipped(value: str, limit: int = 60) -> str:
    """A name shortened for a cell or a label (its whole text goes in a ``title``)."""
    return value if len(value) <= limit else value[: limit - 1] + "…"


def money(value: Decimal | None) -> str:
    """Dollars for a page as the terminal report shows them; None is unknown, not $0."""
    return "unknown" if value is None else render.money(value)


def count(value: int) -> str:
    return f"{value:,}"
