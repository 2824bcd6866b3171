"""Which row prices a name, and why (``prices resolve``; ``prices show`` for a name without
rows of its own).

The book does the matching (:meth:`PriceBook.lookup`); :func:`~cost_middleware.pricing.
matching.explain_match` then says which candidate reached the row it found, and how.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from cost_middleware.pricing.book import PriceBook
from cost_middleware.pricing.commands import iso, set_command
from cost_middleware.pricing.matching import Match, candidates, explain_match
from cost_middleware.pricing.price import Price, in_effect
from cost_middleware.utc import as_utc, utcnow

#: A moment after every row: the book's lookup then finds a model's newest row.
FOREVER = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Resolution:
    """What prices ``(provider, model)`` at ``at``."""

    provider: str
    model: str
    at: datetime
    #: Every ``(price provider, name)`` the book tries, best first.
    tried: tuple[tuple[str, str], ...]
    #: Every row of the model the name reaches, oldest first (empty: it reaches none).
    history: tuple[Price, ...]
    match: Match | None

    @property
    def row(self) -> Price | None:
        """The row in effect at ``at`` (None: none yet, or none at all)."""
        return in_effect(self.history, self.at)


def resolve(book: PriceBook, provider: str, model: str, at: datetime | None = None,
            ) -> Resolution:
    """Which row prices ``model`` as a record from ``provider`` would report it, at ``at``
    (default now), and through which candidate."""
    moment = utcnow() if at is None else as_utc(at)
    tried = candidates(provider, model)
    newest = book.lookup(provider, model, FOREVER)
    if newest is None:
        return Resolution(provider, model, moment, tried, (), None)
    key = (newest.provider, newest.model)
    history = tuple(sorted((p for p in book.source.load_models([key])
                            if (p.provider, p.model) == key), key=lambda p: p.effective_from))
    aliases = {alias for row in history for alias in row.aliases}
    match = explain_match(provider, model, newest.provider, newest.model, aliases)
    return Resolution(provider, model, moment, tried, history, match)


def describe(resolution: Resolution) -> list[str]:
    """``prices resolve``'s lines: the row and why, or why none, and the command to fix it."""
    name = f"{resolution.provider}/{resolution.model}"
    match, row = resolution.match, resolution.row
    if not resolution.history:
        shown = ", ".join(f"{p}/{n}" for p, n in resolution.tried[:8])
        more = len(resolution.tried) - 8
        return [f"No row prices {name}: records of it are stored unpriced.",
                f"Tried, in order: {shown or '(nothing: an empty or over-long name)'}"
                + (f" and {more} more" if more > 0 else ""),
                f"Price it: {set_command(resolution.provider, resolution.model)}"]
    first = resolution.history[0]
    label = f"{first.provider}/{first.model}"
    how = "an alias" if match is None else (
        f"{' + '.join(match.steps)} (candidate {match.rank + 1} of {len(resolution.tried)}: "
        f"{match.candidate[0]}/{match.candidate[1]})")
    if row is None:
        return [f"{name} reaches {label} by {how}, but its first row starts at "
                f"{iso(first.effective_from)}, after {iso(resolution.at)}: records before "
                "then stay unpriced.",
                f"To cover them: {set_command(first.provider, first.model, resolution.at)}"]
    return [f"{name} is priced by {label} (version {row.version}, from "
            f"{iso(row.effective_from)}, source {row.source or 'not given'}) by {how}."]
