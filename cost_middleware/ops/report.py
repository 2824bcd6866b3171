"""Cost summaries of the ledger: the rows behind ``cost-middleware report``, the demo and the
dashboard, read from the hourly rollups (see :mod:`cost_middleware.storage.rollups`).

:func:`report_data` is what ``report --format json`` prints, as Python data: the dashboard's
JSON API returns it as it is.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine

from cost_middleware.storage.rollups import BUCKETS, KEYS, Filters, Totals, totals
from cost_middleware.utc import as_utc

#: What ``--by`` takes: a key column, or a time bucket (at most one, with any keys).
GROUPS = ("model", "tenant", "route", "provider")
BY_CHOICES = (*GROUPS, *BUCKETS)
#: A null key value, as every output shows it.
NONE = "(none)"
#: The token columns a report shows, after input and output.
EXTRA_TOKENS = ("cached_input_tokens", "cache_write_input_tokens", "reasoning_tokens")


@dataclass(frozen=True, slots=True)
class ReportRow:
    """One group's totals. ``key`` is the group's values joined by " / " (for tables and
    charts); ``keys`` holds each one (``NONE`` for a null, a bucket as ISO text)."""

    key: str
    requests: int
    input_tokens: int
    output_tokens: int
    #: The exact cost of the group's priced records; None: none of them is priced (unknown).
    cost_usd: Decimal | None
    #: Requests whose cost is unknown (unpriced model, or no usage in the response).
    unpriced: int
    cached_input_tokens: int = 0
    cache_write_input_tokens: int = 0
    reasoning_tokens: int = 0
    #: Requests whose response carried no usage (a subset of ``unpriced``).
    no_usage: int = 0
    keys: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Report:
    """A whole report: its arguments, its rows (at most ``limit`` groups) and the total of
    every record it covers, rows left out by ``limit`` included."""

    by: tuple[str, ...]
    since: datetime | None
    until: datetime | None
    filters: Filters
    rows: list[ReportRow]
    total: ReportRow
    limit: int | None = None
    #: Groups left out by ``limit``.
    omitted: int = 0
    #: Where the figures came from: "rollups", "records" or "rollups+records".
    source: str = field(default="rollups", compare=False)


def parse_by(by: str | Sequence[str]) -> tuple[str, ...]:
    """``--by``'s value (``"provider,model"``, or a sequence) as a checked tuple of names."""
    names = tuple(n.strip() for n in (by.split(",") if isinstance(by, str) else by))
    for name in names:
        if name not in BY_CHOICES:
            raise ValueError(f"report --by must be one of {', '.join(GROUPS)} (or day, hour), "
                             f"not {name!r}")
    if not names or len(set(names)) != len(names):
        raise ValueError(f"report --by needs distinct names, not {','.join(names)!r}")
    if sum(name in BUCKETS for name in names) > 1:
        raise ValueError("report --by takes one of day and hour, not both")
    return names


def build_report(engine: Engine, by: str | Sequence[str] = "model",
                 since: datetime | None = None, until: datetime | None = None, *,
                 tenant: str | None = None, model: str | None = None,
                 provider: str | None = None, route: str | None = None,
                 limit: int | None = None) -> Report:
    """Totals of the records in [since, until) matching the filters, per value of ``by``.

    Rows come most expensive first (an unknown cost last); with a time bucket in ``by``,
    by bucket first, oldest first. ``limit`` keeps the most expensive ``limit`` groups of the
    non-time keys (all their buckets), or with a time bucket alone the latest ``limit``
    buckets.
    """
    names = parse_by(by)
    if limit is not None and limit < 1:
        raise ValueError(f"report --limit must be at least 1, not {limit}")
    keys = tuple(n for n in names if n in KEYS)
    bucket = next((n for n in names if n in BUCKETS), None)
    filters = Filters(provider=provider, model=model, tenant=tenant, route=route)
    since = None if since is None else as_utc(since)
    until = None if until is None else as_utc(until)
    with engine.connect() as conn:
        found, source = totals(conn, keys, bucket, since, until, filters)
    total = Totals()
    for part in found.values():
        total.add(part)
    groups = list(found.items())
    omitted = 0
    if limit is not None:
        groups, omitted = _limited(groups, len(keys), bucket is not None, limit)
    rows = [_row(names, keys, bucket, key, part) for key, part in groups]
    rows.sort(key=lambda r: _order(r, names, bucket))
    return Report(names, since, until, filters, rows, _row((), (), None, (), total), limit,
                  omitted, source)


def summarize(engine: Engine, by: str | Sequence[str] = "model", since: datetime | None = None,
              **options: Any) -> list[ReportRow]:
    """The rows of :func:`build_report` (its keyword arguments are taken too)."""
    return build_report(engine, by, since, **options).rows


