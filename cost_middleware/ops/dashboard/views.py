"""The dashboard's views: each reads the ledger once and gives its JSON and its HTML body.

A view is a function of a :class:`View` (the ledger, the parsed query, the link prefix, the
time) returning a :class:`Page`. Amounts go to JSON as exact decimal strings; to HTML as the
terminal report shows them, with the exact amount in the cell's ``data-usd``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine

from cost_middleware.config import Settings
from cost_middleware.ops.dashboard import charts
from cost_middleware.ops.dashboard.budget_view import budget_lines
from cost_middleware.ops.dashboard.markup import Safe, clipped, count, href, join, money, tag
from cost_middleware.ops.dashboard.params import PERIODS, Query
from cost_middleware.ops.dashboard.queries import (
    KEYS,
    NONE_KEY,
    Filters,
    Row,
    Series,
    breakdown,
    distinct_values,
    series,
    totals,
    truncate,
)
from cost_middleware.ops.dashboard.savings import cache_savings
from cost_middleware.pricing.commands import iso
from cost_middleware.pricing.price import EPOCH


@dataclass(frozen=True, slots=True)
class View:
    engine: Engine
    settings: Settings
    query: Query
    #: Where the dashboard is mounted ("" at the root), prefixed to every link.
    root: str
    now: datetime

    def link(self, path: str, **query: str | None) -> str:
        return self.root + href(path, **query)


@dataclass(slots=True)
class Page:
    title: str
    data: Any
    body: Safe = field(default_factory=lambda: Safe(""))


def _usd(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _cell_usd(value: Decimal | None) -> Safe:
    return tag('<td class="num" data-usd="{exact}">{shown}</td>',
               exact="" if value is None else value, shown=money(value))


def _cell(value: int) -> Safe:
    return tag('<td class="num">{v}</td>', v=count(value))


def _section(title: str, *content: Safe) -> Safe:
    return join([tag("<section><h2>{t}</h2>", t=title), *content, Safe("</section>")])


def _filters_text(f: Filters) -> str:
    parts = [f"from {iso(f.since)}" if f.since else "from the first record",
             f"until {iso(f.until)}" if f.until else "until now"]
    parts += [f"{key} = {getattr(f, key)}" for key in KEYS if getattr(f, key) is not None]
    return ", ".join(parts)


def _filter_form(view: View, action: str, *, by: str | None = None) -> Safe:
    """A GET form of the period, the key filters and (for breakdowns) the key."""
    q = view.query
    period = q.get("period") or PERIODS[0]
    options = join(tag('<option value="{p}"{sel}>{p}</option>', p=p,
                       sel=Safe(" selected") if p == period else Safe("")) for p in PERIODS)
    fields = [tag('<label>period <select name="period">{o}</select></label>', o=options),
              tag('<label>since <input name="since" value="{v}" placeholder="7d or ISO date">'
                  "</label>", v=q.get("since") or ""),
              tag('<label>until <input name="until" value="{v}" placeholder="ISO date">'
                  "</label>", v=q.get("until") or "")]
    scope = q.filters(view.now).narrowed(**dict.fromkeys(KEYS))
    for key in KEYS:
        known = distinct_values(view.engine, key, scope, limit=100)
        choices = join(tag('<option value="{v}">', v=v) for v in known)
        fields.append(tag('<label>{k} <input name="{k}" value="{v}" list="{k}-values">'
                          '<datalist id="{k}-values">{c}</datalist></label>',
                          k=key, v=q.get(key) or "", c=choices))
    if by is not None:
        keys = join(tag('<option value="{k}"{sel}>{k}</option>', k=k,
                        sel=Safe(" selected") if k == by else Safe("")) for k in KEYS)
        fields.append(tag('<label>by <select name="by">{o}</select></label>', o=keys))
    return tag('<form class="filters" method="get" action="{a}">{f}'
               '<button type="submit">apply</button></form>',
               a=view.root + action, f=join(fields))


def _series_json(s: Series) -> dict[str, Any]:
    return {"unit": s.unit, "keys": s.keys,
            "buckets": [{"start": iso(b), "cost_usd": {k: str(v) for k, v in
                                                       zip(s.keys, row, strict=True) if v}}
                        for b, row in zip(s.buckets, s.values, strict=True)]}


def overview(view: View) -> Page:
    q = view.query
    stack = q.choice("stack", KEYS)
    base = q.filters(view.now).narrowed(since=None, until=None)
    today = totals(view.engine, base.narrowed(since=truncate(view.now, "day")))
    month = totals(view.engine, base.narrowed(since=truncate(view.now, "month")))
    daily = series(view.engine, "day", stack, base, count=30, now=view.now)
    hourly = series(view.engine, "hour", stack, base, count=48, now=view.now)
    data = {"now": iso(view.now), "stack": stack,
            "today": {"requests": today.requests, "cost_usd": _usd(today.cost_usd),
                      "unpriced": today.unpriced},
            "month": {"requests": month.requests, "cost_usd": _usd(month.cost_usd),
                      "unpriced": month.unpriced},
            "daily": _series_json(daily), "hourly": _series_json(hourly)}
    cards = join([
        _card("today", "spend today (UTC)", today.cost_usd, today.requests, today.unpriced),
        _card("month", "spend this month (UTC)", month.cost_usd, month.requests,
              month.unpriced)])
    stacks = join(tag('<a href="{h}" class="{c}">{k}</a>',
                      h=view.link("/", **{**q.values, "stack": k}),
                      c="on" if k == stack else "", k=k) for k in KEYS)
    body = join([
        tag('<div class="cards">{c}</div>', c=cards),
        tag('<p class="stacks">stacked by {s}</p>', s=stacks),
        _section("Last 30 days, by day", charts.stacked_columns(daily, title="cost by day")),
        _section("Last 48 hours, by hour", charts.stacked_columns(hourly, title="cost by hour")),
    ])
    return Page("Overview", data, body)


def _card(name: str, label: str, cost: Decimal | None, requests: int, unpriced: int) -> Safe:
    return tag('<div class="card" id="{n}"><div class="label">{l}</div>'
               '<div class="big" data-usd="{exact}">{shown}</div>'
               '<div class="small"><span class="requests">{r}</span> requests, '
               '<span class="unpriced">{u}</span> unpriced</div></div>',
               n=name, l=label, exact="" if cost is None else cost, shown=money(cost),
               r=count(requests),
               u=count(unpriced))


def _row_json(by: str, row: Row) -> dict[str, Any]:
    return {by: row.key, "requests": row.requests, "cost_usd": _usd(row.cost_usd),
            "unpriced": row.unpriced, "input_tokens": row.input_tokens,
            "cached_input_tokens": row.cached_input_tokens,
            "cache_write_input_tokens": row.cache_write_input_tokens,
            "output_tokens": row.output_tokens, "reasoning_tokens": row.reasoning_tokens}


def _key_link(view: View, by: str, key: str, target: str) -> Safe:
    """A key's cell: a link to the same page filtered by that key (not for a null key)."""
    if key == NONE_KEY:
        return tag('<td class="key">{name}</td>', name=key)
    link = view.link(target, **{**view.query.values, by: key})
    return tag('<td class="key"><a href="{h}" title="{full}">{name}</a></td>',
               h=link, full=key, name=clipped(key))


