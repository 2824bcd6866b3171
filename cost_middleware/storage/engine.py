"""The ledger's SQLAlchemy engine: backend checks, connection settings and timeouts, the tables
of a new (or head) ledger.

Only SQLite (default driver) and PostgreSQL (psycopg 3) are supported: the sinks' fast write
paths are written for those two drivers.
"""

from __future__ import annotations

import os
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.pool import StaticPool

from cost_middleware import config
from cost_middleware.config import ConfigError
from cost_middleware.schema import metadata, schema_version
from cost_middleware.storage import revision

#: How long a SQLite writer waits for another process's write lock.
SQLITE_BUSY_TIMEOUT_MS = 5_000
#: PostgreSQL: fail a connect, or a write the network stopped acknowledging, instead of
#: hanging for the kernel's default TCP timeout (minutes): the batcher then spools.
PG_CONNECT_TIMEOUT_S = 5
PG_TCP_USER_TIMEOUT_MS = 10_000
#: The writer session's bound on one statement (e.g. waiting behind a migration's lock).
PG_STATEMENT_TIMEOUT_MS = 60_000


def make_engine(url: str) -> sa.Engine:
    """An engine tuned for the ledger. Creates nothing in the database.

    SQLite: WAL, ``synchronous=NORMAL``, a busy timeout, usable from any thread.
    PostgreSQL: the psycopg 3 driver (``postgresql://`` means it), ``pool_pre_ping``,
    connect and TCP timeouts. Either way, a pooled connection inherited across ``fork`` is
    discarded at checkout instead of being shared with the parent.
    """
    parsed = sa.make_url(url)
    safe = parsed.render_as_string(hide_password=True)
    backend = parsed.get_backend_name()
    if backend in ("postgres", "postgresql"):
        if parsed.drivername in ("postgres", "postgresql"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        if parsed.get_driver_name() != "psycopg":
            raise ConfigError(config.DATABASE_URL, safe,
                              "PostgreSQL needs the psycopg 3 driver: postgresql+psycopg://")
        defaults = {"connect_timeout": PG_CONNECT_TIMEOUT_S,
                    "tcp_user_timeout": PG_TCP_USER_TIMEOUT_MS}
        connect_args = {k: v for k, v in defaults.items() if k not in parsed.query}
        engine = sa.create_engine(parsed, pool_pre_ping=True, hide_parameters=True,
                                  connect_args=connect_args, pool_reset_on_return=None)
    elif backend == "sqlite":
        if parsed.get_driver_name() != "pysqlite":
            raise ConfigError(config.DATABASE_URL, safe, "SQLite needs the default driver: sqlite://")
        in_memory = parsed.database in (None, "", ":memory:")
        # An in-memory database exists once per connection: share one, or records vanish.
        engine = sa.create_engine(parsed, hide_parameters=True, pool_reset_on_return=None,
                                  connect_args={"check_same_thread": False},
                                  **({"poolclass": StaticPool} if in_memory else {}))
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        raise ConfigError(config.DATABASE_URL, safe, "only SQLite and PostgreSQL are supported")
    event.listen(engine, "reset", _rollback_quietly)
    event.listen(engine, "connect", _remember_pid)
    event.listen(engine, "checkout", _refuse_inherited)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS:d}")
    finally:
        cursor.close()


def _rollback_quietly(dbapi_connection: Any, record: Any, state: Any) -> None:
    """The pool's rollback of a returned connection (reset on return is ours, not the
    pool's): a connection the database or the network dropped cannot roll back, and the pool
    would log that with two chained tracebacks into the app's log at every outage. Ours marks
    it to be replaced at its next checkout; whoever used it already reported the failure."""
    if state.transaction_was_reset or state.terminate_only or not state.asyncio_safe:
        return  # rolled back already, or about to be closed
    try:
        dbapi_connection.rollback()
    except Exception as error:
        if record is not None:
            record.invalidate(error, soft=True)


def _remember_pid(_dbapi_connection: Any, record: Any) -> None:
    record.info["pid"] = os.getpid()


def _refuse_inherited(_dbapi_connection: Any, record: Any, proxy: Any) -> None:
    # SQLAlchemy's documented recipe for pools that cross os.fork(): it guards every
    # checkout, by any caller of the engine, at one getpid() per checkout (the sinks and
    # price sources keep their connections, so that is not per record).
    if record.info.get("pid") != os.getpid():
        record.dbapi_connection = proxy.dbapi_connection = None
        raise exc.DisconnectionError("connection was opened by the parent process")


def ensure_schema(engine: sa.Engine) -> str:
    """Give a new database the head schema (the tables, stamped with the head revision) and a
    head ledger the tables it lacks; returns the ledger's revision.

    A ledger at another revision is left as it is: ``cost-middleware migrate`` upgrades it.
    Safe when several processes start at once: two can both see a table missing (or the stamp)
    and both create it; the loser gets an "already exists" error, retries, and then finds it.
    """
    attempts = 5
    for attempt in range(1, attempts):
        try:
            return _ensure_schema(engine)
        except exc.DBAPIError:
            time.sleep(0.05 * attempt)
    return _ensure_schema(engine)  # the last attempt's error is raised


def _ensure_schema(engine: sa.Engine) -> str:
    with engine.begin() as conn:
        found = revision.current(conn)
        if found is None or found == revision.HEAD:
            metadata.create_all(conn)
            if revision.stamped(conn) is None:
                conn.execute(schema_version.insert().values(version_num=revision.HEAD))
            found = revision.HEAD
    return found
