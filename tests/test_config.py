from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cost_middleware import config
from cost_middleware.config import ConfigError, Settings


def test_defaults_match_the_design_table() -> None:
    s = Settings.from_env({})
    assert s.enabled is True
    assert s.database_url == "sqlite:///cost_middleware.db"
    assert s.redis_url is None and s.prices_file is None
    assert (s.cache_ttl, s.cache_size, s.batch_size) == (300.0, 4096, 500)
    assert (s.flush_interval, s.queue_size) == (1.0, 100_000)
    assert s.spool_dir == ".cost_middleware_spool"
    assert (s.statsd_enabled, s.statsd_host, s.statsd_port, s.statsd_prefix) == (
        True, "localhost", 8125, "cost_middleware")
    assert s.tenant_header == "x-tenant-id"
    assert s.paths == () and s.route_providers == ()


def test_every_variable_is_read() -> None:
    env = {
        config.ENABLED: "off",
        config.DATABASE_URL: "postgresql+psycopg://u@h/db",
        config.REDIS_URL: "redis://localhost:6379/2",
        config.PRICES_FILE: "/etc/prices.json",
        config.CACHE_TTL: "12.5",
        config.CACHE_SIZE: "10",
        config.BATCH_SIZE: "50",
        config.FLUSH_INTERVAL: "0.2",
        config.QUEUE_SIZE: "1000",
        config.SPOOL_DIR: "/var/spool/cm",
        config.STATSD: "false",
        config.STATSD_HOST: "stats.internal",
        config.STATSD_PORT: "9125",
        config.STATSD_PREFIX: "myapp.cost",
        config.TENANT_HEADER: "X-Org-Id",
        config.PATHS: "/llm/*, */generate",
        config.ROUTE_PROVIDERS: "/gw/*=acme, /v1/chat/completions=together",
        config.MAX_BODY_BYTES: "1024",
        config.SHUTDOWN_TIMEOUT: "2",
    }
    s = Settings.from_env(env)
    assert s.enabled is False
    assert s.database_url == "postgresql+psycopg://u@h/db"
    assert s.redis_url == "redis://localhost:6379/2"
    assert s.prices_file == "/etc/prices.json"
    assert (s.cache_ttl, s.cache_size, s.batch_size, s.flush_interval) == (12.5, 10, 50, 0.2)
    assert (s.queue_size, s.spool_dir) == (1000, "/var/spool/cm")
    assert (s.statsd_enabled, s.statsd_host, s.statsd_port) == (False, "stats.internal", 9125)
    assert s.statsd_prefix == "myapp.cost"
    assert s.tenant_header == "x-org-id"
    assert s.paths == ("/llm/*", "*/generate")
    assert s.route_providers == (("/gw/*", "acme"), ("/v1/chat/completions", "together"))
    assert (s.max_body_bytes, s.shutdown_timeout) == (1024, 2.0)


def test_standard_statsd_host_is_the_fallback() -> None:
    assert Settings.from_env({"STATSD_HOST": "graphite"}).statsd_host == "graphite"
    env = {"STATSD_HOST": "graphite", config.STATSD_HOST: "ours"}
    assert Settings.from_env(env).statsd_host == "ours"


def test_constructor_arguments_override_the_environment() -> None:
    s = Settings.from_env({config.BATCH_SIZE: "7"}, batch_size=9, redis_url=None)
    assert s.batch_size == 9


def test_unknown_override_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="batchsize"):
        Settings.from_env({}, batchsize=3)


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        (config.ENABLED, "maybe", "true/false"),
        (config.CACHE_TTL, "five", "number"),
        (config.CACHE_TTL, "nan", "finite"),
        (config.CACHE_TTL, "-1", "greater than zero"),
        (config.CACHE_SIZE, "1.5", "integer"),
        (config.BATCH_SIZE, "0", "greater than zero"),
        (config.FLUSH_INTERVAL, "0", "greater than zero"),
        (config.QUEUE_SIZE, "", "integer"),
        (config.STATSD_PORT, "70000", "port"),
        (config.STATSD, "disabled", "true/false"),
        (config.STATSD_PREFIX, "a:1|c", "letters"),
        (config.TENANT_HEADER, "x tenant", "header name"),
        (config.DATABASE_URL, "cost.db", "SQLAlchemy URL"),
        (config.DATABASE_URL, " ", "empty"),
        (config.REDIS_URL, "localhost:6379", "redis://"),
        (config.PATHS, "llm/*", "must start with"),
        (config.ROUTE_PROVIDERS, "/v1/chat/completions", "GLOB=PROVIDER"),
        (config.ROUTE_PROVIDERS, "gw/*=acme", "must start with"),
        (config.ROUTE_PROVIDERS, "/gw/*=opneai", "did you mean 'openai'?"),
        (config.REQUEST_ID_HEADER, "x request id", "header name"),
        (config.REQUEST_ID_HEADER, "", "empty"),
        (config.REQUEST_ID_HEADER, "x-id:", "header name"),
        (config.ECHO_REQUEST_ID, "sometimes", "true/false"),
    ],
)
def test_invalid_values_name_the_variable_and_value(variable: str, value: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: value})
    assert info.value.variable == variable
    assert variable in str(info.value)
    assert repr(value) in str(info.value)
    assert reason in str(info.value)


@given(st.text(max_size=20))
def test_any_enabled_value_is_a_bool_or_a_config_error(value: str) -> None:
    try:
        s = Settings.from_env({config.ENABLED: value})
    except ConfigError as exc:
        assert exc.variable == config.ENABLED
    else:
        assert isinstance(s.enabled, bool)


def test_request_id_header_and_echo() -> None:
    s = Settings.from_env({})
    assert (s.request_id_header, s.echo_request_id) == ("x-request-id", True)
    s = Settings.from_env({config.REQUEST_ID_HEADER: " X-Correlation-Id ",
                           config.ECHO_REQUEST_ID: "off"})
    assert (s.request_id_header, s.echo_request_id) == ("x-correlation-id", False)
    assert Settings(request_id_header="X-Trace").request_id_header == "x-trace"


def test_a_misspelt_variable_is_warned_about_once(caplog: pytest.LogCaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COST_MIDDLEWARE_BATCHSIZE", "5")
    monkeypatch.setenv("COST_MIDDLEWARE_TEST_PG", "postgresql+psycopg://x@127.0.0.1/y")
    monkeypatch.setattr(config, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="cost_middleware"):
        settings = Settings.from_env()
        Settings.from_env()
    assert settings.batch_size == Settings().batch_size  # ignored, as the warning says
    assert caplog.messages == [
        "cost_middleware: COST_MIDDLEWARE_BATCHSIZE is not a setting and is ignored; "
        "did you mean COST_MIDDLEWARE_BATCH_SIZE?"]


def test_from_env_overrides_one_field_and_keeps_the_environment_for_the_rest(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(config.BATCH_SIZE, "7")
    settings = Settings.from_env(database_url="sqlite:///other.db")
    assert (settings.database_url, settings.batch_size) == ("sqlite:///other.db", 7)
    assert Settings(database_url="sqlite:///other.db").batch_size == 500  # no environment
