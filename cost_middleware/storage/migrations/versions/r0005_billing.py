"""Billed dimensions the ledger used to drop: each record's service tier and audio tokens, and
each price row's audio rates (with exact ``_nano`` companions) and service-tier rates.

``cost_records`` gains ``service_tier`` and ``audio_input_tokens`` / ``audio_output_tokens``
(null on every existing record: nobody counted them). ``model_prices`` gains ``audio_input`` /
``audio_output`` (null: no audio rate, audio tokens cost the text rate) and ``service_tiers``
(JSON text, ``{}`` on every existing row: no tier rates).

The new columns come after the existing companions, where PostgreSQL's ADD COLUMN puts them.
SQLite cannot add a check constraint to a table: it is rebuilt in place as in 0002 (renamed
aside, made anew with every column and check, filled by one ``INSERT ... SELECT``, the old one
dropped and its indexes made again), so it ends up exactly as a new ledger's.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005_billing"
down_revision = "0004_budgets"
branch_labels = None
depends_on = None

#: The new rate columns (USD per 1M tokens, nine places, companion ``<name>_nano``).
AUDIO_RATES = ("audio_input", "audio_output")


def _rate(name: str) -> sa.Column[Any]:
    money: sa.types.TypeEngine[Any] = (
        sa.REAL() if op.get_bind().dialect.name == "sqlite" else sa.Numeric(30, 9))
    return sa.Column(name, money)


def _added() -> dict[str, list[sa.Column[Any]]]:
    """The new columns of each table, in their order."""
    return {
        "cost_records": [sa.Column("service_tier", sa.String(32)),
                         sa.Column("audio_input_tokens", sa.BigInteger()),
                         sa.Column("audio_output_tokens", sa.BigInteger())],
        "model_prices": [*(_rate(name) for name in AUDIO_RATES),
                         sa.Column("service_tiers", sa.Text(), nullable=False),
                         *(sa.Column(f"{name}_nano", sa.BigInteger()) for name in AUDIO_RATES)],
    }


#: The value each existing row gets in a new NOT NULL column.
FILL = {"service_tiers": "'{}'"}
#: The checks that keep each new rate and its companion null together.
CHECKS = {"cost_records": [],
          "model_prices": [(f"ck_model_prices_{name}_nano",
                            f"({name} IS NULL) = ({name}_nano IS NULL)") for name in AUDIO_RATES]}


def upgrade() -> None:
    conn = op.get_bind()
    for table, columns in _added().items():
        if conn.dialect.name == "sqlite":
            _rebuild(conn, table, columns)
        else:
            _add(table, columns)


def _rebuild(conn: sa.Connection, table: str, columns: list[sa.Column[Any]]) -> None:
    inspector = sa.inspect(conn)
    old = sa.Table(table, sa.MetaData(), autoload_with=conn)
    indexes = inspector.get_indexes(table)
    # Reflection lists checks by name; keep them in the order the table declares them.
    made = str(conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' "
                                    "AND name = ?", (table,)).scalar())
    checks = sorted(((str(c["name"]), str(c["sqltext"]))
                     for c in inspector.get_check_constraints(table)),
                    key=lambda check: made.index(check[0]))
    aside = f"_{table}_{down_revision}"
    op.rename_table(table, aside)
    op.create_table(
        table,
        *(sa.Column(c.name, c.type, nullable=c.nullable, primary_key=c.primary_key)
          for c in old.columns),
        *columns,
        *(sa.CheckConstraint(text, name=name) for name, text in checks + CHECKS[table]),
    )
    kept = [c.name for c in old.columns]
    filled = [name for name in FILL if name in {c.name for c in columns}]
    op.execute(f"INSERT INTO {table} ({', '.join(kept + filled)}) "
               f"SELECT {', '.join(kept + [FILL[name] for name in filled])} FROM {aside}")
    op.drop_table(aside)
    for index in indexes:
        op.create_index(index["name"], table, [str(c) for c in index["column_names"]])


def _add(table: str, columns: list[sa.Column[Any]]) -> None:
    for column in columns:
        required = not column.nullable
        column.nullable = True
        op.add_column(table, column)
        if required:
            op.execute(f"UPDATE {table} SET {column.name} = {FILL[column.name]}")
            op.alter_column(table, column.name, nullable=False)
    for name, text in CHECKS[table]:
        op.create_check_constraint(name, table, text)


def downgrade() -> None:
    raise NotImplementedError("a ledger is only ever upgraded")
