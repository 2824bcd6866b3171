"""Import: LiteLLM's whole price map (``prices import litellm``) into SQLite and PostgreSQL.

Three figures per backend, each the fastest of alternating rounds: the dry run (read the
map, convert it exactly, compare it with the table: ``plan_import``), the import (the same plus
``apply_plan``: one transaction, new versions) into a price table freshly seeded with the
bundled catalog, as a first import is (forced: the change guard refuses that one), and a
re-import of the same map once it is in (every row unchanged, nothing written). Baseline, in
the same rounds: decoding the same file alone (``json`` with ``parse_float=Decimal``), the
least any exact import does. Target ≤ 2 s each (DESIGN "Targets"). PostgreSQL runs in a
database created and dropped here (admin URL from ``COST_MIDDLEWARE_TEST_PG``).

    python benchmarks/bench_import.py [--quick]
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from common import NO_POSTGRES, Result, interleave, postgres_database, standalone
from sqlalchemy import Engine

from cost_middleware.pricing.admin import ensure_seeded
from cost_middleware.pricing.imports.plan import apply_plan, plan_import
from cost_middleware.pricing.imports.sources import litellm_file
from cost_middleware.schema import model_prices
from cost_middleware.storage.engine import ensure_schema, make_engine

TARGET_S = 2.0
SOURCE = "litellm"


def reseed(engine: Engine) -> None:
    model_prices.drop(engine, checkfirst=True)
    ensure_schema(engine)
    ensure_seeded(engine)


def clock(fn: Callable[[], object],
          setup: Callable[[], object] | None = None) -> Callable[[], float]:
    """A sampler: seconds ``fn`` takes, after ``setup`` (off the clock)."""
    def sample() -> float:
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    return sample


def bench_backend(backend: str, url: str, path: Path, rounds: int) -> list[Result]:
    engine = make_engine(url)
    written: list[int] = []

    def dry_run() -> None:
        plan_import(engine, SOURCE)

    def import_map() -> None:
        written.append(apply_plan(engine, plan_import(engine, SOURCE), force=True))

    try:
        reseed(engine)
        samples = interleave({
            "parse": clock(lambda: json.loads(path.read_bytes(), parse_float=Decimal)),
            "dry run": clock(dry_run, lambda: reseed(engine)),
            "import": clock(import_map, lambda: reseed(engine)),
            "re-import": clock(import_map),
        }, rounds)
    finally:
        engine.dispose()
    best = {name: min(values) for name, values in samples.items()}
    entries = len(json.loads(path.read_bytes()))
    rows, again = written[0], written[1]
    notes = {"dry run": f"{entries:,} entries read, converted and compared; nothing written",
             "import": f"{rows:,} rows written in one transaction over the bundled catalog",
             "re-import": f"every row unchanged: {again} written"}
    return [Result(f"import the LiteLLM map, {backend}: {name}", best[name], "s",
                   "decode the file alone (json, parse_float=Decimal)", best["parse"],
                   f"≤ {TARGET_S:g} s", best[name] <= TARGET_S, f"{notes[name]}; {rounds} rounds")
            for name in ("dry run", "import", "re-import")]


def run(quick: bool) -> list[Result]:
    rounds = 2 if quick else 5
    path = litellm_file()
    names = ("dry run", "import", "re-import")
    if path is None:
        return [Result.skipped(f"import the LiteLLM map: {n}", "s",
                               "litellm not installed (dev extra)") for n in names]
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp, postgres_database() as pg_url:
        urls = {"SQLite": f"sqlite:///{Path(tmp) / 'bench.db'}", "PostgreSQL": pg_url}
        for backend, url in urls.items():
            if url is None:
                results += [Result.skipped(f"import the LiteLLM map, {backend}: {n}", "s",
                                           NO_POSTGRES) for n in names]
                continue
            results += bench_backend(backend, url, path, rounds)
    return results


if __name__ == "__main__":
    standalone(run, "prices import: LiteLLM's whole map into SQLite and PostgreSQL")