def breakdowns(view: View) -> Page:
    by = view.query.choice("by", KEYS)
    f = view.query.filters(view.now)
    rows = breakdown(view.engine, by, f)
    total = totals(view.engine, f)
    data = {"by": by, "filters": _filters_json(f), "rows": [_row_json(by, r) for r in rows],
            "total": {"requests": total.requests, "cost_usd": _usd(total.cost_usd),
                      "unpriced": total.unpriced}}
    head = tag("<tr><th>{by}</th><th>requests</th><th>input tok</th><th>output tok</th>"
               "<th>cost</th><th>unpriced</th></tr>", by=by)
    lines = [join([Safe('<tr class="row">'), _key_link(view, by, r.key, "/breakdown"),
                   _cell(r.requests), _cell(r.input_tokens), _cell(r.output_tokens),
                   _cell_usd(r.cost_usd), _cell(r.unpriced), Safe("</tr>")]) for r in rows]
    foot = join([Safe('<tr class="total"><td>total</td>'), _cell(total.requests),
                 Safe("<td></td><td></td>"), _cell_usd(total.cost_usd), _cell(total.unpriced),
                 Safe("</tr>")])
    body = join([
        _filter_form(view, "/breakdown", by=by),
        tag('<p class="scope">{t}</p>', t=_filters_text(f)),
        charts.hbars([(r.key, [r.cost_usd or Decimal(0)]) for r in rows[:20]])
        if rows else Safe(""),
        _table(head, lines, foot, empty="No records in this period."),
    ])
    return Page(f"Cost by {by}", data, body)


