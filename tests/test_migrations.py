"""Schema revisions on real SQLite and PostgreSQL: v0.1 ledgers written by the v0.1 code
(``fixtures/ledger_v0_1``) upgraded by ``cost-middleware migrate`` with every value kept; a
ledger not yet migrated keeps its records in the spool; new ledgers start at the head."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from test_money_columns import raw_connection

from cost_middleware.config import Settings
from cost_middleware.engine.tracker import CostTracker
from cost_middleware.ops.cli import main
from cost_middleware.records import CostRecord
from cost_middleware.schema import cost_records, metadata, model_prices, schema_version
from cost_middleware.storage import revision
from cost_middleware.storage.engine import ensure_schema, make_engine
from cost_middleware.storage.migrate import alembic_config
from cost_middleware.storage.revision import LedgerVersionError
from cost_middleware.storage.sinks import SQLSink
from cost_middleware.usage.model import Usage

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "ledger_v0_1"
#: The money columns of v0.1 and the scale of their stored integers.
MONEY = {"cost_records": {"cost_usd": 12, "reported_cost_usd": 12},
         "model_prices": {name: 9 for name in ("input", "cached_input", "cache_write",
                                               "cache_write_1h", "output", "web_search_per_1k")}}
COMPANION_SUFFIX = {12: "_pico", 9: "_nano"}


def _generator() -> ModuleType:
    """The fixtures' generator, for its value encoding (one rule for both sides)."""
    spec = importlib.util.spec_from_file_location("make_ledgers", FIXTURES / "make_ledgers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_ledgers = _generator()
EXPECTED: dict[str, dict[str, list[dict[str, Any]]]] = json.loads(
    (FIXTURES / "expected.json").read_text())


@pytest.fixture
def v0_1_url(db_url: str, tmp_path: Path) -> str:
    """A v0.1 ledger, as the v0.1 code wrote it, at ``db_url``."""
    if db_url.startswith("sqlite"):
        shutil.copyfile(FIXTURES / "ledger.sqlite", tmp_path / "cost.db")
    else:
        with raw_connection(db_url) as conn:
            conn.execute((FIXTURES / "ledger.postgresql.sql").read_text())
    return db_url


def raw_rows(url: str, table: str, columns: list[str]) -> list[tuple[Any, ...]]:
    order = ", ".join(c.name for c in metadata.tables[table].primary_key.columns)
    with raw_connection(url) as conn:
        return [tuple(r) for r in conn.execute(
            f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}").fetchall()]


def backend(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgresql"


def use(url: str, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COST_MIDDLEWARE_DATABASE_URL", url)
    monkeypatch.setenv("COST_MIDDLEWARE_SPOOL_DIR", str(tmp / "spool"))
    monkeypatch.setenv("COST_MIDDLEWARE_STATSD", "off")


# -- the revisions -------------------------------------------------------------------------


def test_head_is_the_last_script_and_every_revision_is_known() -> None:
    with sa.create_engine("sqlite://").connect() as conn:
        scripts = ScriptDirectory.from_config(alembic_config(conn))
    assert scripts.get_current_head() == revision.HEAD
    chain = [s.revision for s in reversed(list(scripts.walk_revisions()))]
    assert tuple(chain) == revision.KNOWN


def test_the_first_revision_is_the_released_v0_1_schema(v0_1_url: str) -> None:
    """Revision 0001 creates what the v0.1 code created (the fixture ledgers)."""
    engine = make_engine(v0_1_url)
    released = layout(engine)
    metadata.drop_all(engine)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), revision.V0_1)
    assert layout(engine) == released
    engine.dispose()


def test_upgrading_through_every_revision_gives_the_head_schema(db_url: str) -> None:
    """The migrations and ``schema.metadata`` (what a new database gets) agree."""
    engine = make_engine(db_url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "head")
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    migrated = layout(engine)
    metadata.drop_all(engine)
    assert ensure_schema(engine) == revision.HEAD
    assert layout(engine) == migrated
    engine.dispose()


def layout(engine: sa.Engine) -> dict[str, Any]:
    """Our tables: columns (in order, with types and nullability), keys, indexes and checks;
    on SQLite the very statements that made them."""
    inspector = sa.inspect(engine)
    tables = ("cost_records", "model_prices")
    found: dict[str, Any] = {table: {
        "columns": [(c["name"], str(c["type"]), c["nullable"])
                    for c in inspector.get_columns(table)],
        "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
        "indexes": sorted((i["name"], tuple(i["column_names"]))
                          for i in inspector.get_indexes(table)),
        "checks": sorted((c["name"], c["sqltext"]) for c in inspector.get_check_constraints(table)),
    } for table in tables}
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            found["sql"] = sorted(conn.exec_driver_sql(
                "SELECT name, sql FROM sqlite_master WHERE tbl_name IN (?, ?)", tables).all())
    return found


# -- migrate: a v0.1 ledger ------------------------------------------------------------------


def test_migrate_keeps_every_value_of_a_v0_1_ledger(
        v0_1_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    expected = EXPECTED[backend(v0_1_url)]
    before = {table: raw_rows(v0_1_url, table, list(expected[table][0]))
              for table in expected}
    use(v0_1_url, tmp_path, monkeypatch)
    assert main(["migrate"]) == 0
    assert (f"Migrated the ledger's schema from 0001_v0_1 to {revision.HEAD}"
            in capsys.readouterr().out)
    engine = make_engine(v0_1_url)
    with engine.connect() as conn:
        assert revision.stamped(conn) == revision.HEAD
        for table, rows in expected.items():
            t = metadata.tables[table]
            stored = conn.execute(sa.select(t).order_by(*t.primary_key.columns)).mappings().all()
            # Through SQLAlchemy: every column of every row as v0.1 read it, digit for digit,
            # and each exact companion the same amount as its money column.
            assert [{k: make_ledgers.encode(row[k]) for k in rows[0]} for row in stored] == rows
            for row in stored:
                for name, scale in MONEY[table].items():
                    assert row[name + COMPANION_SUFFIX[scale]] == row[name]
    engine.dispose()
    # Through the bare driver: the other columns byte for byte as they were; the companions
    # the integers v0.1 stored (SQLite) or the NUMERIC dollars scaled (PostgreSQL); the money
    # columns dollars.
    for table, rows in before.items():
        columns = list(expected[table][0])
        money = MONEY[table]
        after = raw_rows(v0_1_url, table, columns + [
            name + COMPANION_SUFFIX[scale] for name, scale in money.items()])
        assert len(after) == len(rows)
        for old, new in zip(rows, after, strict=True):
            values = dict(zip(columns, old, strict=True))
            stored = dict(zip(columns, new[:len(columns)], strict=True))
            companions = new[len(columns):]
            for (name, scale), units in zip(money.items(), companions, strict=True):
                old_value = values.pop(name)
                new_value = stored.pop(name)
                if old_value is None:
                    assert new_value is None and units is None
                elif backend(v0_1_url) == "sqlite":
                    assert units == old_value and new_value == old_value / 10.0**scale
                else:
                    assert new_value == old_value and units == old_value.scaleb(scale)
            assert stored == values


def test_migrate_twice_changes_nothing(v0_1_url: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    use(v0_1_url, tmp_path, monkeypatch)
    assert main(["migrate"]) == 0
    assert main(["migrate"]) == 0
    assert f"already at {revision.HEAD}" in capsys.readouterr().out


def test_a_failed_migration_leaves_the_ledger_as_it_was(v0_1_url: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """One transaction: a failure in the second table undoes the first, and the stamp."""
    with raw_connection(v0_1_url) as conn:
        conn.execute("ALTER TABLE model_prices ADD COLUMN input_nano BIGINT")  # in the way
    engine = make_engine(v0_1_url)
    before = layout(engine)
    use(v0_1_url, tmp_path, monkeypatch)
    with pytest.raises(sa.exc.SQLAlchemyError, match="input_nano"):
        main(["migrate"])
    with engine.connect() as conn:
        assert revision.stamped(conn) is None and revision.current(conn) == revision.V0_1
    assert layout(engine) == before
    assert count(v0_1_url) == len(EXPECTED[backend(v0_1_url)]["cost_records"])
    engine.dispose()


def test_a_v0_1_writer_is_refused_by_a_migrated_ledger(v0_1_url: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """v0.1 code still running after the upgrade writes the money column alone: refused (it
    spools), never stored without its exact companion."""
    use(v0_1_url, tmp_path, monkeypatch)
    assert main(["migrate"]) == 0
    with pytest.raises(Exception, match="ck_cost_records_cost_usd_pico"), \
            raw_connection(v0_1_url) as conn:
        conn.execute("INSERT INTO cost_records (record_id, created_at, provider, api, streamed, "
                     "partial, cost_usd) VALUES ('v0.1', '2025-01-01 00:00:00', 'p', 'a', "
                     "false, false, 490650000)")


def test_a_ledger_not_yet_migrated_keeps_records_in_the_spool_until_migrate(
        v0_1_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    use(v0_1_url, tmp_path, monkeypatch)
    before = count(v0_1_url)
    tracker = CostTracker(Settings.from_env())
    try:
        with caplog.at_level(logging.WARNING, "cost_middleware"):
            for _ in range(20):
                tracker.record(CostRecord(provider="openai", api="chat_completions",
                                          model="gpt-4o",
                                          usage=Usage(input_tokens=1000, output_tokens=10)))
            assert tracker.flush(20)
        told = [r.getMessage() for r in caplog.records if "cost-middleware migrate" in r.message]
        assert told and "0001_v0_1" in told[0]
        assert count(v0_1_url) == before  # nothing written into the old layout
        # The commands refuse it too, and say what to do.
        assert main(["report"]) == 2
        assert "cost-middleware migrate" in capsys.readouterr().err
        assert main(["migrate"]) == 0
        # The worker's next attempt finds the ledger migrated, and replays the spool.
        deadline = time.monotonic() + 30
        while count(v0_1_url) < before + 20 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        tracker.close()
    assert count(v0_1_url) == before + 20
    engine = make_engine(v0_1_url)
    with engine.connect() as conn:
        costs = conn.execute(sa.select(cost_records.c.cost_usd, cost_records.c.cost_usd_pico)
                             .where(cost_records.c.model == "gpt-4o",
                                    cost_records.c.api == "chat_completions",
                                    cost_records.c.input_tokens == 1000)).all()
    engine.dispose()
    # Priced on the way in at the migrated rates (gpt-4o: 2.50 in, 10 out per 1M tokens).
    assert {tuple(c) for c in costs} == {(Decimal("0.0026"), Decimal("0.0026"))}


def count(url: str) -> int:
    with raw_connection(url) as conn:
        return int(conn.execute("SELECT count(*) FROM cost_records").fetchone()[0])


def test_the_sink_refuses_a_ledger_at_another_revision(v0_1_url: str) -> None:
    engine = make_engine(v0_1_url)
    sink = SQLSink(engine)
    record = CostRecord(provider="p", api="a", model=None, usage=None)
    with pytest.raises(LedgerVersionError, match=r"0001_v0_1.*cost-middleware migrate"):
        sink.write([record])
    with engine.begin() as conn:
        schema_version.create(conn)
        conn.execute(schema_version.insert().values(version_num="9999_future"))
    with pytest.raises(LedgerVersionError, match=r"9999_future.*newer cost-middleware"):
        sink.write([record])
    sink.close()
    engine.dispose()


# -- new and unstamped ledgers ---------------------------------------------------------------


def test_a_new_database_gets_the_head_schema_stamped(db_url: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    use(db_url, tmp_path, monkeypatch)
    assert main(["migrate"]) == 0
    assert f"from nothing (a new database) to {revision.HEAD}" in capsys.readouterr().out
    engine = make_engine(db_url)
    with engine.connect() as conn:
        assert revision.stamped(conn) == revision.HEAD
    engine.dispose()


def test_tables_made_from_the_metadata_are_recognised_as_the_head(db_url: str) -> None:
    engine = make_engine(db_url)
    metadata.create_all(engine)  # as a user managing their own migrations might
    with engine.connect() as conn:
        assert revision.stamped(conn) is None
        assert revision.current(conn) == revision.HEAD
    assert ensure_schema(engine) == revision.HEAD
    with engine.connect() as conn:
        assert revision.stamped(conn) == revision.HEAD
    engine.dispose()


@pytest.fixture
def prices_only_v0_1(v0_1_url: str) -> Iterator[str]:
    """A v0.1 ledger whose ``cost_records`` was dropped: known by ``model_prices`` alone."""
    with raw_connection(v0_1_url) as conn:
        conn.execute("DROP TABLE cost_records")
    yield v0_1_url


def test_a_v0_1_ledger_is_known_by_either_table(prices_only_v0_1: str) -> None:
    engine = make_engine(prices_only_v0_1)
    with engine.connect() as conn:
        assert revision.current(conn) == revision.V0_1
    assert ensure_schema(engine) == revision.V0_1  # left as it is: nothing created
    assert not sa.inspect(engine).has_table(cost_records.name)
    assert sa.inspect(engine).has_table(model_prices.name)
    engine.dispose()
