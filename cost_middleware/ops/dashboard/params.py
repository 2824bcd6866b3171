"""A request's query string as the dashboard's filters: bounded, checked, never trusted.

``since`` and ``until`` take what ``report --since`` takes (an age such as ``7d``, or an ISO
date/time, UTC unless it has an offset); ``period`` names a common range instead.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs

from cost_middleware.ops.dashboard.queries import KEYS, Filters, truncate

#: The longest query value read (a model is at most 256 characters, a route 512).
MAX_VALUE = 1024
#: ``period`` values, the default first.
PERIODS = ("30d", "today", "24h", "7d", "month", "all")


class BadRequest(ValueError):
    """A query value the dashboard refuses (answered 400 with this message)."""


@dataclass(frozen=True, slots=True)
class Query:
    values: Mapping[str, str]

    @classmethod
    def parse(cls, raw: bytes) -> Query:
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise BadRequest("the query string must be percent-encoded ASCII") from None
        try:
            pairs = parse_qs(text, keep_blank_values=False, strict_parsing=False,
                             errors="strict", max_num_fields=32)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("the query string has too many fields or bad UTF-8") from None
        values: dict[str, str] = {}
        for name, found in pairs.items():
            if len(found[-1]) > MAX_VALUE:
                raise BadRequest(f"{name[:40]!r} is longer than {MAX_VALUE} characters")
            values[name] = found[-1]
        return cls(values)

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def choice(self, name: str, choices: tuple[str, ...]) -> str:
        """One of ``choices`` (the first when absent)."""
        value = self.values.get(name, choices[0])
        if value not in choices:
            raise BadRequest(f"{name} must be one of {', '.join(choices)}")
        return value

    def when(self, name: str) -> datetime | None:
        from cost_middleware.ops.cli import _since  # the report's own rule for the forms

        value = self.values.get(name)
        if value is None:
            return None
        try:
            return _since(value)
        except argparse.ArgumentTypeError as exc:
            raise BadRequest(f"{name}: {exc}") from None

    def filters(self, now: datetime | None = None) -> Filters:
        """The period (``since``/``until``, else ``period``) and the key filters."""
        since, until = self.when("since"), self.when("until")
        if since is None and until is None:
            since = period_start(self.choice("period", PERIODS), now)
        if since is not None and until is not None and until <= since:
            raise BadRequest("until must be later than since")
        return Filters(since, until, **{key: self.values.get(key) for key in KEYS})


def period_start(period: str, now: datetime | None = None) -> datetime | None:
    moment = now or datetime.now(UTC)
    if period == "all":
        return None
    if period == "today":
        return truncate(moment, "day")
    if period == "month":
        return truncate(moment, "month")
    return moment - {"24h": timedelta(hours=24), "7d": timedelta(days=7),
                     "30d": timedelta(days=30)}[period]
