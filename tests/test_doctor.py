"""``doctor`` against real services: SQLite and PostgreSQL, private redis-servers set up each
way a deployment can be, and StatsD on a real UDP socket. The wording is the product here."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from conftest import RedisServer, free_port
from test_metrics import udp as udp
from test_report import ledger_records, use_database, write_ledger

from cost_middleware.config import Settings
from cost_middleware.ops.cli import main
from cost_middleware.ops.doctor import (
    Check,
    check_database,
    check_redis,
    check_statsd,
    run_checks,
)
from cost_middleware.schema import cost_records
from cost_middleware.storage.engine import ensure_schema, make_engine

INIT_HINT = "run `cost-middleware init`"
ENABLE_HINT = (
    "run `CONFIG SET notify-keyspace-events K$g` (and put `notify-keyspace-events K$g` in "
    "redis.conf so it survives restarts); on managed Redis, where CONFIG is blocked, set the "
    "notify-keyspace-events parameter to include K$g: ElastiCache: the cluster's parameter group; "
    "Memorystore: `gcloud redis instances update --update-redis-config "
    "notify-keyspace-events=K$g`; Azure Cache for Redis: Advanced settings, keyspace notifications"
)
PROBE = r"a probe change arrived in \d+\.\d\d ms"
#: Starts a private redis-server with the given options (``start_redis``).
StartRedis = Callable[..., RedisServer]


def quiet(**values: object) -> Settings:
    return Settings(statsd_enabled=False, **values)  # type: ignore[arg-type]


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[StartRedis]:
    """Starts private redis-servers with the given options; stops them afterwards."""
    servers: list[RedisServer] = []

    def start(*options: str) -> RedisServer:
        directory = tmp_path / f"redis{len(servers)}"
        directory.mkdir()
        server = RedisServer(directory)
        servers.append(server)
        server.start(*options)
        return server

    yield start
    for server in servers:
        server.stop()


def notify_flags(server: RedisServer) -> str:
    client = redis.Redis.from_url(server.url)
    try:
        return str(client.config_get("notify-keyspace-events")["notify-keyspace-events"])
    finally:
        client.close()


# -- database --------------------------------------------------------------------------------


def test_a_good_database_reports_its_rows(db_url: str, tmp_path: Path) -> None:
    write_ledger(db_url, tmp_path, ledger_records())  # prices from a file: none in SQL
    check = check_database(quiet(database_url=db_url))
    assert check == Check("database", True, f"{db_url}: 0 price rows, 16 records")


def test_a_seeded_sqlite_database(sqlite_url: str, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    use_database(sqlite_url, tmp_path, monkeypatch)
    assert main(["init"]) == 0
    check = check_database(quiet(database_url=sqlite_url))
    assert check.ok and re.fullmatch(re.escape(sqlite_url) + r": [1-9]\d* price rows, 0 records",
                                     check.detail)


def test_missing_tables_say_to_run_init(db_url: str) -> None:
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE unrelated (x INTEGER)"))
    finally:
        engine.dispose()
    try:
        check = check_database(quiet(database_url=db_url))
    finally:
        # The PostgreSQL database is the session's: leave it as other tests expect it.
        engine = sa.create_engine(db_url)
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE unrelated"))
        engine.dispose()
    assert check == Check("database", False, f"{db_url}: tables missing (cost_records, "
                          f"model_prices); {INIT_HINT}")


def test_a_half_made_schema_names_the_missing_table(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        cost_records.create(engine)
    finally:
        engine.dispose()
    check = check_database(quiet(database_url=sqlite_url))
    assert check.detail == f"{sqlite_url}: tables missing (model_prices); {INIT_HINT}"
    assert not check.ok and not check.warning


def test_an_unreachable_database_fails_without_showing_the_password() -> None:
    port = free_port()
    check = check_database(quiet(
        database_url=f"postgresql+psycopg://postgres:s3cret@127.0.0.1:{port}/cm"))
    assert not check.ok and not check.warning
    assert check.detail.startswith(
        f"postgresql+psycopg://postgres:***@127.0.0.1:{port}/cm: OperationalError: ")
    assert "Connection refused" in check.detail and "s3cret" not in check.detail


def test_a_database_that_does_not_exist_fails(pg_server_url: str) -> None:
    url = sa.make_url(pg_server_url).set(database="cm_no_such_database", password="s3cret")
    check = check_database(quiet(database_url=url.render_as_string(hide_password=False)))
    assert not check.ok
    where = url.render_as_string(hide_password=True)
    assert check.detail.startswith(f"{where}: OperationalError: ")
    assert 'database "cm_no_such_database" does not exist' in check.detail
    assert "s3cret" not in check.detail


def test_an_unopenable_sqlite_file_fails(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'no-such-dir' / 'cost.db'}"
    check = check_database(quiet(database_url=url))
    assert not check.ok
    assert check.detail.startswith(f"{url}: OperationalError: ")
    assert "unable to open database file" in check.detail


def test_an_unsupported_database_is_named() -> None:
    check = check_database(quiet(database_url="mysql://app:pw@db.internal/costs"))
    assert check == Check("database", False, "mysql://app:***@db.internal/costs: ConfigError: "
                          "COST_MIDDLEWARE_DATABASE_URL='mysql://app:***@db.internal/costs': "
                          "only SQLite and PostgreSQL are supported")


# -- redis -------------------------------------------------------------------------------------


def test_redis_not_configured_is_a_warning_not_a_failure() -> None:
    assert check_redis(quiet()) == [Check(
        "redis", True, "not configured (COST_MIDDLEWARE_REDIS_URL unset): prices are cached per "
        "process and refresh after the cache TTL", warning=True)]


def test_notifications_off_are_merged_in_with_the_restart_caveat(
        start_redis: StartRedis) -> None:
    server = start_redis()
    assert notify_flags(server) == ""
    [check] = check_redis(quiet(redis_url=server.url))
    assert check.name == "redis" and check.ok and not check.warning
    assert re.fullmatch(
        f"keyspace channel, notify-keyspace-events was '', {PROBE}; keyspace notifications are "
        + re.escape("live: K$g was merged in with CONFIG SET, which a restart forgets (processes "
                    "merge again when they reconnect); put `notify-keyspace-events K$g` in "
                    "redis.conf to keep it"), check.detail)
    assert set(notify_flags(server)) == set("K$g")


def test_merging_keeps_the_flags_others_set(start_redis: StartRedis) -> None:
    server = start_redis("--notify-keyspace-events", "Ex")
    [check] = check_redis(quiet(redis_url=server.url))
    assert check.ok and "was merged in with CONFIG SET" in check.detail
    assert set(notify_flags(server)) == set("ExK$g")


@pytest.mark.parametrize("flags", ["K$g", "KA", "AKE"])
def test_notifications_already_on_are_live(start_redis: StartRedis, flags: str) -> None:
    server = start_redis("--notify-keyspace-events", flags)
    before = notify_flags(server)
    [check] = check_redis(quiet(redis_url=server.url))
    assert check.ok and not check.warning
    assert re.fullmatch(f"keyspace channel, notify-keyspace-events was {re.escape(repr(before))}"
                        f", {PROBE}; keyspace notifications are live", check.detail)
    assert notify_flags(server) == before  # nothing changed


def test_config_refused_with_notifications_set_is_found_by_probing(start_redis: StartRedis) -> None:
    server = start_redis("--rename-command", "CONFIG", "",
                         "--notify-keyspace-events", "K$g")
    [check] = check_redis(quiet(redis_url=server.url))
    assert check.ok
    assert re.fullmatch(f"keyspace channel, CONFIG refused, {PROBE}; keyspace notifications are "
                        "live", check.detail)


def test_config_refused_and_notifications_off_uses_client_tracking(start_redis: StartRedis) -> None:
    server = start_redis("--rename-command", "CONFIG", "")
    [check] = check_redis(quiet(redis_url=server.url))
    assert check.ok and not check.warning
    assert re.fullmatch(
        f"tracking channel, CONFIG refused, {PROBE}; " + re.escape(
            "CONFIG is refused and keyspace notifications are off, so client-side-caching "
            "invalidation (CLIENT TRACKING BCAST) is live, which is as fast. To use keyspace "
            "notifications instead, " + ENABLE_HINT), check.detail)


def test_no_channel_at_all_is_a_warning_that_says_how_to_fix_it(start_redis: StartRedis) -> None:
    # An ACL user refused CONFIG and CLIENT TRACKING, as on some managed services.
    server = start_redis("--user", "default", "on", "nopass",
                         "~*", "&*", "+@all", "-config", "-client|tracking")
    [check] = check_redis(quiet(redis_url=server.url))
    assert not check.ok and check.warning
    assert check.detail == (
        "poll-only channel, CONFIG refused; no notification channel: other processes see price "
        "changes only through the version poll, every few seconds. To fix, " + ENABLE_HINT
        + "; or grant the ACL user CLIENT TRACKING (Redis 6 or later)")


def test_unreachable_redis_fails(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)  # never started: nothing listens on its port
    [check] = check_redis(quiet(redis_url=server.url))
    assert not check.ok and not check.warning
    assert check.detail.startswith("ConnectionError: ")
    assert str(server.port) in check.detail
    assert check.detail.endswith(
        ": Redis is unreachable: pricing continues from each process's cache and the database, "
        "without cross-process sync")


# -- statsd ------------------------------------------------------------------------------------


def test_statsd_disabled() -> None:
    assert check_statsd(quiet()) == Check("statsd", True, "disabled (COST_MIDDLEWARE_STATSD=off)")


def test_statsd_probe_arrives_at_a_real_socket(udp: socket.socket) -> None:
    port = udp.getsockname()[1]
    check = check_statsd(Settings(statsd_host="127.0.0.1", statsd_port=port, statsd_prefix="cm"))
    assert check == Check("statsd", True, f"127.0.0.1:{port}: a probe counter was sent (UDP: "
                          "delivery is not confirmed; look for cm.doctor.probe)")
    assert udp.recv(65535) == b"cm.doctor.probe:1|c"


def test_statsd_with_the_default_prefix(udp: socket.socket) -> None:
    port = udp.getsockname()[1]
    check = check_statsd(Settings(statsd_host="127.0.0.1", statsd_port=port))
    assert check.ok and check.detail.endswith("look for cost_middleware.doctor.probe)")
    assert udp.recv(65535) == b"cost_middleware.doctor.probe:1|c"


def test_statsd_host_that_does_not_resolve_is_a_warning() -> None:
    check = check_statsd(Settings(statsd_host="no-such-host.invalid", statsd_port=8125))
    assert not check.ok and check.warning
    assert check.detail.startswith("no-such-host.invalid:8125: ")
    assert len(check.detail) > len("no-such-host.invalid:8125: ")


# -- all checks, and the command ---------------------------------------------------------------


def test_run_checks_in_order(sqlite_url: str, udp: socket.socket) -> None:
    engine = make_engine(sqlite_url)
    try:
        ensure_schema(engine)
    finally:
        engine.dispose()
    checks = run_checks(Settings(database_url=sqlite_url, statsd_host="127.0.0.1",
                                 statsd_port=udp.getsockname()[1]))
    assert [c.name for c in checks] == ["database", "redis", "statsd"]
    assert all(c.ok for c in checks)


def _doctor(capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["doctor"])
    # Long details wrap on the console: compare with whitespace runs folded.
    return code, " ".join(capsys.readouterr().out.split())


@pytest.fixture
def doctor_env(sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    engine = make_engine(sqlite_url)
    try:
        ensure_schema(engine)
    finally:
        engine.dispose()
    use_database(sqlite_url, tmp_path, monkeypatch)
    return sqlite_url


def test_cli_all_ok(doctor_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _doctor(capsys)
    assert code == 0
    assert f"ok database: {doctor_env}: 0 price rows, 0 records" in out
    assert "ok redis: not configured (COST_MIDDLEWARE_REDIS_URL unset)" in out
    assert "ok statsd: disabled (COST_MIDDLEWARE_STATSD=off)" in out


def test_cli_a_redis_warning_does_not_fail(doctor_env: str, start_redis: StartRedis,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    server = start_redis("--user", "default", "on", "nopass",
                         "~*", "&*", "+@all", "-config", "-client|tracking")
    monkeypatch.setenv("COST_MIDDLEWARE_REDIS_URL", server.url)
    code, out = _doctor(capsys)
    assert code == 0
    assert "warn redis: poll-only channel, CONFIG refused; no notification channel" in out
    # Backticks and brackets in the hint are printed as they are, not as markup.
    assert "`CONFIG SET notify-keyspace-events K$g`" in out


def test_cli_live_notifications(doctor_env: str, start_redis: StartRedis,
                                monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    server = start_redis("--notify-keyspace-events", "K$g")
    monkeypatch.setenv("COST_MIDDLEWARE_REDIS_URL", server.url)
    code, out = _doctor(capsys)
    assert code == 0
    assert re.search(r"ok redis: keyspace channel, notify-keyspace-events was '[K$g]{3}', "
                     f"{PROBE}; keyspace notifications are live", out)


def test_cli_unreachable_redis_fails(doctor_env: str, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COST_MIDDLEWARE_REDIS_URL", RedisServer(tmp_path).url)
    code, out = _doctor(capsys)
    assert code == 1
    assert f"ok database: {doctor_env}" in out
    assert "FAIL redis: ConnectionError: " in out and "Redis is unreachable" in out


def test_cli_a_bad_database_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    use_database(url, tmp_path, monkeypatch)
    code, out = _doctor(capsys)
    assert code == 1
    assert (f"FAIL database: {url}: tables missing (cost_records, model_prices); "
            f"{INIT_HINT}") in out
    assert "ok statsd" in out


def test_cli_statsd_unresolvable_is_a_warning(doctor_env: str, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("COST_MIDDLEWARE_STATSD")
    monkeypatch.setenv("COST_MIDDLEWARE_STATSD_HOST", "no-such-host.invalid")
    code, out = _doctor(capsys)
    assert code == 0
    assert "warn statsd: no-such-host.invalid:8125: " in out
