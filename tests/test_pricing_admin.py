"""Price administration on real SQLite and PostgreSQL: seeding, catalogs, versions, repricing."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cost_middleware.pricing.admin import (
    delete_price,
    deleted_prices,
    ensure_seeded,
    export_catalog,
    list_prices,
    load_catalog,
    reprice,
    set_price,
    show_price,
)
from cost_middleware.pricing.book import PriceBook
from cost_middleware.pricing.catalog import bundled_prices
from cost_middleware.pricing.price import PriceError
from cost_middleware.pricing.sql_source import SQLPriceSource
from cost_middleware.schema import cost_records, model_price_deletions, model_prices

D = Decimal
JAN = datetime(2025, 1, 1, tzinfo=UTC)


def versions(engine: sa.Engine) -> list[int]:
    with engine.connect() as conn:
        return sorted(conn.execute(sa.select(model_prices.c.version)).scalars())


def entry(model: str = "gpt-4o", inp: str = "2.50", **extra: Any) -> dict[str, Any]:
    return {"provider": "openai", "model": model, "input": inp, "output": "10",
            "effective_from": "2025-01-01T00:00:00Z", **extra}


def test_ensure_seeded_loads_the_bundled_catalog_once(engine: sa.Engine) -> None:
    seen_after_commit: list[bool] = []

    def on_change(provider: str, model: str) -> None:
        with engine.connect() as other:  # a separate connection sees the row: committed
            found = other.execute(sa.select(model_prices.c.model).where(
                model_prices.c.provider == provider, model_prices.c.model == model)).first()
        seen_after_commit.append(found is not None)

    added = ensure_seeded(engine, on_change=on_change)
    assert added == len(bundled_prices())
    assert seen_after_commit and all(seen_after_commit)
    assert versions(engine) == list(range(1, added + 1))
    assert ensure_seeded(engine) == 0


def test_load_catalog_versions_only_what_changed(engine: sa.Engine) -> None:
    changes: list[tuple[str, str]] = []
    assert load_catalog(engine, {"prices": [entry(), entry("o3", "2")]},
                        on_change=lambda p, m: changes.append((p, m))) == 2
    assert sorted(changes) == [("openai", "gpt-4o"), ("openai", "o3")]
    changes.clear()
    assert load_catalog(engine, {"prices": [entry(), entry("o3", "2")]},
                        on_change=lambda p, m: changes.append((p, m))) == 0
    assert changes == []
    assert load_catalog(engine, {"prices": [entry(), entry("o3", "1.5")]}) == 1
    assert versions(engine) == [1, 3]
    o3 = show_price(engine, "openai", "o3")
    assert [(p.input, p.version) for p in o3] == [(D("1.5"), 3)]
    assert load_catalog(engine, {"prices": [entry("o3", "1.5")]}, replace=True,
                        on_change=lambda p, m: changes.append((p, m))) == 1
    assert show_price(engine, "openai", "gpt-4o") == []
    assert changes == [("openai", "gpt-4o")]


def test_load_catalog_validates_everything_before_writing(engine: sa.Engine) -> None:
    with pytest.raises(PriceError, match="entry #1"):
        load_catalog(engine, {"prices": [entry(), entry("o3", "-2")]})
    assert versions(engine) == []


def test_export_round_trips(engine: sa.Engine, tmp_path: Any) -> None:
    load_catalog(engine, {"prices": [p.to_catalog() for p in bundled_prices()]})
    exported = export_catalog(engine)
    assert exported["as_of"] == datetime.now(UTC).date().isoformat()
    path = tmp_path / "export.json"
    import json

    path.write_text(json.dumps(exported))
    assert load_catalog(engine, str(path)) == 0  # nothing changed
    by_label = {(p["provider"], p["model"], p["effective_from"]): p for p in exported["prices"]}
    for price in bundled_prices():
        key = (price.provider, price.model, price.to_catalog()["effective_from"])
        stored = by_label[key]
        assert {k: v for k, v in stored.items() if k != "version"} == {
            k: v for k, v in price.to_catalog().items() if k != "version"}


def test_set_price_copies_missing_fields_and_bumps_versions(engine: sa.Engine) -> None:
    load_catalog(engine, {"prices": [entry(aliases=["gpt-4o-latest"], cached_input="1.25",
                                           source="list")]})
    with pytest.raises(PriceError, match="'input'"):
        set_price(engine, "openai", "brand-new", output="1")
    with pytest.raises(PriceError, match="not a known field"):
        set_price(engine, "openai", "gpt-4o", inptu="1")
    changes: list[tuple[str, str]] = []
    later = datetime(2025, 6, 1, tzinfo=UTC)
    price = set_price(engine, "openai", "gpt-4o", input=None, cached_input=None, output="12",
                      effective_from=later, on_change=lambda p, m: changes.append((p, m)))
    assert (price.input, price.cached_input, price.output) == (D("2.50"), D("1.25"), D(12))
    assert price.aliases == ("gpt-4o-latest",) and price.source is None
    assert price.version == 2 and price.effective_from == later
    assert changes == [("openai", "gpt-4o")]
    corrected = set_price(engine, "openai", "gpt-4o", output="11", effective_from=later)
    assert corrected.version == 3 and corrected.output == D(11)
    now_price = set_price(engine, "openai", "gpt-4o", input="2")
    assert now_price.effective_from > later and now_price.output == D(11)
    history = show_price(engine, "openai", "gpt-4o")
    assert [p.version for p in history] == [1, 3, 4]
    new = set_price(engine, "openai", "brand-new", input="1", output="2",
                    effective_from="2025-02-01")
    assert new.version == 5 and new.effective_from == datetime(2025, 2, 1, tzinfo=UTC)


def test_list_prices_shows_the_row_in_force(engine: sa.Engine) -> None:
    future = datetime.now(UTC) + timedelta(days=30)
    load_catalog(engine, {"prices": [
        entry(), entry(inp="3", effective_from=future.isoformat()),
        entry("o5", "9", effective_from=future.isoformat()),
        {**entry("gemini-2.5-pro", "1.25"), "provider": "google"},
    ]})
    current = {p.label: p for p in list_prices(engine)}
    assert current["openai/gpt-4o"].input == D("2.50")
    assert current["openai/o5"].input == D(9)  # only a future row: shown
    assert {p.provider for p in list_prices(engine, "google")} == {"google"}
    assert [p.input for p in show_price(engine, "openai", "gpt-4o")] == [D("2.50"), D(3)]


def test_concurrent_writers_get_distinct_versions(engine: sa.Engine) -> None:
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(5):
                set_price(engine, "openai", f"model-{n}-{i}", input=str(n), output="1")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert versions(engine) == list(range(1, 21))


def add_record(conn: sa.Connection, record_id: str, created_at: datetime, model: str | None,
               *, tokens: int | None = 1_000_000, cost: Decimal | None = None,
               version: int | None = None) -> None:
    conn.execute(sa.insert(cost_records), {
        "record_id": record_id, "created_at": created_at, "provider": "openai", "api": "chat",
        "model": model, "streamed": False, "partial": False, "input_tokens": tokens,
        "cached_input_tokens": 0 if tokens is not None else None,
        "cache_write_input_tokens": 0 if tokens is not None else None,
        "output_tokens": tokens, "cost_usd": cost, "price_version": version,
    })


def stored(engine: sa.Engine) -> dict[str, tuple[Decimal | None, int | None]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(cost_records.c.record_id, cost_records.c.cost_usd,
                                      cost_records.c.price_version))
        return {r.record_id: (r.cost_usd, r.price_version) for r in rows}


def test_reprice_fills_and_corrects_at_the_rates_of_each_record(engine: sa.Engine) -> None:
    load_catalog(engine, {"prices": [entry(), entry("o3", "10", output="40"),
                                     entry("o3", "2", output="8",
                                           effective_from="2025-06-10T00:00:00Z")]})
    may, july = datetime(2025, 5, 1, tzinfo=UTC), datetime(2025, 7, 1, tzinfo=UTC)
    with engine.begin() as conn:
        add_record(conn, "old", JAN - timedelta(days=1), "gpt-4o")  # before `since`
        add_record(conn, "may-o3", may, "o3-2025-04-16")
        add_record(conn, "july-o3", july, "o3-2025-04-16")
        add_record(conn, "priced", may, "gpt-4o", cost=D("12.5"), version=1)
        add_record(conn, "unknown", may, "mystery")
        add_record(conn, "no-usage", may, "gpt-4o", tokens=None)
    book = PriceBook(SQLPriceSource(engine))
    try:
        assert reprice(engine, book, JAN, only_unpriced=True) == 2
        result = stored(engine)
        assert result["may-o3"] == (D(50), 2) and result["july-o3"] == (D(10), 3)
        assert result["old"] == (None, None) and result["unknown"] == (None, None)
        assert result["no-usage"] == (None, None) and result["priced"] == (D("12.5"), 1)
        # A correction of gpt-4o effective before May re-prices only what it changes.
        fixed = set_price(engine, "openai", "gpt-4o", input="2", effective_from=JAN,
                          on_change=book.invalidate)
        assert reprice(engine, book, JAN) == 1
        assert stored(engine)["priced"] == (D(12), fixed.version)
        assert reprice(engine, book, JAN) == 0
    finally:
        book.close()


def test_reprice_pages_through_many_records(engine: sa.Engine,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import cost_middleware.pricing.admin as admin

    monkeypatch.setattr(admin, "REPRICE_BATCH", 7)
    load_catalog(engine, {"prices": [entry()]})
    same_time = datetime(2025, 3, 1, tzinfo=UTC)
    with engine.begin() as conn:
        for i in range(30):
            add_record(conn, f"r{i:02d}", same_time if i % 2 else same_time + timedelta(
                seconds=i), "gpt-4o", tokens=1000 * (i + 1))
    pages: list[str] = []  # each page's SELECT, with its parameters

    def remember_pages(_conn: object, _cursor: object, statement: str, parameters: Any,
                       *_args: object) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "cost_records" in statement:
            values = parameters.values() if isinstance(parameters, dict) else parameters
            pages.append(f"{statement} -- {[str(v) for v in values]}")

    sa.event.listen(engine, "before_cursor_execute", remember_pages)
    book = PriceBook(SQLPriceSource(engine))
    try:
        assert reprice(engine, book, datetime(2025, 2, 28, tzinfo=UTC)) == 30
    finally:
        book.close()
        sa.event.remove(engine, "before_cursor_execute", remember_pages)
    result = stored(engine)
    assert all(result[f"r{i:02d}"] == (D("0.0125") * (i + 1), 1) for i in range(30))
    # Every page after the first starts its index range where the last one ended: its plain
    # lower bound on created_at is no longer `since` (the OR alone is only a filter).
    assert len(pages) == 6  # 7, 7, 7, 7, 2 records, then none
    assert "2025-02-28" in pages[0]
    assert all("2025-02-28" not in p and " OR " in p for p in pages[1:])


def all_versions(engine: sa.Engine) -> tuple[set[int], list[int]]:
    """(versions in the price table, versions kept by the audit trail)."""
    with engine.connect() as conn:
        live = set(conn.execute(sa.select(model_prices.c.version)).scalars())
        gone = list(conn.execute(sa.select(model_price_deletions.c.version)).scalars())
    return live, gone


def test_a_replacing_load_keeps_the_highest_version_taken(engine: sa.Engine) -> None:
    """Deleting the newest row, then a --replace load: the next version is still above it."""
    load_catalog(engine, {"prices": [entry(), entry("o3", "2")]})
    assert versions(engine) == [1, 2]
    delete_price(engine, "openai", "o3")
    load_catalog(engine, {"prices": [entry(inp="3")]}, replace=True)  # a correction of gpt-4o
    assert versions(engine) == [3]
    load_catalog(engine, {"prices": [entry("o1", "15")]}, replace=True)  # gpt-4o dropped
    live, gone = all_versions(engine)
    assert live == {4} and sorted(gone) == [1, 2, 3]
    (_, kept), = deleted_prices(engine, "openai", "gpt-4o")[-1:]
    assert kept.version == 3 and kept.input == D("3")


_ops = st.lists(st.tuples(st.sampled_from(["set", "load", "replace", "delete"]),
                          st.sampled_from(["m1", "m2", "m3"]),
                          st.sampled_from(["1", "2", "3"])), min_size=1, max_size=12)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops)
def test_versions_only_ever_grow(engine: sa.Engine, ops: list[tuple[str, str, str]]) -> None:
    with engine.begin() as conn:
        conn.execute(sa.delete(model_prices))
        conn.execute(sa.delete(model_price_deletions))
    highest = 0
    for op, model, rate in ops:
        if op == "set":
            set_price(engine, "openai", model, input=D(rate), output=D("10"))
        elif op == "delete":
            rows = show_price(engine, "openai", model)
            if not rows:
                continue
            delete_price(engine, "openai", model, effective_from=rows[-1].effective_from)
        else:
            load_catalog(engine, {"prices": [entry(model, rate)]}, replace=op == "replace")
        live, gone = all_versions(engine)
        assert len(gone) == len(set(gone)) and not live & set(gone)  # each names one row
        new = live - set(range(highest + 1))
        assert all(v > highest for v in new)
        highest = max(live | set(gone) | {highest})
