"""Opening the ledger: the engine, the tables, and the bundled prices where prices live in SQL;
for the commands, reading a ledger without creating one, and why a ledger cannot be reached.

Loads SQLAlchemy: import it where the database is about to be used, not at package import.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc

from cost_middleware import config
from cost_middleware.config import Settings
from cost_middleware.pricing.admin import ensure_seeded
from cost_middleware.storage.engine import ensure_schema, make_engine
from cost_middleware.storage.revision import HEAD, LedgerVersionError, current, describe

log = logging.getLogger("cost_middleware")

#: How to point a command at the app's ledger (a relative SQLite path is the current folder's).
WHERE_HINT = f"run from the app's folder or set {config.DATABASE_URL}"


class LedgerUnavailable(Exception):
    """The ledger cannot be read; the message is one line: what, where, the fix."""


def open_ledger(settings: Settings, *, seed: bool = True, strict: bool = False) -> Engine:
    """The engine of ``settings.database_url``, with the tables created if missing.

    With ``seed``, an empty ``model_prices`` is filled from the bundled catalog, unless the
    prices come from a file (``settings.prices_file``), which then is the only price source.

    A ledger at another schema revision is never migrated here (an operator runs
    ``cost-middleware migrate``) nor seeded. With ``strict`` (the commands) that raises
    :class:`LedgerVersionError`; otherwise (the middleware's worker) one warning says so, and
    the sink refuses to write, so records wait in the spool until the ledger is migrated.
    """
    engine = make_engine(settings.database_url)
    found = ensure_schema(engine)
    if found != HEAD:
        where = ledger_name(settings.database_url)
        if strict:
            engine.dispose()
            raise LedgerVersionError(f"{where}: {describe(found)}")
        log.warning("cost_middleware: %s: %s", where, describe(found))
    elif seed and settings.prices_file is None:
        ensure_seeded(engine)
    return engine


def read_ledger(settings: Settings) -> Engine:
    """The engine of an existing ledger at the head revision, for commands that only read:
    creates no file, table or row. Raises :class:`LedgerUnavailable` when there is no ledger
    there, :class:`LedgerVersionError` for one at another revision."""
    url = settings.database_url
    where = ledger_name(url)
    if absent_file(url):
        raise LedgerUnavailable(f"no ledger at {where} ({WHERE_HINT})")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            found = current(conn)
    except BaseException:
        engine.dispose()
        raise
    if found != HEAD:
        engine.dispose()
        if found is None:
            raise LedgerUnavailable(f"no ledger at {where} (no tables there: {WHERE_HINT}, "
                                    "or run `cost-middleware init`)")
        raise LedgerVersionError(f"{where}: {describe(found)}")
    return engine


def ledger_name(url: str) -> str:
    """``url`` as shown to people: the password masked, a relative SQLite path made absolute."""
    parsed = sa.make_url(url)
    path = _sqlite_path(parsed)
    if path is not None:
        parsed = parsed.set(database=os.path.abspath(path))
    return parsed.render_as_string(hide_password=True)


def absent_file(url: str) -> bool:
    """Whether ``url`` is a SQLite file missing from a folder that exists: opening it would
    create it. (In a missing folder, opening fails: :func:`unreachable` says so.)"""
    path = _sqlite_path(sa.make_url(url))
    return path is not None and not path.exists() and path.parent.is_dir()


def unreachable(url: str, error: BaseException) -> str | None:
    """One line (what, where, the fix) for a failure to reach or read the ledger at ``url``, or
    None when ``error`` is not one (a bad value or a bug: those are reported as they are)."""
    if isinstance(error, LedgerUnavailable):
        return str(error)
    where = ledger_name(url)
    if isinstance(error, ImportError) and (error.name or "").partition(".")[0] == "psycopg":
        return (f"{where}: {type(error).__name__}: {error}; PostgreSQL needs the psycopg 3 "
                "driver: pip install 'cost-middleware[postgresql]'")
    if not isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError):
        return None
    # The driver's own words, on one line (SQLAlchemy adds its class and a link).
    reason = " ".join(line.strip() for line in str(error.orig).splitlines() if line.strip())
    return f"{where}: {type(error).__name__}: {reason}; {_fix(sa.make_url(url), reason)}"


def _fix(url: sa.URL, reason: str) -> str:
    path = _sqlite_path(url)
    if path is not None and not path.parent.is_dir():
        return f"the folder {path.parent.absolute()} does not exist: create it, or {WHERE_HINT}"
    if "password authentication failed" in reason:
        return f"check the user and password in {config.DATABASE_URL}"
    if url.get_backend_name() != "sqlite" and f'database "{url.database}" does not exist' in reason:
        return f"create it (createdb {url.database}) or set {config.DATABASE_URL}"
    return f"check that the database is up and {config.DATABASE_URL} names it"


def _sqlite_path(url: sa.URL) -> Path | None:
    """The file of a SQLite URL (relative to the current folder), or None: not SQLite, in
    memory, or a ``file:`` URI (which SQLite resolves itself)."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    if url.query.get("uri"):
        return None
    return Path(url.database)
