"""Cost summaries from ``cost_records``: the rows behind ``cost-middleware report`` and the demo."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy import Engine

from cost_middleware.schema import cost_records
from cost_middleware.utc import as_utc

GROUPS = ("model", "tenant", "route", "provider")


@dataclass(frozen=True, slots=True)
class ReportRow:
    key: str
    requests: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    #: Requests whose cost is unknown (unpriced model, or no usage in the response).
    unpriced: int


def summarize(engine: Engine, by: str, since: datetime | None = None) -> list[ReportRow]:
    """Totals per ``by`` value (one of :data:`GROUPS`), most expensive first."""
    if by not in GROUPS:
        raise ValueError(f"report --by must be one of {', '.join(GROUPS)}, not {by!r}")
    column = cost_records.c[by]
    c = cost_records.c
    query = (
        sa.select(
            column,
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(c.input_tokens), 0),
            sa.func.coalesce(sa.func.sum(c.output_tokens), 0),
            sa.func.sum(c.cost_usd_pico),  # the exact companion: SQLite's cost_usd is REAL
            sa.func.sum(sa.case((c.cost_usd.is_(None), 1), else_=0)),
        )
        .group_by(column)
    )
    if since is not None:
        # As UTC: SQLite compares the stored UTC text, so another offset would shift it.
        query = query.where(c.created_at >= as_utc(since))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    result = [
        ReportRow(
            key=str(key) if key is not None else "(none)",
            requests=int(count),
            input_tokens=int(inp),
            output_tokens=int(out),
            cost_usd=Decimal(cost) if cost is not None else Decimal(0),
            unpriced=int(unpriced or 0),
        )
        for key, count, inp, out, cost, unpriced in rows
    ]
    result.sort(key=lambda r: (-r.cost_usd, -r.requests, r.key))
    return result


def to_csv(rows: list[ReportRow], by: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([by, "requests", "input_tokens", "output_tokens", "cost_usd", "unpriced"])
    for r in rows:
        writer.writerow([_csv_safe(r.key), r.requests, r.input_tokens, r.output_tokens,
                         str(r.cost_usd), r.unpriced])
    return out.getvalue()


def to_json(rows: list[ReportRow], by: str) -> str:
    items = [{**asdict(r), "cost_usd": str(r.cost_usd), by: r.key} for r in rows]
    for item in items:
        del item["key"]
    return json.dumps(items, indent=2)


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
