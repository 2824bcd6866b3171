"""Price administration on the ``model_prices`` table (the CLI's ``prices`` and ``reprice``).

Every write runs in one transaction that first takes the table's write lock (PostgreSQL:
``LOCK TABLE … IN SHARE ROW EXCLUSIVE MODE``, which readers pass but other writers wait for;
SQLite: ``BEGIN IMMEDIATE``), reads the highest version and numbers each written row max+1,
max+2, … so versions grow across the whole table even with concurrent writers. A row whose
rates did not change is not rewritten and keeps its version. ``on_change(provider, model)``
(e.g. the Redis sync's ``notify_change``) is called for every changed model after the commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, text, update
from sqlalchemy.engine import Connection, Engine, Row

from cost_middleware.pricing.book import PriceBook
from cost_middleware.pricing.catalog import CatalogInput, bundled_prices, dump_catalog, read_catalog
from cost_middleware.pricing.price import Price, parse_datetime
from cost_middleware.pricing.rows import as_utc, price_from_row, price_to_row
from cost_middleware.records import CostRecord
from cost_middleware.schema import USD_SCALE, cost_records, model_prices
from cost_middleware.usage.model import Usage

log = logging.getLogger("cost_middleware")

OnChange = Callable[[str, str], None]
_Key = tuple[str, str, datetime]
_p = model_prices.c
_r = cost_records.c
_USD_UNIT = Decimal(1).scaleb(-USD_SCALE)
#: Records re-priced per transaction by :func:`reprice`.
REPRICE_BATCH = 1000


def ensure_seeded(engine: Engine, *, on_change: OnChange | None = None) -> int:
    """Load the bundled catalog if ``model_prices`` is empty; returns the rows added."""
    with engine.connect() as conn:  # the usual case, without taking the write lock
        if _has_rows(conn):
            return 0
    changed: set[tuple[str, str]] = set()
    with engine.begin() as conn:
        _lock(conn)
        if _has_rows(conn):  # another process seeded it meanwhile
            return 0
        written = _write(conn, bundled_prices(), replace_all=False, changed=changed)
    _notify(on_change, changed)
    return written


def load_catalog(
    engine: Engine, source: CatalogInput, *, replace: bool = False,
    on_change: OnChange | None = None,
) -> int:
    """Write a catalog (file path or mapping) into ``model_prices``.

    New rows are inserted and rows whose rates changed are rewritten with a new version. With
    ``replace``, rows absent from the catalog are deleted. Returns rows inserted, changed or
    deleted. The whole catalog is validated before anything is written.
    """
    prices = read_catalog(source)
    changed: set[tuple[str, str]] = set()
    with engine.begin() as conn:
        _lock(conn)
        written = _write(conn, prices, replace_all=replace, changed=changed)
    _notify(on_change, changed)
    return written


def export_catalog(engine: Engine) -> dict[str, Any]:
    """Every row (full history, with versions) as a catalog mapping."""
    with engine.connect() as conn:
        return dump_catalog(_load(conn))


def set_price(
    engine: Engine,
    provider: str,
    model: str,
    *,
    effective_from: datetime | str | None = None,
    on_change: OnChange | None = None,
    **rates: Any,
) -> Price:
    """Add (or correct) the price of ``(provider, model)`` from ``effective_from`` (default now).

    ``rates`` are catalog fields (``input``, ``output``, ``cached_input``, ``cache_write``,
    ``cache_write_1h``, ``web_search_per_1k``, ``aliases``, ``tiers``, ``source``) as decimals,
    numbers or strings. Fields not given, or given as None (a CLI flag left out), are copied
    from the row in effect at that time (or the latest row), except ``source``; a model
    without rows needs ``input`` and ``output``. (To remove a rate, load a catalog entry.)
    A row with the same ``effective_from`` is replaced (a correction) with a new version.
    """
    provider, model = provider.strip(), model.strip()
    label = f"{provider}/{model}"
    moment = datetime.now(UTC) if effective_from is None else parse_datetime(effective_from, label)
    changed: set[tuple[str, str]] = set()
    with engine.begin() as conn:
        _lock(conn)
        history = _load(conn, provider=provider, model=model)
        base = _in_effect(history, moment) or (history[-1] if history else None)
        entry: dict[str, Any] = base.to_catalog() if base is not None else {}
        entry.pop("source", None)
        entry.update((name, value) for name, value in rates.items() if value is not None)
        entry.update(provider=provider, model=model, effective_from=moment, version=0)
        price = Price.from_catalog(entry)
        _write(conn, [price], replace_all=False, changed=changed, force=True)
        stored = _load(conn, provider=price.provider, model=price.model)
    _notify(on_change, changed)
    return next(row for row in stored if row.effective_from == price.effective_from)


def list_prices(engine: Engine, provider: str | None = None) -> list[Price]:
    """The row in effect now for each model (a model with only future rows: its first row)."""
    with engine.connect() as conn:
        rows = _load(conn, provider=provider)
    now = datetime.now(UTC)
    by_model: dict[tuple[str, str], list[Price]] = {}
    for row in rows:
        by_model.setdefault((row.provider, row.model), []).append(row)
    return [_in_effect(history, now) or history[0] for history in by_model.values()]


def show_price(engine: Engine, provider: str, model: str) -> list[Price]:
    """Every row of ``(provider, model)``, oldest first (future rows included)."""
    with engine.connect() as conn:
        return _load(conn, provider=provider, model=model)


def reprice(
    engine: Engine, book: PriceBook, since: datetime, *, only_unpriced: bool = False,
) -> int:
    """Re-price ``cost_records`` created at or after ``since`` with the rates in effect at each
    record's ``created_at``; returns the records whose cost or price version changed.

    With ``only_unpriced``, only records without a cost are considered. A record the book can
    no longer price keeps the cost it has. Works in batches of :data:`REPRICE_BATCH`, one
    transaction each, so a long run neither holds locks nor starts over after an error.
    """
    since_utc = as_utc(since)
    # SQLite keeps naive UTC text; PostgreSQL compares instants either way.
    start = since_utc.replace(tzinfo=None) if engine.dialect.name == "sqlite" else since_utc
    book.invalidate_all()  # price from the table as it is now
    updated = 0
    after: tuple[datetime, str] | None = None
    stmt = update(cost_records).where(_r.record_id == bindparam("b_id")).values(
        cost_usd=bindparam("b_cost"), price_version=bindparam("b_version"))
    while True:
        # Each page's lower bound is where the last one ended, so the created_at index starts
        # there: with the OR below alone (a filter) every page would rescan from ``since``.
        query = select(*_REPRICE_COLUMNS).where(
            _r.created_at >= (start if after is None else after[0]))
        if only_unpriced:
            query = query.where(_r.cost_usd.is_(None))
        if after is not None:
            query = query.where(or_(_r.created_at > after[0],
                                    and_(_r.created_at == after[0], _r.record_id > after[1])))
        with engine.begin() as conn:
            rows = conn.execute(
                query.order_by(_r.created_at, _r.record_id).limit(REPRICE_BATCH)).all()
            if not rows:
                return updated
            records = [_record(row) for row in rows]
            book.price_many(records)
            changes = [
                {"b_id": rec.record_id, "b_cost": rec.cost_usd, "b_version": rec.price_version}
                for row, rec in zip(rows, records, strict=True)
                if rec.cost_usd is not None and (
                    row.cost_usd is None
                    or rec.cost_usd.quantize(_USD_UNIT) != row.cost_usd
                    or rec.price_version != row.price_version)
            ]
            if changes:
                conn.execute(stmt, changes)
            updated += len(changes)
        after = (rows[-1].created_at, rows[-1].record_id)


_REPRICE_COLUMNS = (
    _r.record_id, _r.created_at, _r.provider, _r.api, _r.model, _r.input_tokens,
    _r.cached_input_tokens, _r.cache_write_input_tokens, _r.cache_write_5m_input_tokens,
    _r.cache_write_1h_input_tokens, _r.output_tokens, _r.reasoning_tokens,
    _r.web_search_requests, _r.cost_usd, _r.price_version,
)


def _record(row: Row[*tuple[Any, ...]]) -> CostRecord:
    usage = None
    if row.input_tokens is not None:
        usage = Usage(
            input_tokens=row.input_tokens,
            output_tokens=row.output_tokens or 0,
            cached_input_tokens=row.cached_input_tokens or 0,
            cache_write_input_tokens=row.cache_write_input_tokens or 0,
            cache_write_5m_input_tokens=row.cache_write_5m_input_tokens,
            cache_write_1h_input_tokens=row.cache_write_1h_input_tokens,
            reasoning_tokens=row.reasoning_tokens,
            web_search_requests=row.web_search_requests,
        )
    return CostRecord(provider=row.provider, api=row.api, model=row.model, usage=usage,
                      record_id=row.record_id, created_at=as_utc(row.created_at))


# -- table access ----------------------------------------------------------------------------

def _lock(conn: Connection) -> None:
    """Serialize writers for the rest of this transaction (see the module doc)."""
    if conn.dialect.name == "postgresql":
        table = conn.dialect.identifier_preparer.format_table(model_prices)
        conn.execute(text(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE"))
    elif conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _has_rows(conn: Connection) -> bool:
    return conn.execute(select(_p.provider).limit(1)).first() is not None


def _load(conn: Connection, provider: str | None = None, model: str | None = None) -> list[Price]:
    query = select(model_prices)
    if provider is not None:
        query = query.where(_p.provider == provider)
    if model is not None:
        query = query.where(_p.model == model)
    rows = conn.execute(query.order_by(_p.provider, _p.model, _p.effective_from))
    return [price_from_row(row._mapping) for row in rows]


def _in_effect(history: Sequence[Price], moment: datetime) -> Price | None:
    current = None
    for price in history:
        if price.effective_from <= moment:
            current = price
    return current


def _write(
    conn: Connection, prices: Iterable[Price], *, replace_all: bool,
    changed: set[tuple[str, str]], force: bool = False,
) -> int:
    """Insert new rows, rewrite changed ones (lock held); returns rows written or deleted."""
    existing: dict[_Key, Price] = {
        (p.provider, p.model, p.effective_from): p for p in _load(conn)}
    version = int(conn.execute(select(func.coalesce(func.max(_p.version), 0))).scalar_one())
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    rewritten: list[_Key] = []
    wanted: set[_Key] = set()
    for price in prices:
        key = (price.provider, price.model, price.effective_from)
        wanted.add(key)
        old = existing.get(key)
        if old is not None and old.same_rates(price) and not force:
            continue
        if old is not None:
            rewritten.append(key)
        version += 1
        rows.append(price_to_row(replace(price, version=version), now))
        changed.add((price.provider, price.model))
    removed = sorted(existing.keys() - wanted) if replace_all else []
    changed.update((provider, model) for provider, model, _ in removed)
    if rewritten or removed:
        conn.execute(_DELETE_ROW, [{"b_provider": p, "b_model": m, "b_from": f}
                                   for p, m, f in rewritten + removed])
    if rows:
        conn.execute(insert(model_prices), rows)
    return len(rows) + len(removed)


_DELETE_ROW = delete(model_prices).where(
    _p.provider == bindparam("b_provider"), _p.model == bindparam("b_model"),
    _p.effective_from == bindparam("b_from"))


def _notify(on_change: OnChange | None, changed: set[tuple[str, str]]) -> None:
    if on_change is None:
        return
    for provider, model in sorted(changed):
        try:
            on_change(provider, model)
        except Exception as exc:  # the write is committed; a failed notice only delays others
            log.warning("cost_middleware: price change notification failed for %r/%r: %s",
                        provider, model, exc)

