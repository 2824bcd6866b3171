"""The set of spent budgets the request path reads: dictionary lookups, no I/O, no lock.

The budget worker (``runtime``) builds a new :class:`Blocks` whenever what is spent changes
and swaps it in with one assignment, so a reader sees the old set or the new one, whole.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from cost_middleware.budgets.model import MAX_SUBJECT, BudgetExceeded

if TYPE_CHECKING:
    from cost_middleware.context import RequestContext


@dataclass(frozen=True, slots=True)
class Blocked:
    """A spent ``block`` budget: what the 429 says, and when it stops applying."""

    scope: str
    #: The budget's subject, or for a ``*`` budget the value that spent it.
    subject: str
    window: str
    limit_usd: Decimal
    #: None: not known (Redis unreachable and failing closed).
    spent_usd: Decimal | None
    #: Epoch seconds the window resets at (None: ``total``, never).
    resets_at: float | None

    def retry_after(self, now: float) -> int | None:
        return None if self.resets_at is None else max(1, math.ceil(self.resets_at - now))

    def body(self) -> bytes:
        """The 429's JSON body (the subject, untrusted, is escaped by the encoder)."""
        error = {"type": "budget_exceeded", "scope": self.scope, "subject": self.subject,
                 "window": self.window, "limit_usd": str(self.limit_usd),
                 "spent_usd": None if self.spent_usd is None else str(self.spent_usd)}
        return json.dumps({"error": error}).encode()

    def headers(self, now: float) -> list[tuple[str, str]]:
        """The 429's headers: JSON, its length, and ``Retry-After`` when the window resets."""
        headers = [("content-type", "application/json"),
                   ("content-length", str(len(self.body())))]
        retry = self.retry_after(now)
        if retry is not None:
            headers.append(("retry-after", str(retry)))
        return headers

    def error(self, now: float) -> BudgetExceeded:
        return BudgetExceeded(self.scope, self.subject, self.window, self.limit_usd,
                              self.spent_usd, self.retry_after(now))


@dataclass(frozen=True, slots=True)
class Blocks:
    """What is spent now. ``exact``: (scope, value) -> budget; ``every``: scope -> a budget
    covering every value of it (an ``all`` budget, a ``*`` budget at limit 0, or every block
    budget while Redis is unreachable and failing closed)."""

    exact: dict[tuple[str, str], Blocked]
    every: dict[str, Blocked]


NOTHING = Blocks({}, {})


class Gate:
    """``check`` runs on every inspected request and every provider call; ``blocks`` is
    replaced by the budget worker, which starts with the tracker's background thread."""

    __slots__ = ("blocks",)

    def __init__(self) -> None:
        self.blocks = NOTHING

    def check(self, context: RequestContext, provider: str | None,
              model: str | None = None) -> Blocked | None:
        """The spent budget covering this request or call, if any."""
        blocks = self.blocks
        if blocks is NOTHING:
            return None
        hit = None
        if blocks.every:
            hit = _every(blocks.every, context, provider, model)
        if hit is None:
            exact = blocks.exact
            hit = exact.get(("route", context.path)) or (
                provider and exact.get(("provider", provider))) or (
                model and exact.get(("model", model[:MAX_SUBJECT]))) or None
            if hit is None:
                tenant = context.tenant  # the one header read, only when something is spent
                hit = exact.get(("tenant", tenant)) if tenant else None
        if hit is not None and hit.resets_at is not None and time.time() >= hit.resets_at:
            return None  # its window ended; the worker drops it at its next turn
        return hit


def _every(every: dict[str, Blocked], context: RequestContext, provider: str | None,
           model: str | None) -> Blocked | None:
    for scope, blocked in every.items():
        if scope in ("all", "route") or (scope == "provider" and provider) or (
                scope == "model" and model) or (scope == "tenant" and context.tenant):
            return blocked
    return None