def _table(head: Safe, lines: list[Safe], foot: Safe, *, empty: str) -> Safe:
    if not lines:
        return tag('<p class="empty">{e}</p>', e=empty)
    return join([Safe("<table><thead>"), head, Safe("</thead><tbody>"), *lines,
                 Safe("</tbody><tfoot>"), foot, Safe("</tfoot></table>")])


def _filters_json(f: Filters) -> dict[str, Any]:
    return {"since": iso(f.since) if f.since else None,
            "until": iso(f.until) if f.until else None,
            **{key: getattr(f, key) for key in KEYS}}


def unpriced(view: View, explain: Callable[[datetime], list[Any]]) -> Page:
    from cost_middleware.pricing.unpriced import MEANING

    f = view.query.filters(view.now)
    since = f.since or EPOCH
    groups = explain(since)
    data = {"since": iso(since), "groups": [
        {"reason": g.reason, "meaning": MEANING[g.reason], "provider": g.provider,
         "model": g.model, "records": g.records, "first_at": iso(g.first_at),
         "last_at": iso(g.last_at), "fix": g.fix} for g in groups]}
    head = Safe("<tr><th>reason</th><th>provider</th><th>model</th><th>records</th>"
                "<th>first</th><th>last</th><th>fix</th></tr>")
    lines = [tag('<tr class="row"><td title="{meaning}">{reason}</td><td>{p}</td>'
                 '<td title="{m}">{mc}</td><td class="num">{n}</td><td>{a}</td><td>{b}</td>'
                 "<td><code>{fix}</code></td></tr>", meaning=MEANING[g.reason],
                 reason=g.reason, p=g.provider, m=g.model or "(no model)",
                 mc=clipped(g.model or "(no model)"), n=count(g.records), a=iso(g.first_at),
                 b=iso(g.last_at), fix=g.fix or "") for g in groups]
    total = sum(g.records for g in groups)
    foot = tag('<tr class="total"><td>total</td><td></td><td></td><td class="num">{n}</td>'
               "<td></td><td></td><td></td></tr>", n=count(total))
    reasons = join(tag("<li><b>{r}</b>: {m}</li>", r=r, m=m) for r, m in MEANING.items())
    body = join([
        _filter_form(view, "/unpriced"),
        tag('<p class="scope">Records without a cost since {s}, by why.</p>', s=iso(since)),
        _table(head, lines, foot, empty="Every record in this period is priced."),
        tag('<ul class="reasons">{r}</ul>', r=reasons),
    ])
    return Page("Unpriced calls", data, body)


def cache(view: View, lookup: Any) -> Page:
    f = view.query.filters(view.now)
    found = cache_savings(view.engine, f, lookup)
    known = [s.saved_usd for s in found if s.saved_usd is not None]
    total = sum(known, Decimal(0))
    data = {"filters": _filters_json(f), "saved_usd": str(total), "models": [
        {"provider": s.provider, "model": s.model, "records": s.records,
         "input_tokens": s.input_tokens, "cached_input_tokens": s.cached_input_tokens,
         "saved_usd": _usd(s.saved_usd)} for s in found]}
    head = Safe("<tr><th>provider</th><th>model</th><th>records</th><th>input tok</th>"
                "<th>cached tok</th><th>cached share</th><th>saved</th></tr>")
    lines = [join([tag('<tr class="row"><td>{p}</td><td title="{m}">{mc}</td>', p=s.provider,
                       m=s.model or "(no model)", mc=clipped(s.model or "(no model)")),
                   _cell(s.records), _cell(s.input_tokens), _cell(s.cached_input_tokens),
                   tag('<td class="num">{v}</td>', v=_share(s.cached_input_tokens,
                                                            s.input_tokens)),
                   _cell_usd(s.saved_usd), Safe("</tr>")]) for s in found]
    foot = join([Safe('<tr class="total"><td>total</td><td></td>'),
                 _cell(sum(s.records for s in found)),
                 _cell(sum(s.input_tokens for s in found)),
                 _cell(sum(s.cached_input_tokens for s in found)), Safe("<td></td>"),
                 _cell_usd(total), Safe("</tr>")])
    body = join([
        _filter_form(view, "/cache"),
        tag('<p class="scope">What cached input saved against the full input rate of the '
            "price row that billed it; {t}.</p>", t=_filters_text(f)),
        charts.hbars([(f"{s.provider}/{s.model}", [s.saved_usd]) for s in found[:20]
                      if s.saved_usd is not None]) if known else Safe(""),
        _table(head, lines, foot, empty="No cached input in this period."),
    ])
    return Page("Cache savings", data, body)


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else ""


