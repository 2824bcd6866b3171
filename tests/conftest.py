"""Shared fixtures: a clean environment, real SQLite/PostgreSQL/Redis, the provider fixtures."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from faults import Proxy
from hostile import CATEGORIES, categories_of

from cost_middleware import config

ROOT = Path(__file__).resolve().parent.parent
#: The provider corpus (responses and the usage a correct extractor reports), kept in the repo.
CORPUS_FIXTURES = ROOT / "tests" / "fixtures" / "corpus"
LOCAL_FIXTURES = ROOT / "tests" / "fixtures"
PG_ADMIN_URL = os.environ.get("COST_MIDDLEWARE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI") == "true"



def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hostile: the hostile-input suite (tests/hostile.py)")
    for category, (what, _) in CATEGORIES.items():
        config.addinivalue_line("markers", f"{category}: hostile input: {what}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for category in categories_of(item.nodeid):
            item.add_marker(category)
            item.add_marker("hostile")


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; whether it held (the
    timeout only bounds a failing test: a passing one returns as soon as it holds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def service_missing(what: str) -> None:
    """Under CI a missing service is a failure, never a skip."""
    if IN_CI:
        pytest.fail(f"{what} is not available under CI")
    pytest.skip(f"{what} is not available")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*config.ALL_VARIABLES, config.STANDARD_STATSD_HOST):
        monkeypatch.delenv(name, raising=False)


def load_expected() -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for folder in (CORPUS_FIXTURES, LOCAL_FIXTURES):
        path = folder / "EXPECTED.json"
        if path.exists():
            for entry in json.loads(path.read_text()):
                entry["_dir"] = str(folder)
                entries.append(entry)
    return entries


def fixture_bytes(entry: dict[str, Any]) -> bytes:
    """The response body a fixture describes (``chunks_b64`` files list raw network reads)."""
    data = (Path(entry["_dir"]) / entry["file"]).read_bytes()
    if entry.get("transport") == "chunks_b64":
        import base64

        return b"".join(base64.b64decode(c) for c in _chunk_list(json.loads(data)))
    return bytes(data)


def fixture_chunks(entry: dict[str, Any]) -> list[bytes] | None:
    """The recorded network reads of a ``chunks_b64`` fixture, else None."""
    if entry.get("transport") != "chunks_b64":
        return None
    import base64

    data = json.loads((Path(entry["_dir"]) / entry["file"]).read_bytes())
    return [base64.b64decode(c) for c in _chunk_list(data)]


def _chunk_list(data: Any) -> list[str]:
    if isinstance(data, dict):
        for key in ("chunks_b64", "chunks", "reads"):
            if key in data:
                return list(data[key])
    return list(data)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cost.db'}"


def _pg_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    if not _pg_available():
        service_missing("PostgreSQL on 127.0.0.1:5432")
    import sqlalchemy as sa

    name = f"cm_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterator[str]:
    """The session database with our tables emptied before each test."""
    import sqlalchemy as sa

    from cost_middleware.schema import metadata

    engine = sa.create_engine(pg_server_url)
    metadata.drop_all(engine)
    engine.dispose()
    yield pg_server_url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each storage test runs against real SQLite and real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cost.db'}"
    return str(request.getfixturevalue("pg_url"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server this test owns, on a free port (can be stopped and restarted)."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.dir = directory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *extra: str) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            service_missing("redis-server")
        assert exe is not None
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def machine_redis_url() -> str:
    """The machine's Redis (127.0.0.1:6379), database 0."""
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            pass
    except OSError:
        service_missing("Redis on 127.0.0.1:6379")
    return "redis://127.0.0.1:6379/0"


def expected_usage(entry: dict[str, Any]) -> Any:
    """The fixture's expected usage as a ``Usage`` (None when it carries none)."""
    from decimal import Decimal

    from cost_middleware.usage.model import Usage

    raw = entry.get("usage")
    if raw is None:
        return None
    values = {k: v for k, v in raw.items() if k != "total_tokens"}
    if values.get("reported_cost_usd") is not None:
        values["reported_cost_usd"] = Decimal(str(values["reported_cost_usd"]))
    return Usage(**values)


def split_path(entry: dict[str, Any]) -> tuple[str, bytes]:
    """(path, query) of a fixture's request; the path percent-decoded as servers do."""
    from urllib.parse import unquote

    path, _, query = entry["path"].partition("?")
    return unquote(path), query.encode()


def assert_usage(actual: Any, entry: dict[str, Any]) -> None:
    """Every key the fixture's expected usage lists matches exactly (extras may be absent)."""
    from decimal import Decimal

    expected = entry.get("usage")
    if expected is None:
        assert actual is None, entry["file"]
        return
    assert actual is not None, entry["file"]
    for key, value in expected.items():
        got = getattr(actual, key)
        if key == "reported_cost_usd" and value is not None:
            value = Decimal(str(value))
        assert got == value, f"{entry['file']}: {key} = {got!r}, expected {value!r}"


@pytest.fixture
def proxy(pg_url: str) -> Iterator[Proxy]:
    """A cuttable TCP proxy in front of the test PostgreSQL."""
    import sqlalchemy as sa

    url = sa.make_url(pg_url)
    p = Proxy((url.host or "127.0.0.1", url.port or 5432))
    yield p
    p.close()


def catalog_cost(entry: dict[str, Any], usage: Any) -> Any:
    """The cost the bundled catalog gives a fixture's usage (None: model not in it)."""
    from cost_middleware.pricing.book import PriceBook
    from cost_middleware.pricing.sources import CatalogFilePriceSource
    from cost_middleware.usage.service_tier import normalize

    book = PriceBook(CatalogFilePriceSource(str(ROOT / "cost_middleware" / "catalog.json")))
    return book.cost(usage, entry["model"], entry["provider"],
                     service_tier=normalize(entry.get("service_tier")))


@pytest.fixture
def engine(db_url: str) -> Iterator[Any]:
    """An engine on :func:`db_url` (SQLite and PostgreSQL) with our tables created."""
    from cost_middleware.storage.engine import ensure_schema, make_engine

    eng = make_engine(db_url)
    ensure_schema(eng)
    yield eng
    eng.dispose()
