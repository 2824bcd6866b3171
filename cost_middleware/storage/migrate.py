"""``cost-middleware migrate``: upgrade a ledger's schema to this version's head with Alembic.

A new database gets the head schema at once, as at start-up. A ledger without a stamp (v0.1
stamped nothing) is recognised by its layout and stamped with that revision first. All of it
runs in one transaction that first takes the ledger's write lock (SQLite ``BEGIN IMMEDIATE``,
a PostgreSQL advisory lock), so a failed upgrade leaves the ledger as it was and two migrations
started together run one after the other. Loads Alembic: only the CLI imports this module.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from cost_middleware.storage import revision
from cost_middleware.storage.engine import ensure_schema

#: The Alembic environment: ``env.py`` and ``versions/``.
MIGRATIONS = Path(__file__).with_name("migrations")
#: Key of the PostgreSQL advisory lock migrations hold ("cmig" in ASCII).
_PG_LOCK = 0x636D6967


def alembic_config(conn: sa.Connection) -> Config:
    """Alembic's configuration for running our migrations on ``conn`` (no ``alembic.ini``)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    return config


def migrate(engine: sa.Engine) -> tuple[str | None, str]:
    """Upgrade the ledger to :data:`~cost_middleware.storage.revision.HEAD`; returns the
    revision it was at (None: a new database) and the one it is at now.

    Raises :class:`~cost_middleware.storage.revision.LedgerVersionError` for a revision this
    version does not know (a newer cost-middleware migrated it).
    """
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK})
        before = revision.current(conn)
        if before is not None:
            if before not in revision.KNOWN:
                raise revision.LedgerVersionError(revision.describe(before))
            config = alembic_config(conn)
            if revision.stamped(conn) is None:
                command.stamp(config, before)
            command.upgrade(config, "head")
    if before is None:
        ensure_schema(engine)
    return before, revision.HEAD
