"""Prices from the ``model_prices`` table.

Lookups reuse one connection kept checked out (a new connection per lookup costs about three
times as much on PostgreSQL). No transaction stays open between lookups (an idle open
transaction would hold a lock on the table and block migrations): on PostgreSQL the connection
is in autocommit mode; on SQLite, whose pooled connection may be shared (an in-memory database
has one), its settings are left alone and each read is rolled back, which costs nothing. The
connection is used by one thread at a time; one that broke (database restart) is replaced once
per query.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Executable

from cost_middleware import forks
from cost_middleware.pricing.price import Price
from cost_middleware.pricing.rows import json_list, price_from_row
from cost_middleware.pricing.sources import Key
from cost_middleware.schema import model_prices

_c = model_prices.c
# Primary-key range scans: provider IN (...) AND model IN (...) covers every candidate at once.
_BY_KEYS = select(model_prices).where(
    _c.provider.in_(bindparam("providers", expanding=True)),
    _c.model.in_(bindparam("models", expanding=True)),
)
_ALIASES = (
    select(_c.model, _c.aliases)
    .where(_c.provider == bindparam("provider"), _c.aliases != "[]")
    .order_by(_c.effective_from)
)
_MODELS = select(_c.model).where(_c.provider == bindparam("provider")).distinct()


class SQLPriceSource:
    """:class:`~cost_middleware.pricing.sources.PriceSource` over ``model_prices``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._rollback = engine.dialect.name == "sqlite"
        forks.reset_in_child(self, SQLPriceSource._after_fork)

    def _execute(self, stmt: Executable, params: dict[str, Any] | None = None,
                 ) -> Sequence[Row[Any]]:
        with self._lock:
            try:
                return self._read(stmt, params)
            except DBAPIError as exc:
                self._discard()
                if not exc.connection_invalidated:
                    raise
            # The kept connection had broken (e.g. a database restart): one retry on a new one.
            try:
                return self._read(stmt, params)
            except DBAPIError:
                self._discard()
                raise

    def _read(self, stmt: Executable, params: dict[str, Any] | None) -> Sequence[Row[Any]]:
        conn = self._connection()
        rows = conn.execute(stmt, params or {}).all()
        if self._rollback:
            conn.rollback()
        return rows

    def _after_fork(self) -> None:
        """In a forked child: the parent's connection is never used or closed here."""
        if self._conn is not None:
            forks.abandon(self._conn)
        self._conn = None
        self._lock = threading.Lock()  # the parent's may have been held at fork time

    def _connection(self) -> Connection:
        if self._conn is None:
            conn = self.engine.connect()
            if not self._rollback:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            self._conn = conn
        return self._conn

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()
                conn.close()
            except DBAPIError:  # already broken; the pool replaces it
                pass

    def load_models(self, keys: Collection[Key]) -> list[Price]:
        if not keys:
            return []
        wanted = set(keys)
        rows = self._execute(_BY_KEYS, {"providers": sorted({p for p, _ in wanted}),
                                        "models": sorted({m for _, m in wanted})})
        return [price_from_row(r._mapping) for r in rows if (r.provider, r.model) in wanted]

    def aliases(self, provider: str) -> dict[str, str]:
        result: dict[str, str] = {}
        for row in self._execute(_ALIASES, {"provider": provider}):
            for alias in json_list(row.aliases, f"{provider}/{row.model}", "aliases"):
                result[alias] = row.model
        return result

    def models(self, provider: str) -> set[str]:
        return {row.model for row in self._execute(_MODELS, {"provider": provider})}

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

