"""Hourly and daily rollups on real SQLite and PostgreSQL: always equal to a GROUP BY of the
records, through writes, duplicates, spool replays, reprice and rebuilds; and the reads over
them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects.postgresql import insert as postgresql_insert

from cost_middleware.engine.spool import Spool
from cost_middleware.ops.cli import main
from cost_middleware.pricing.admin import reprice, set_price
from cost_middleware.pricing.book import PriceBook
from cost_middleware.pricing.sql_source import SQLPriceSource
from cost_middleware.records import CostRecord
from cost_middleware.schema import ROLLUP_TOKENS, cost_records, cost_rollups, cost_rollups_daily
from cost_middleware.storage import rollups
from cost_middleware.storage.engine import ensure_schema, make_engine
from cost_middleware.storage.sinks import SQLSink
from cost_middleware.usage.model import Usage

T0 = datetime(2025, 3, 1, 9, 40, tzinfo=UTC)


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(db_url)
    ensure_schema(engine)
    yield engine
    engine.dispose()


def record(i: int, *, model: str | None = "m", tenant: str | None = "t", route: str | None = "/r",
           cost: Decimal | None = Decimal("0.000001"), usage: bool = True,
           at: datetime = T0) -> CostRecord:
    return CostRecord(
        provider="openai", api="chat_completions", model=model, tenant=tenant, route=route,
        usage=Usage(input_tokens=100 + i, output_tokens=7, cached_input_tokens=i % 50,
                    reasoning_tokens=3 if i % 2 else None) if usage else None,
        cost_usd=cost if usage else None, record_id=f"rec-{i}", created_at=at)


def from_records(engine: sa.Engine, unit: str = "hour") -> dict[tuple[Any, ...], tuple[int, ...]]:
    """The rollups as they must be: summed here, in Python, from the stored records."""
    sums: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * (len(ROLLUP_TOKENS) + 4))
    with engine.connect() as conn:
        for row in conn.execute(sa.select(cost_records)):
            at = row.created_at.replace(tzinfo=UTC) if row.created_at.tzinfo is None \
                else row.created_at.astimezone(UTC)
            start = at.replace(minute=0, second=0, microsecond=0)
            key = (start.replace(hour=0) if unit == "day" else start, row.provider, row.model,
                   row.tenant, row.route)
            acc = sums[key]
            acc[0] += 1
            for i, name in enumerate(ROLLUP_TOKENS, 1):
                acc[i] += getattr(row, name) or 0
            acc[-3] += row.cost_usd_pico is None
            acc[-2] += row.input_tokens is None
            acc[-1] += int(row.cost_usd_pico.scaleb(12)) if row.cost_usd_pico is not None else 0
    # Only absurd records reach the bound, where a rollup saturates.
    return {k: tuple(min(n, rollups.SUM_CAP) for n in v) for k, v in sums.items()}


def stored(engine: sa.Engine, unit: str = "hour") -> dict[tuple[Any, ...], tuple[int, ...]]:
    """The rollups as stored, keys decoded (null where the records had null)."""
    table = rollups.LEVELS[unit]
    u = table.c
    found = {}
    with engine.connect() as conn:
        for row in conn.execute(sa.select(table)):
            if not row.requests:
                continue
            start = row[0]
            hour = start.replace(tzinfo=UTC) if start.tzinfo is None else start.astimezone(UTC)
            key = (hour, row.provider, None if row.nulls & 1 else row.model,
                   None if row.nulls & 2 else row.tenant, None if row.nulls & 4 else row.route)
            found[key] = (row.requests, *(getattr(row, n) for n in ROLLUP_TOKENS), row.unpriced,
                          row.no_usage, int(row.cost_usd_pico.scaleb(12)))
        # The money column reads as the dollars of its companion.
        for dollars, pico in conn.execute(sa.select(u.cost_usd, u.cost_usd_pico)):
            assert abs(Decimal(str(dollars)) - pico) < Decimal("1e-9")
    return found


def assert_in_step(engine: sa.Engine) -> None:
    for unit in rollups.LEVELS:
        assert stored(engine, unit) == from_records(engine, unit), unit


def test_writes_and_duplicates_are_counted_once(engine: sa.Engine) -> None:
    batch = [record(i, at=T0 + timedelta(minutes=7 * i), tenant=None if i % 3 else "t",
                    model="" if i % 5 == 0 else "m", cost=None if i % 4 == 0 else Decimal(i))
             for i in range(40)]
    sink = SQLSink(engine)
    try:
        assert sink.write(batch) == 40
        assert_in_step(engine)
        # A retry of the whole batch, an overlapping one, and one repeating a record twice.
        assert sink.write(batch) == 0
        more = [record(i, at=T0 + timedelta(hours=1)) for i in range(30, 60)]
        assert sink.write(more) == 20
        assert sink.write([record(99), record(99), record(7)]) == 1
    finally:
        sink.close()
    assert_in_step(engine)
    with engine.connect() as conn:
        # '' and null stay apart: a model of '' is not a missing model.
        assert {k[2] for k in stored(engine)} == {"", "m"}
        assert conn.execute(sa.select(sa.func.count()).select_from(cost_records)).scalar() == 61


def test_a_spool_replay_adds_only_what_was_missing(engine: sa.Engine, tmp_path: Path) -> None:
    records = [record(i, at=T0 + timedelta(minutes=i)) for i in range(30)]
    sink = SQLSink(engine)
    try:
        sink.write(records[:10])  # stored, then spooled too (the answer was lost)
        spool = Spool(str(tmp_path / "spool"))
        spool.append(records)
        spool.close()
        Spool(str(tmp_path / "spool")).replay(sink)
    finally:
        sink.close()
    assert_in_step(engine)
    assert sum(v[0] for v in stored(engine).values()) == 30  # the first ten counted once


def test_reprice_moves_the_rollups_with_the_costs(engine: sa.Engine) -> None:
    set_price(engine, "openai", "gpt-x", input=Decimal("1"), output=Decimal("2"),
              effective_from=datetime(2020, 1, 1, tzinfo=UTC))
    sink = SQLSink(engine)
    try:
        sink.write([CostRecord(provider="openai", api="chat_completions", model="gpt-x",
                               usage=Usage(input_tokens=1000 * (i + 1), output_tokens=10),
                               tenant="t", route="/r", record_id=f"r{i}",
                               created_at=T0 + timedelta(minutes=20 * i)) for i in range(6)])
    finally:
        sink.close()
    assert sum(v[-3] for v in stored(engine).values()) == 6  # all unpriced so far
    book = PriceBook(SQLPriceSource(engine))
    try:
        assert reprice(engine, book, T0 - timedelta(days=1), only_unpriced=True) == 6
        assert_in_step(engine)
        set_price(engine, "openai", "gpt-x", input=Decimal("3"),
                  effective_from=datetime(2020, 1, 1, tzinfo=UTC), on_change=book.invalidate)
        assert reprice(engine, book, T0 - timedelta(days=1)) == 6
    finally:
        book.close()
    assert_in_step(engine)
    with engine.connect() as conn:
        spent = rollups.spend(conn, "tenant", "t", None, None)
    assert spent == sum(Decimal(3 * 1000 * (i + 1) + 20) / 10**6 for i in range(6))


def test_rollups_build_makes_them_anew(engine: sa.Engine, db_url: str,
                                       monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    sink = SQLSink(engine)
    try:
        sink.write([record(i, at=T0 + timedelta(minutes=13 * i)) for i in range(20)])
    finally:
        sink.close()
    with engine.begin() as conn:  # a ledger changed by hand: rollups out of step
        conn.execute(sa.delete(cost_records).where(cost_records.c.record_id == "rec-3"))
        conn.execute(sa.update(cost_rollups).values(requests=cost_rollups.c.requests + 5))
    assert stored(engine) != from_records(engine)
    monkeypatch.setenv("COST_MIDDLEWARE_DATABASE_URL", db_url)
    monkeypatch.setenv("COST_MIDDLEWARE_STATSD", "off")
    monkeypatch.chdir(tmp_path)
    assert main(["rollups", "build", "--since", "2025-03-01T11:30:00Z"]) == 0
    assert "from 2025-03-01 11:00 UTC on" in capsys.readouterr().out
    assert stored(engine) != from_records(engine)  # the hours before were left as they were
    assert main(["rollups", "build"]) == 0
    assert_in_step(engine)


def test_the_migration_builds_rollups_for_an_existing_ledger(engine: sa.Engine) -> None:
    from cost_middleware.storage.migrate import migrate

    sink = SQLSink(engine)
    try:
        sink.write([record(i, at=T0 + timedelta(minutes=31 * i)) for i in range(25)])
    finally:
        sink.close()
    expected = from_records(engine)
    with engine.begin() as conn:  # the ledger as revision 0005 left it
        cost_rollups.drop(conn)
        cost_rollups_daily.drop(conn)
        conn.execute(sa.text("UPDATE cost_middleware_version SET version_num = '0005_billing'"))
    assert migrate(engine) == ("0005_billing", "0006_rollups")
    assert stored(engine) == expected
    assert_in_step(engine)


def test_reads_split_at_whole_hours_and_match_the_records(engine: sa.Engine) -> None:
    sink = SQLSink(engine)
    try:
        sink.write([record(i, at=T0 + timedelta(minutes=9 * i), tenant=f"t{i % 3}",
                           cost=Decimal(i) / 1000) for i in range(50)])
    finally:
        sink.close()
    c = cost_records.c
    for since, until in [(None, None), (T0 + timedelta(minutes=25), None),
                         (None, T0 + timedelta(hours=4, minutes=1)),
                         (T0 + timedelta(minutes=1), T0 + timedelta(minutes=50)),
                         (T0.replace(minute=0) + timedelta(hours=1),
                          T0.replace(minute=0) + timedelta(hours=5))]:
        with engine.connect() as conn:
            found, source = rollups.totals(conn, ("tenant",), "hour", since, until)
            query = sa.select(c.tenant, sa.func.count(), sa.func.sum(c.cost_usd_pico))
            if since:
                query = query.where(c.created_at >= since)
            if until:
                query = query.where(c.created_at < until)
            raw = {t: (n, Decimal(p)) for t, n, p in conn.execute(query.group_by(c.tenant))}
        by_tenant: dict[str, tuple[int, Decimal]] = {}
        for (tenant, _hour), part in found.items():
            n, cost = by_tenant.get(tenant, (0, Decimal(0)))
            by_tenant[tenant] = (n + part.requests, cost + (part.cost_usd or 0))
        assert by_tenant == raw, (since, until, source)


# -- any records -------------------------------------------------------------------------------

NAMES = st.sampled_from(["a", "b", "", "<script>", "テ"]) | st.none()


@st.composite
def records(draw: st.DrawFn) -> list[CostRecord]:
    count = draw(st.integers(1, 25))
    # New ids: the SQLite sink sums the batch in Python; repeated ones (duplicates in and
    # across batches): SQL sums the rows it inserted.
    new = draw(st.booleans())
    made = []
    for _ in range(count):
        made.append(CostRecord(
            provider=draw(st.sampled_from(["openai", "anthropic"])), api="chat",
            model=draw(NAMES), tenant=draw(NAMES), route=draw(NAMES),
            # 2**62: a few of them pass the bound, where sums saturate.
            usage=draw(st.none() | st.builds(
                Usage, input_tokens=st.integers(0, 10**9) | st.just(2**62),
                output_tokens=st.integers(0, 10**6))),
            cost_usd=draw(st.none() | st.decimals(0, 1000, places=12)),
            record_id=(f"u{draw(st.uuids()).hex}" if new
                       else f"r{draw(st.integers(0, count))}"),
            created_at=T0 + timedelta(seconds=draw(st.integers(0, 3 * 86_400)))))
    return made


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(records(), min_size=1, max_size=3))
def test_any_records_roll_up_exactly(engine: sa.Engine,
                                     batches: list[list[CostRecord]]) -> None:
    with engine.begin() as conn:
        for table in (cost_records, cost_rollups, cost_rollups_daily):
            conn.execute(sa.delete(table))
    sink = SQLSink(engine)
    try:
        for batch in batches:
            sink.write(batch)
    finally:
        sink.close()
    assert_in_step(engine)
    with engine.connect() as conn:
        whole = sum(t.cost_pico for t in rollups.totals(conn, (), None)[0].values())
        raw = conn.execute(sa.select(sa.func.sum(sa.type_coerce(
            cost_records.c.cost_usd_pico, sa.BigInteger)))).scalar()
    assert whole == int(raw or 0)



def test_reads_split_at_whole_days_and_match_the_records(engine: sa.Engine) -> None:
    start = T0.replace(hour=0, minute=0)
    sink = SQLSink(engine)
    try:  # three days and a bit, a record every 47 minutes
        sink.write([record(i, at=start + timedelta(minutes=47 * i), tenant=f"t{i % 2}",
                           cost=Decimal(i) / 1000) for i in range(110)])
    finally:
        sink.close()
    c = cost_records.c
    day = timedelta(days=1)
    for since, until in [(None, None), (start + day, None), (None, start + 2 * day),
                         (start + timedelta(hours=5, minutes=3), start + 2 * day),
                         (start + timedelta(hours=23, minutes=59),
                          start + 3 * day + timedelta(minutes=1)),
                         (start + day + timedelta(hours=2), start + day + timedelta(hours=9))]:
        for bucket in (None, "day", "hour"):
            with engine.connect() as conn:
                found, source = rollups.totals(conn, ("tenant",), bucket, since, until)
                query = sa.select(c.tenant, c.created_at, c.cost_usd_pico)
                if since:
                    query = query.where(c.created_at >= since)
                if until:
                    query = query.where(c.created_at < until)
                raw: dict[tuple[Any, ...], tuple[int, Decimal]] = {}
                for tenant, at, pico in conn.execute(query):
                    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
                    key: tuple[Any, ...] = (tenant,)
                    if bucket is not None:
                        at = at.replace(minute=0, second=0, microsecond=0)
                        key += (at.replace(hour=0) if bucket == "day" else at,)
                    n, cost = raw.get(key, (0, Decimal(0)))
                    raw[key] = (n + 1, cost + pico)
            got = {k: (t.requests, t.cost_usd or 0) for k, t in found.items()}
            assert got == raw, (since, until, bucket, source)


def test_a_written_batch_rolls_up_as_a_rebuild_does(engine: sa.Engine) -> None:
    huge = Usage(input_tokens=2**50, output_tokens=2**41, cached_input_tokens=5)
    batch = [CostRecord(provider="openai", api="chat", model="m", tenant=None, route="/r",
                        usage=huge, cost_usd=Decimal("10000"), record_id=f"h{i}",
                        created_at=T0 + timedelta(minutes=i)) for i in range(3)]
    sink = SQLSink(engine)
    try:
        assert sink.write(batch) == 3  # no duplicate: the direct COPY on PostgreSQL
    finally:
        sink.close()
    written = {unit: stored(engine, unit) for unit in rollups.LEVELS}
    with engine.begin() as conn:
        rollups.rebuild(conn)  # the same totals, summed by SQL
    assert {unit: stored(engine, unit) for unit in rollups.LEVELS} == written
    (sums,) = written["hour"].values()
    # Exact sums (Python's for the batch, SQL's for the rebuild).
    assert (sums[1], sums[-1]) == (3 * 2**50, 3 * 10_000 * 10**12)


def test_postgresql_rolls_up_any_insert_into_the_ledger(pg_url: str) -> None:
    engine = make_engine(pg_url)
    try:
        ensure_schema(engine)
        rows = [{"record_id": f"x{i}", "created_at": T0 + timedelta(hours=i), "provider": "p",
                 "api": "chat", "streamed": False, "partial": False, "tenant": "t",
                 "input_tokens": 10, "cost_usd": Decimal("0.5")} for i in range(30)]
        with engine.begin() as conn:  # not through the sink: the table's trigger adds them
            conn.execute(sa.insert(cost_records), rows)
            conn.execute(postgresql_insert(cost_records).values(rows[:3])
                         .on_conflict_do_nothing(index_elements=["record_id"]))
        assert_in_step(engine)
        assert sum(v[0] for v in stored(engine, "day").values()) == 30
    finally:
        engine.dispose()
