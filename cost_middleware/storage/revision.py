"""Which schema revision a ledger is at, read with plain SQL (no Alembic), and the refusal to
use one this code does not write.

The revision is the Alembic stamp in :data:`~cost_middleware.schema.VERSION_TABLE`. A ledger
without a stamp is recognised by its layout: v0.1 stamped nothing, and tables created from
:data:`~cost_middleware.schema.metadata` by hand are stamped by nobody.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cost_middleware.schema import VERSION_TABLE, cost_records, model_prices, schema_version

#: The v0.1 layout (money as integer pico- and nano-dollars on SQLite).
V0_1 = "0001_v0_1"
#: Money as dollars, with exact integer companions.
DOLLARS = "0002_dollars"
#: ``model_price_deletions``: the audit trail of ``prices delete``.
PRICE_DELETIONS = "0003_price_deletions"
#: ``budgets``: spend limits.
BUDGETS = "0004_budgets"
#: Billed dimensions: service tiers and audio tokens on records, audio and tier rates on prices.
BILLING = "0005_billing"
#: ``cost_rollups``: hourly totals of the records.
ROLLUPS = "0006_rollups"
#: The revision this code writes (a test checks it is the migration scripts' head).
HEAD = ROLLUPS

#: Every revision this version can upgrade from.
KNOWN = (V0_1, DOLLARS, PRICE_DELETIONS, BUDGETS, BILLING, ROLLUPS)


class LedgerVersionError(ValueError):
    """The ledger's schema is not the revision this code writes: nothing is written to it."""


def stamped(conn: Connection) -> str | None:
    """The revision stamped in the ledger, or None (no stamp yet)."""
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return None
    return conn.execute(sa.select(schema_version.c.version_num)).scalar()


def current(conn: Connection) -> str | None:
    """The ledger's revision: its stamp, else the one its layout shows; None for a database
    holding neither table (a new ledger)."""
    found = stamped(conn)
    if found is not None:
        return found
    inspector = sa.inspect(conn)
    if inspector.has_table("cost_rollups"):
        return ROLLUPS
    if inspector.has_table(cost_records.name) and "service_tier" in {
            c["name"] for c in inspector.get_columns(cost_records.name)}:
        return BILLING
    if inspector.has_table("budgets"):
        return BUDGETS
    if inspector.has_table("model_price_deletions"):
        return PRICE_DELETIONS
    for table, companion in ((cost_records, "cost_usd_pico"), (model_prices, "input_nano")):
        if inspector.has_table(table.name):
            names = {c["name"] for c in inspector.get_columns(table.name)}
            return DOLLARS if companion in names else V0_1
    return None


def describe(revision: str | None) -> str:
    """Why a ledger at ``revision`` is refused, and what to do about it."""
    if revision is None:
        return "the ledger has no tables yet: start the middleware or run `cost-middleware init`"
    if revision in KNOWN:
        return (f"the ledger's schema is at revision {revision}, this version writes {HEAD}: "
                "run `cost-middleware migrate` (records wait in the spool until then)")
    return (f"the ledger's schema is at revision {revision}, unknown to this version (which "
            f"writes {HEAD}): it was migrated by a newer cost-middleware; upgrade this one")


def require_head(conn: Connection) -> None:
    """Raise :class:`LedgerVersionError` unless the ledger is at :data:`HEAD`."""
    revision = current(conn)
    if revision != HEAD:
        raise LedgerVersionError(describe(revision))
