"""Money as US dollars in any SQL client, each money column with an exact integer companion
(``<column>_pico``; rates ``<column>_nano``) and a check that keeps the pair null together.

SQLite cannot change a column's type: each table is rebuilt in place (renamed aside, created
anew, filled with one ``INSERT ... SELECT`` that turns the stored integers into REAL dollars
and keeps them as the companions, then the old one dropped and its indexes made again).
PostgreSQL already holds exact NUMERIC dollars: the companions are added and computed.
Either way every other column is copied unchanged, in one transaction.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_dollars"
down_revision = "0001_v0_1"
branch_labels = None
depends_on = None

#: The money columns of each table and their scale (decimal places of the stored integers).
MONEY = {
    "cost_records": {"cost_usd": 12, "reported_cost_usd": 12},
    "model_prices": {name: 9 for name in ("input", "cached_input", "cache_write",
                                          "cache_write_1h", "output", "web_search_per_1k")},
}
UNIT = {12: "pico", 9: "nano"}


def upgrade() -> None:
    conn = op.get_bind()
    for table, money in MONEY.items():
        nullable = {c["name"]: c["nullable"] for c in sa.inspect(conn).get_columns(table)}
        companions = {name: f"{name}_{UNIT[scale]}" for name, scale in money.items()}
        checks = [sa.CheckConstraint(f"({name} IS NULL) = ({companion} IS NULL)",
                                     name=f"ck_{table}_{companion}")
                  for name, companion in companions.items() if nullable[name]]
        if conn.dialect.name == "sqlite":
            _rebuild(conn, table, money, companions, checks)
        else:
            _add_companions(table, money, companions, nullable, checks)


def _rebuild(conn: sa.Connection, table: str, money: dict[str, int],
             companions: dict[str, str], checks: list[sa.CheckConstraint]) -> None:
    old = sa.Table(table, sa.MetaData(), autoload_with=conn)
    indexes = sa.inspect(conn).get_indexes(table)
    aside = f"_{table}_{down_revision}"
    op.rename_table(table, aside)
    op.create_table(
        table,
        *(sa.Column(c.name, sa.REAL() if c.name in money else c.type, nullable=c.nullable,
                    primary_key=c.primary_key) for c in old.columns),
        *(sa.Column(companions[name], sa.BigInteger(), nullable=old.c[name].nullable)
          for name in money),
        *checks,
    )
    names = [c.name for c in old.columns] + list(companions.values())
    values = [f"{c.name} / 1e{money[c.name]}" if c.name in money else c.name
              for c in old.columns] + list(money)
    op.execute(f"INSERT INTO {table} ({', '.join(names)}) SELECT {', '.join(values)} "
               f"FROM {aside}")
    op.drop_table(aside)
    for index in indexes:
        op.create_index(index["name"], table, [str(c) for c in index["column_names"]])


def _add_companions(table: str, money: dict[str, int], companions: dict[str, str],
                    nullable: dict[str, bool], checks: list[sa.CheckConstraint]) -> None:
    for companion in companions.values():
        op.add_column(table, sa.Column(companion, sa.BigInteger()))
    op.execute(f"UPDATE {table} SET "
               + ", ".join(f"{companions[name]} = ({name} * {10**scale})::bigint"
                           for name, scale in money.items())
               + " WHERE " + " OR ".join(f"{name} IS NOT NULL" for name in money))
    for name, companion in companions.items():
        if not nullable[name]:
            op.alter_column(table, companion, nullable=False)
    for check in checks:
        op.create_check_constraint(str(check.name), table, str(check.sqltext))


def downgrade() -> None:
    raise NotImplementedError("a ledger is only ever upgraded")
