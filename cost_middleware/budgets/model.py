"""What a budget is: its scope, subject, window and mode, and the rules of its windows.

Light on purpose (no SQLAlchemy, no Redis): the request path imports it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from cost_middleware.utc import as_utc

SCOPES = ("tenant", "route", "model", "provider", "all")
WINDOWS = ("hour", "day", "month", "total")
MODES = ("block", "observe")
#: A subject meaning "each value of the scope, separately".
EACH = "*"
#: Distinct values one ``*`` budget counts separately per window; later ones share one
#: counter (``other``) that is never blocked by itself. Bounds Redis memory and the spent set.
MAX_SUBJECTS = 10_000
#: The longest subject kept (the route column's width); longer values are cut to it.
MAX_SUBJECT = 512
#: The most USD a limit may be: counters are 64-bit pico-dollars (about 9.2 million USD).
MAX_LIMIT = Decimal(9_000_000)


class BudgetExceeded(Exception):
    """A spent ``block`` budget covers this call. Raised by ``record_usage`` and the httpx
    transports before a call is sent; the adapters answer 429 instead."""

    def __init__(self, scope: str, subject: str, window: str, limit_usd: Decimal,
                 spent_usd: Decimal | None, retry_after: int | None) -> None:
        spent = "unknown" if spent_usd is None else f"{spent_usd} USD"
        super().__init__(f"budget exceeded: {scope} {subject!r} ({window}): spent {spent} of "
                         f"{limit_usd} USD")
        self.scope = scope
        self.subject = subject
        self.window = window
        self.limit_usd = limit_usd
        self.spent_usd = spent_usd
        #: Seconds until the window resets (None: a ``total`` budget never does).
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Budget:
    """One row of the ``budgets`` table."""

    scope: str
    subject: str
    window: str
    limit_usd: Decimal
    mode: str = "block"
    #: The fraction of the limit at which an alert is logged and counted (None: none).
    alert_at: float | None = None
    updated_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}, not {self.scope!r}")
        if self.window not in WINDOWS:
            raise ValueError(f"window must be one of {', '.join(WINDOWS)}, not {self.window!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.scope == "all" and self.subject != EACH:
            raise ValueError("an 'all' budget covers everything: its subject must be '*'")
        if not self.subject or len(self.subject) > MAX_SUBJECT or not self.subject.isprintable():
            raise ValueError(f"a subject must be 1 to {MAX_SUBJECT} printable characters")
        limit = Decimal(self.limit_usd)
        if not limit.is_finite() or limit < 0 or limit > MAX_LIMIT:
            raise ValueError(f"a limit must be from 0 to {MAX_LIMIT} USD, not {self.limit_usd}")
        # Plain text without trailing zeros (0.01, not 0.010000000000 or 1E-2).
        object.__setattr__(self, "limit_usd", Decimal(f"{limit.normalize():f}"))
        if self.alert_at is not None and not 0 < self.alert_at <= 1:
            raise ValueError(f"--alert-at must be a fraction above 0, up to 1: {self.alert_at}")

    @property
    def ident(self) -> str:
        """A short, safe name for (scope, subject, window): the subject is untrusted text."""
        raw = f"{self.scope}\0{self.subject}\0{self.window}".encode()
        return hashlib.blake2b(raw, digest_size=10).hexdigest()

    @property
    def each(self) -> bool:
        return self.subject == EACH

    def covers(self, value: str | None) -> bool:
        """Whether a record or request whose value of the scope is ``value`` counts here."""
        if self.scope == "all":
            return True
        return bool(value) and (self.each or value == self.subject)

    def value_of(self, value: str | None) -> str | None:
        """The counter a value counts in (None: not covered): itself, or ``*`` for ``all``."""
        if not self.covers(value):
            return None
        return EACH if self.scope == "all" else str(value)[:MAX_SUBJECT]


def window_bounds(window: str, at: datetime) -> tuple[datetime | None, datetime | None]:
    """(start, end) of the UTC calendar window holding ``at``; (None, None) for ``total``."""
    at = as_utc(at)
    if window == "hour":
        start = at.replace(minute=0, second=0, microsecond=0)
        return start, start + timedelta(hours=1)
    if window == "day":
        start = at.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    if window == "month":
        start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start.replace(year=start.year + 1, month=1) if start.month == 12
               else start.replace(month=start.month + 1))
        return start, end
    if window == "total":
        return None, None
    raise ValueError(f"window must be one of {', '.join(WINDOWS)}, not {window!r}")


def window_id(window: str, at: datetime) -> int:
    """The window holding ``at`` as a number: its start in epoch seconds (0 for ``total``)."""
    start, _ = window_bounds(window, at)
    return 0 if start is None else int(start.timestamp())


def window_end(window: str, start_id: int) -> datetime | None:
    """When the window that starts at ``start_id`` ends (None: never)."""
    if window == "total":
        return None
    return window_bounds(window, datetime.fromtimestamp(start_id, UTC))[1]
