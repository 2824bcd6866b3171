"""Price administration on the ``model_prices`` table (the CLI's ``prices`` and ``reprice``).

Every write runs in one transaction that first takes the table's write lock (PostgreSQL:
``LOCK TABLE … IN SHARE ROW EXCLUSIVE MODE``, which readers pass but other writers wait for;
SQLite: ``BEGIN IMMEDIATE``), reads the highest version and numbers each written row max+1,
max+2, … so versions grow across the whole table even with concurrent writers. A row that
leaves the table (``prices delete``, a correction, a ``--replace`` load) is kept in
``model_price_deletions``, so its version stays taken and no version ever names two rows. A row
whose rates did not change is not rewritten and keeps its version. ``on_change(provider, model)``
(e.g. the Redis sync's ``notify_change``) is called for every changed model after the commit.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, text, update
from sqlalchemy.engine import Connection, Engine

from cost_middleware.pricing.book import PriceBook
from cost_middleware.pricing.catalog import CatalogInput, bundled_prices, dump_catalog, read_catalog
from cost_middleware.pricing.matching import provider_error
from cost_middleware.pricing.price import (
    EPOCH,
    RATE_FIELDS,
    Price,
    in_effect,
    parse_datetime,
)
from cost_middleware.pricing.rows import price_from_row, price_to_row
from cost_middleware.schema import USD_SCALE, cost_records, model_price_deletions, model_prices
from cost_middleware.storage import rollups
from cost_middleware.storage.rows import REPRICE_COLUMNS, record_from_row
from cost_middleware.utc import as_utc

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
    return write_prices(engine, read_catalog(source), replace=replace, on_change=on_change)


def write_prices(
    engine: Engine, prices: Sequence[Price], *, replace: bool = False, newer_only: bool = False,
    on_change: OnChange | None = None,
) -> int:
    """Write many prices in one transaction (:func:`load_catalog`, ``prices import``).

    As :func:`load_catalog`, from :class:`Price` objects. With ``newer_only``, a price dated
    before its model's newest row is left out; that is judged under the write lock, so a row
    another process wrote meanwhile is never overtaken by an older one. Returns rows written.
    """
    changed: set[tuple[str, str]] = set()
    with engine.begin() as conn:
        _lock(conn)
        if newer_only:
            newest = {(p, m): as_utc(at) for p, m, at in conn.execute(
                select(_p.provider, _p.model, func.max(_p.effective_from))
                .group_by(_p.provider, _p.model))}
            prices = [p for p in prices if p.effective_from >= newest.get(
                (p.provider, p.model), p.effective_from)]
        written = _write(conn, prices, replace_all=replace, changed=changed)
    _notify(on_change, changed)
    return written


def export_catalog(engine: Engine) -> dict[str, Any]:
    """Every row (full history, with versions) as a catalog mapping."""
    with engine.connect() as conn:
        return dump_catalog(_load(conn))


#: The fields ``prices set`` copies from the row in effect when they are not given.
_INHERITED = (*RATE_FIELDS, "aliases", "tiers", "service_tiers")


@dataclass(frozen=True, slots=True)
class PriceSet:
    """What :func:`write_price` wrote, and from what."""

    price: Price
    #: The row the fields not given were copied from (None: the model's first row).
    base: Price | None
    #: Fields given, and fields copied from ``base`` (rates, aliases, tiers it has).
    given: tuple[str, ...]
    inherited: tuple[str, ...]

    @property
    def first(self) -> bool:
        """The model's first row: from the epoch unless a start was given (see write_price)."""
        return self.base is None


def set_price(engine: Engine, provider: str, model: str, **options: Any) -> Price:
    """:func:`write_price`, returning the row written."""
    return write_price(engine, provider, model, **options).price