#: Token kinds, as the tokens view stacks them (reasoning is a part of output).
KINDS = ("base input", "cached input", "cache writes", "output")


def tokens(view: View) -> Page:
    by = view.query.choice("by", KEYS)
    f = view.query.filters(view.now)
    rows = breakdown(view.engine, by, f)
    data = {"by": by, "filters": _filters_json(f), "rows": [_row_json(by, r) for r in rows]}
    head = tag("<tr><th>{by}</th><th>base input</th><th>cached input</th><th>cache writes</th>"
               "<th>output</th><th>of which reasoning</th></tr>", by=by)
    lines = [join([Safe('<tr class="row">'), _key_link(view, by, r.key, "/tokens"),
                   _cell(r.base_input_tokens), _cell(r.cached_input_tokens),
                   _cell(r.cache_write_input_tokens), _cell(r.output_tokens),
                   _cell(r.reasoning_tokens), Safe("</tr>")]) for r in rows]
    foot = join([Safe('<tr class="total"><td>total</td>'),
                 *(_cell(sum(getattr(r, name) for r in rows)) for name in (
                     "base_input_tokens", "cached_input_tokens", "cache_write_input_tokens",
                     "output_tokens", "reasoning_tokens")), Safe("</tr>")])
    bars = [(r.key, [Decimal(r.base_input_tokens), Decimal(r.cached_input_tokens),
                     Decimal(r.cache_write_input_tokens), Decimal(r.output_tokens)])
            for r in rows[:20]]
    body = join([
        _filter_form(view, "/tokens", by=by),
        tag('<p class="scope">{t}</p>', t=_filters_text(f)),
        charts.legend(KINDS) if rows else Safe(""),
        charts.hbars(bars, shown=lambda v: count(int(v))) if rows else Safe(""),
        _table(head, lines, foot, empty="No records in this period."),
    ])
    return Page("Tokens by kind", data, body)


def budgets(view: View) -> Page:
    lines = budget_lines(view.engine, view.now)
    data = {"now": iso(view.now), "budgets": [
        {"scope": b.scope, "subject": b.subject, "window": b.window,
         "window_start": iso(b.window_start) if b.window_start else None,
         "limit_usd": str(b.limit_usd), "spent_usd": str(b.spent_usd), "mode": b.mode,
         "alert_at": b.alert_at, "state": b.state} for b in lines]}
    head = Safe("<tr><th>scope</th><th>subject</th><th>window</th><th>mode</th><th>spent</th>"
                "<th>limit</th><th>used</th><th>state</th></tr>")
    rows = [join([tag('<tr class="row {state}"><td>{s}</td><td title="{full}">{subject}</td>'
                      "<td>{w}</td><td>{m}</td>", state=b.state, s=b.scope, full=b.subject,
                      subject=clipped(b.subject), w=b.window, m=b.mode),
                  _cell_usd(b.spent_usd), _cell_usd(b.limit_usd),
                  tag('<td class="num">{u}</td><td>{st}</td></tr>',
                      u=f"{min(b.used, Decimal(999)):.1%}", st=b.state)]) for b in lines]
    body = join([
        tag('<p class="scope">Each budget against what its current UTC window has spent, '
            "counted from the ledger (at {t}).</p>", t=iso(view.now)),
        _table(head, rows, Safe(""), empty="No budgets are set (cost-middleware budgets set)."),
    ])
    return Page("Budgets", data, body)