def report_data(engine: Engine, by: str | Sequence[str] = "model",
                since: datetime | None = None, until: datetime | None = None, *,
                tenant: str | None = None, model: str | None = None,
                provider: str | None = None, route: str | None = None,
                limit: int | None = None) -> dict[str, Any]:
    """Exactly what ``report --format json`` prints for the same arguments (as JSON-ready
    data: amounts as decimal strings, an unknown cost as null)."""
    return as_data(build_report(engine, by, since, until, tenant=tenant, model=model,
                                provider=provider, route=route, limit=limit))


def as_data(report: Report) -> dict[str, Any]:
    """A report as ``report --format json`` prints it."""
    return {
        "by": list(report.by),
        "since": _iso(report.since),
        "until": _iso(report.until),
        "filters": {name: getattr(report.filters, name) for name in KEYS
                    if getattr(report.filters, name) is not None},
        "limit": report.limit,
        "omitted": report.omitted,
        "rows": [{**dict(zip(report.by, r.keys, strict=True)), **_figures(r)}
                 for r in report.rows],
        "total": _figures(report.total),
    }


def to_json(report: Report) -> str:
    return json.dumps(as_data(report), indent=2)


#: The columns after the keys, in CSV and JSON.
FIGURES = ("requests", "input_tokens", "cached_input_tokens", "cache_write_input_tokens",
           "output_tokens", "reasoning_tokens", "cost_usd", "unpriced", "no_usage")


def to_csv(report: Report) -> str:
    """The rows, then a ``total`` row (first column "total", other keys empty). An unknown
    cost is an empty cell."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*report.by, *FIGURES])
    for r in report.rows:
        writer.writerow([*(_csv_safe(k) for k in r.keys), *_csv_figures(r)])
    blanks = [""] * (len(report.by) - 1)
    writer.writerow(["total", *blanks, *_csv_figures(report.total)])
    return out.getvalue()


def _figures(r: ReportRow) -> dict[str, Any]:
    return {name: (None if r.cost_usd is None else str(r.cost_usd)) if name == "cost_usd"
            else getattr(r, name) for name in FIGURES}


def _csv_figures(r: ReportRow) -> list[Any]:
    return ["" if v is None else v for v in _figures(r).values()]


def _row(names: Sequence[str], keys: Sequence[str], bucket: str | None, key: tuple[Any, ...],
         part: Totals) -> ReportRow:
    values = dict(zip(keys, key, strict=False))
    if bucket is not None:
        values[bucket] = _bucket_text(key[-1], bucket)
    shown = tuple(NONE if values[n] is None else str(values[n]) for n in names)
    t = part.tokens
    return ReportRow(" / ".join(shown) if shown else "total", part.requests, t["input_tokens"],
                     t["output_tokens"], part.cost_usd, part.unpriced,
                     t["cached_input_tokens"], t["cache_write_input_tokens"],
                     t["reasoning_tokens"], part.no_usage, shown)


def _limited(groups: list[tuple[tuple[Any, ...], Totals]], keys: int, bucketed: bool,
             limit: int) -> tuple[list[tuple[tuple[Any, ...], Totals]], int]:
    if keys == 0:  # buckets alone: the latest ones
        groups.sort(key=lambda g: g[0][-1])
        return groups[-limit:], max(0, len(groups) - limit)
    spent: dict[tuple[Any, ...], Totals] = {}
    for key, part in groups:
        spent.setdefault(key[:keys], Totals()).add(part)
    ranked = sorted(spent, key=lambda k: (_cost_order(spent[k]), -spent[k].requests,
                                          tuple("" if v is None else str(v) for v in k)))
    kept = set(ranked[:limit])
    return [g for g in groups if g[0][:keys] in kept], max(0, len(ranked) - limit)


def _cost_order(part: Totals) -> tuple[int, Decimal]:
    cost = part.cost_usd
    return (1, Decimal(0)) if cost is None else (0, -cost)


def _order(r: ReportRow, names: Sequence[str], bucket: str | None) -> tuple[Any, ...]:
    cost = (1, Decimal(0)) if r.cost_usd is None else (0, -r.cost_usd)
    first = r.keys[names.index(bucket)] if bucket is not None else ""
    return (first, *cost, -r.requests, r.key)


def _bucket_text(start: datetime, bucket: str) -> str:
    return f"{start:%Y-%m-%d}" if bucket == "day" else f"{start:%Y-%m-%dT%H:00:00Z}"


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else as_utc(moment).isoformat().replace("+00:00", "Z")


def _csv_safe(value: str) -> str:
    # Tenants and routes are untrusted: control characters (a bare CR splits a row in some
    # readers, ESC reaches the terminal of whoever cats the file) are written escaped, and
    # spreadsheets are kept from evaluating a value as a formula.
    value = _CONTROL.sub(_escape_control, value)
    return "'" + value if value[:1] in ("=", "+", "-", "@") else value


#: C0 controls, DEL and C1 controls: never written raw.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _escape_control(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"