def write_price(
    engine: Engine,
    provider: str,
    model: str,
    *,
    effective_from: datetime | str | None = None,
    on_change: OnChange | None = None,
    **rates: Any,
) -> PriceSet:
    """Add (or correct) the price of ``(provider, model)`` from ``effective_from``; says which
    fields were given and which inherited (``prices set`` prints both).

    ``effective_from`` defaults to now, except for a model's first row, which defaults to the
    epoch: no rate priced its earlier records, so the first one given also covers them
    (``reprice`` then prices them). ``rates`` are catalog fields (``input``, ``output``,
    ``cached_input``, ``cache_write``, ``cache_write_1h``, ``web_search_per_1k``, ``aliases``,
    ``tiers``, ``source``) as decimals, numbers or strings. Fields not given, or given as None
    (a CLI flag left out), are copied from the row in effect at that time (before every row:
    the first), except ``source``; a model without rows needs ``input`` and ``output``. (To
    remove a rate, load a catalog entry.) A row with the same ``effective_from`` is replaced
    (a correction) with a new version. A misspelt provider name raises ``ValueError`` listing
    ours (see :func:`_check_provider`).
    """
    provider, model = provider.strip(), model.strip()
    _check_provider(engine, provider)
    label = f"{provider}/{model}"
    given = tuple(name for name, value in rates.items() if value is not None)
    changed: set[tuple[str, str]] = set()
    with engine.begin() as conn:
        _lock(conn)
        history = _load(conn, provider=provider, model=model)
        if effective_from is not None:
            moment = parse_datetime(effective_from, label)
        else:  # read under the lock: a first row is decided by the rows there are
            moment = datetime.now(UTC) if history else EPOCH
        # Before every row: the first one, the rates that follow on from it.
        base = in_effect(history, moment) or (history[0] if history else None)
        entry: dict[str, Any] = base.to_catalog() if base is not None else {}
        entry.pop("source", None)
        entry.update((name, rates[name]) for name in given)
        entry.update(provider=provider, model=model, effective_from=moment, version=0)
        price = Price.from_catalog(entry)
        _write(conn, [price], replace_all=False, changed=changed, force=True)
        stored = _load(conn, provider=price.provider, model=price.model)
    _notify(on_change, changed)
    inherited = () if base is None else tuple(
        name for name in _INHERITED if name not in given and getattr(base, name) not in (None, ()))
    return PriceSet(next(row for row in stored if row.effective_from == price.effective_from),
                    base, given, inherited)


def delete_price(
    engine: Engine,
    provider: str,
    model: str,
    *,
    effective_from: datetime | str | None = None,
    on_change: OnChange | None = None,
) -> Price:
    """Remove one row of ``(provider, model)`` (one added by mistake); returns it.

    ``effective_from`` names the row; without it the model must have just one. The row is
    kept in ``model_price_deletions`` with the time of its deletion, and its version is never
    given to another row, so records priced by it can still be traced. Raises ``ValueError``
    when no row, or more than one, matches. ``on_change`` as for :func:`set_price`.
    """
    provider, model = provider.strip(), model.strip()
    _check_provider(engine, provider)
    label = f"{provider}/{model}"
    moment = None if effective_from is None else parse_datetime(effective_from, label)
    with engine.begin() as conn:
        _lock(conn)
        history = _load(conn, provider=provider, model=model)
        rows = [p for p in history if moment is None or p.effective_from == moment]
        if len(rows) != 1:
            starts = ", ".join(p.to_catalog()["effective_from"] for p in history)
            if not history:
                raise ValueError(f"{label} has no price rows")
            raise ValueError(
                f"{label} has no row from {moment.isoformat()}; its rows start at {starts}"
                if moment is not None else
                f"{label} has {len(history)} rows (from {starts}): say which to delete with "
                "--effective-from")
        row = rows[0]
        _retire(conn, [row])
    _notify(on_change, {(row.provider, row.model)})
    return row


def deleted_prices(engine: Engine, provider: str, model: str) -> list[tuple[datetime, Price]]:
    """The rows of ``(provider, model)`` that were deleted, with when, oldest deletion first."""
    d = model_price_deletions.c
    with engine.connect() as conn:
        rows = conn.execute(select(d.deleted_at, d.entry).where(
            d.provider == provider, d.model == model).order_by(d.deleted_at, d.version))
        return [(as_utc(at), Price.from_catalog(json.loads(entry))) for at, entry in rows]


def list_prices(engine: Engine, provider: str | None = None) -> list[Price]:
    """The row in effect now for each model (a model with only future rows: its first row)."""
    if provider is not None:
        _check_provider(engine, provider)
    with engine.connect() as conn:
        rows = _load(conn, provider=provider)
    now = datetime.now(UTC)
    by_model: dict[tuple[str, str], list[Price]] = {}
    for row in rows:
        by_model.setdefault((row.provider, row.model), []).append(row)
    return [in_effect(history, now) or history[0] for history in by_model.values()]


def price_history(engine: Engine) -> list[Price]:
    """Every row of every model, by provider, model and ``effective_from`` (future rows too)."""
    with engine.connect() as conn:
        return _load(conn)


def show_price(engine: Engine, provider: str, model: str) -> list[Price]:
    """Every row of ``(provider, model)``, oldest first (future rows included)."""
    _check_provider(engine, provider)
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
    # The cost and its exact companion get the same amount, each bound by its column's type.
    stmt = update(cost_records).where(_r.record_id == bindparam("b_id")).values(
        cost_usd=bindparam("b_cost"), cost_usd_pico=bindparam("b_exact"),
        price_version=bindparam("b_version"))
    while True:
        # Each page's lower bound is where the last one ended, so the created_at index starts
        # there: with the OR below alone (a filter) every page would rescan from ``since``.
        query = select(*REPRICE_COLUMNS).where(
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
            records = [record_from_row(row) for row in rows]
            book.price_many(records)
            changes = [
                {"b_id": rec.record_id, "b_cost": rec.cost_usd, "b_exact": rec.cost_usd,
                 "b_version": rec.price_version}
                for row, rec in zip(rows, records, strict=True)
                if rec.cost_usd is not None and (
                    row.cost_usd is None
                    or rec.cost_usd.quantize(_USD_UNIT) != row.cost_usd
                    or rec.price_version != row.price_version)
            ]
            if changes:
                # The hourly rollups follow in this transaction: out with the old costs,
                # in with the new.
                ids = [str(change["b_id"]) for change in changes]
                rollups.change_records(conn, ids, -1)
                conn.execute(stmt, changes)
                rollups.change_records(conn, ids, 1)
            updated += len(changes)
        after = (rows[-1].created_at, rows[-1].record_id)


# -- table access ----------------------------------------------------------------------------

def _lock(conn: Connection) -> None:
    """Serialize writers for the rest of this transaction (see the module doc)."""
    if conn.dialect.name == "postgresql":
        table = conn.dialect.identifier_preparer.format_table(model_prices)
        conn.execute(text(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE"))
    elif conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _check_provider(engine: Engine, provider: str) -> None:
    """Refuse a provider name that misspells one of ours (``ValueError`` listing ours), unless
    price rows or records already carry it (a provider of the app's own named so)."""
    error = provider_error(provider)
    if error is None:
        return
    with engine.connect() as conn:
        for table in (model_prices, cost_records):
            # Only a name that looks misspelt gets here; records have no provider index.
            if conn.execute(select(table.c.provider).where(
                    table.c.provider == provider).limit(1)).first() is not None:
                return
    raise ValueError(error)


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


def _write(
    conn: Connection, prices: Iterable[Price], *, replace_all: bool,
    changed: set[tuple[str, str]], force: bool = False,
) -> int:
    """Insert new rows, rewrite changed ones (lock held); returns rows written or deleted."""
    existing: dict[_Key, Price] = {
        (p.provider, p.model, p.effective_from): p for p in _load(conn)}
    version = max(int(conn.execute(select(func.coalesce(func.max(table.c.version), 0)))
                      .scalar_one()) for table in (model_prices, model_price_deletions))
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
    _retire(conn, [existing[key] for key in rewritten + removed])
    if rows:
        conn.execute(insert(model_prices), rows)
    return len(rows) + len(removed)


def _retire(conn: Connection, rows: Sequence[Price]) -> None:
    """Delete ``rows`` from the price table, keeping each in ``model_price_deletions``: its
    version stays taken (the next is numbered above it) and records that used it stay traced."""
    if not rows:
        return
    now = datetime.now(UTC)
    conn.execute(insert(model_price_deletions), [
        {"version": row.version, "provider": row.provider, "model": row.model,
         "effective_from": row.effective_from, "deleted_at": now,
         "entry": json.dumps(row.to_catalog())} for row in rows])
    conn.execute(_DELETE_ROW, [{"b_provider": row.provider, "b_model": row.model,
                                "b_from": row.effective_from} for row in rows])


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

