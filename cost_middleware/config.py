"""Settings, read once from the environment; constructor arguments override it."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

_PREFIX = "COST_MIDDLEWARE_"
ENABLED = "COST_MIDDLEWARE_ENABLED"
DATABASE_URL = "COST_MIDDLEWARE_DATABASE_URL"
REDIS_URL = "COST_MIDDLEWARE_REDIS_URL"
PRICES_FILE = "COST_MIDDLEWARE_PRICES_FILE"
CACHE_TTL = "COST_MIDDLEWARE_CACHE_TTL"
CACHE_SIZE = "COST_MIDDLEWARE_CACHE_SIZE"
BATCH_SIZE = "COST_MIDDLEWARE_BATCH_SIZE"
FLUSH_INTERVAL = "COST_MIDDLEWARE_FLUSH_INTERVAL"
QUEUE_SIZE = "COST_MIDDLEWARE_QUEUE_SIZE"
SPOOL_DIR = "COST_MIDDLEWARE_SPOOL_DIR"
STATSD = "COST_MIDDLEWARE_STATSD"
STATSD_HOST = "COST_MIDDLEWARE_STATSD_HOST"
STATSD_PORT = "COST_MIDDLEWARE_STATSD_PORT"
STATSD_PREFIX = "COST_MIDDLEWARE_STATSD_PREFIX"
TENANT_HEADER = "COST_MIDDLEWARE_TENANT_HEADER"
REQUEST_ID_HEADER = "COST_MIDDLEWARE_REQUEST_ID_HEADER"
ECHO_REQUEST_ID = "COST_MIDDLEWARE_ECHO_REQUEST_ID"
PATHS = "COST_MIDDLEWARE_PATHS"
ROUTE_PROVIDERS = "COST_MIDDLEWARE_ROUTE_PROVIDERS"
MAX_BODY_BYTES = "COST_MIDDLEWARE_MAX_BODY_BYTES"
SHUTDOWN_TIMEOUT = "COST_MIDDLEWARE_SHUTDOWN_TIMEOUT"
PRICES_REFRESH = "COST_MIDDLEWARE_PRICES_REFRESH"
PRICES_REFRESH_INTERVAL = "COST_MIDDLEWARE_PRICES_REFRESH_INTERVAL"
OTEL = "COST_MIDDLEWARE_OTEL"
OTEL_ATTRIBUTES = "COST_MIDDLEWARE_OTEL_ATTRIBUTES"
DASHBOARD_TOKEN = "COST_MIDDLEWARE_DASHBOARD_TOKEN"
BUDGETS_FAIL_CLOSED = "COST_MIDDLEWARE_BUDGETS_FAIL_CLOSED"
#: Standard fallback, as pystatsd reads it.
STANDARD_STATSD_HOST = "STATSD_HOST"

ALL_VARIABLES = (
    ENABLED, DATABASE_URL, REDIS_URL, PRICES_FILE, CACHE_TTL, CACHE_SIZE, BATCH_SIZE,
    FLUSH_INTERVAL, QUEUE_SIZE, SPOOL_DIR, STATSD, STATSD_HOST, STATSD_PORT, STATSD_PREFIX,
    TENANT_HEADER, REQUEST_ID_HEADER, ECHO_REQUEST_ID, PATHS, ROUTE_PROVIDERS, MAX_BODY_BYTES,
    SHUTDOWN_TIMEOUT, OTEL, OTEL_ATTRIBUTES, PRICES_REFRESH, PRICES_REFRESH_INTERVAL,
    DASHBOARD_TOKEN, BUDGETS_FAIL_CLOSED,
)

#: Refreshing prices more often only loads the source (and every process) for nothing.
MIN_REFRESH_INTERVAL = 60.0

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class ConfigError(ValueError):
    """An invalid setting; the message names the variable and the bad value."""

    def __init__(self, variable: str, value: object, reason: str) -> None:
        super().__init__(f"{variable}={value!r}: {reason}")
        self.variable = variable
        self.value = value
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Settings:
    enabled: bool = True
    database_url: str = "sqlite:///cost_middleware.db"
    redis_url: str | None = None
    prices_file: str | None = None
    cache_ttl: float = 300.0
    cache_size: int = 4096
    batch_size: int = 500
    flush_interval: float = 1.0
    queue_size: int = 100_000
    spool_dir: str = ".cost_middleware_spool"
    statsd_enabled: bool = True
    statsd_host: str = "localhost"
    statsd_port: int = 8125
    statsd_prefix: str = "cost_middleware"
    tenant_header: str = "x-tenant-id"
    #: Request header whose value is the record's request id (generated when absent).
    request_id_header: str = "x-request-id"
    #: Send the request id back under ``request_id_header`` on inspected responses.
    echo_request_id: bool = True
    #: Request-path globs to inspect; empty means the built-in provider table.
    paths: tuple[str, ...] = field(default_factory=tuple)
    #: ``(glob, provider)``: the provider a route's records show (a gateway's upstream), first
    #: matching glob wins; the response still picks the family.
    route_providers: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    #: Responses larger than this are not inspected (the skip is counted).
    max_body_bytes: int = 8 * 1024 * 1024
    shutdown_timeout: float = 5.0
    #: GenAI semantic-convention metrics and span attributes (the ``otel`` extra).
    otel_enabled: bool = False
    #: Opt-in OpenTelemetry attributes of high cardinality: ``tenant``, ``route``.
    otel_attributes: tuple[str, ...] = field(default_factory=tuple)
    #: A price source (file path or http(s) URL) imported in the background; None: off.
    prices_refresh: str | None = None
    #: Seconds between two refreshes (each jittered by a tenth).
    prices_refresh_interval: float = 3600.0
    #: Opens the dashboard beyond loopback (``cost-middleware dashboard``); never shown.
    dashboard_token: str | None = field(default=None, repr=False)
    #: While Redis is unreachable, block every request a ``block`` budget covers (default:
    #: keep counting in the process and block on what it knows).
    budgets_fail_closed: bool = False

    def __post_init__(self) -> None:
        _check_positive(CACHE_TTL, self.cache_ttl)
        _check_positive(CACHE_SIZE, self.cache_size)
        _check_positive(BATCH_SIZE, self.batch_size)
        _check_positive(FLUSH_INTERVAL, self.flush_interval)
        _check_positive(QUEUE_SIZE, self.queue_size)
        _check_positive(MAX_BODY_BYTES, self.max_body_bytes)
        _check_positive(SHUTDOWN_TIMEOUT, self.shutdown_timeout)
        if not 0 < self.statsd_port < 65536:
            raise ConfigError(STATSD_PORT, self.statsd_port, "must be a port number (1-65535)")
        for name, header in ((TENANT_HEADER, self.tenant_header),
                             (REQUEST_ID_HEADER, self.request_id_header)):
            if not header or not _is_token(header):
                raise ConfigError(name, header, "must be an HTTP header name")
        if "://" not in self.database_url:
            raise ConfigError(DATABASE_URL, self.database_url, "must be a SQLAlchemy URL")
        if self.redis_url is not None and not self.redis_url.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ConfigError(REDIS_URL, self.redis_url,
                              "must be a redis://, rediss:// or unix:// URL")
        _check_routes(self.route_providers, self.route_providers)
        _check_otel_attributes(self.otel_attributes, self.otel_attributes)
        _check_refresh(self)
        # Header names are matched against ASGI's lower-cased bytes.
        object.__setattr__(self, "tenant_header", self.tenant_header.lower())
        object.__setattr__(self, "request_id_header", self.request_id_header.lower())

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``); keyword arguments win.

        ``Settings.from_env(database_url=...)`` is how code overrides one field and keeps the
        environment for the rest (``Settings(...)`` itself reads no environment).
        """
        env = os.environ if environ is None else environ
        _warn_unknown(env)
        values: dict[str, Any] = {}
        if (v := env.get(ENABLED)) is not None:
            values["enabled"] = _bool(ENABLED, v)
        for name, attr in ((DATABASE_URL, "database_url"), (SPOOL_DIR, "spool_dir"),
                           (TENANT_HEADER, "tenant_header"),
                           (REQUEST_ID_HEADER, "request_id_header"),
                           (STATSD_PREFIX, "statsd_prefix")):
            if (v := env.get(name)) is not None:
                if not v.strip():
                    raise ConfigError(name, v, "must not be empty")
                values[attr] = v.strip()
        for name, attr in ((REDIS_URL, "redis_url"), (PRICES_FILE, "prices_file"),
                           (DASHBOARD_TOKEN, "dashboard_token")):
            if (v := env.get(name)) is not None and v.strip():
                values[attr] = v.strip()
        for name, attr in ((CACHE_TTL, "cache_ttl"), (FLUSH_INTERVAL, "flush_interval"),
                           (SHUTDOWN_TIMEOUT, "shutdown_timeout")):
            if (v := env.get(name)) is not None:
                values[attr] = _positive(name, v, _float(name, v))
        for name, attr in ((CACHE_SIZE, "cache_size"), (BATCH_SIZE, "batch_size"),
                           (QUEUE_SIZE, "queue_size"), (MAX_BODY_BYTES, "max_body_bytes")):
            if (v := env.get(name)) is not None:
                values[attr] = _positive(name, v, _int(name, v))
        if (v := env.get(STATSD_PORT)) is not None:
            port = _int(STATSD_PORT, v)
            if not 0 < port < 65536:
                raise ConfigError(STATSD_PORT, v, "must be a port number (1-65535)")
            values["statsd_port"] = port
        for name, attr in ((STATSD, "statsd_enabled"), (ECHO_REQUEST_ID, "echo_request_id"),
                           (OTEL, "otel_enabled"), (BUDGETS_FAIL_CLOSED, "budgets_fail_closed")):
            if (v := env.get(name)) is not None:
                values[attr] = _bool(name, v)
        host = env.get(STATSD_HOST) or env.get(STANDARD_STATSD_HOST)
        if host is not None and host.strip():
            values["statsd_host"] = host.strip()
        if (v := env.get(PATHS)) is not None:
            values["paths"] = _globs(PATHS, v)
        if (v := env.get(PRICES_REFRESH)) is not None and v.strip():
            values["prices_refresh"] = v.strip()
        if (v := env.get(PRICES_REFRESH_INTERVAL)) is not None:
            values["prices_refresh_interval"] = _check_interval(
                v, _float(PRICES_REFRESH_INTERVAL, v))
        if (v := env.get(ROUTE_PROVIDERS)) is not None:
            values["route_providers"] = _check_routes(v, _routes(v))
        if (v := env.get(OTEL_ATTRIBUTES)) is not None:
            values["otel_attributes"] = _check_otel_attributes(
                v, tuple(a.strip() for a in v.split(",") if a.strip()))
        if "statsd_prefix" in values:
            _check_prefix(values["statsd_prefix"])
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        values.update(overrides)
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> Settings:
        return replace(self, **overrides)


#: Variables of ours that are not settings (read by the test suite), never warned about.
_NOT_SETTINGS = frozenset({"COST_MIDDLEWARE_TEST_PG"})
_warned: set[str] = set()


def _warn_unknown(env: Mapping[str, str]) -> None:
    """A misspelt variable (``COST_MIDDLEWARE_BATCHSIZE``) would be ignored without a word:
    warn once per name per process, with the likely intended one."""
    known = frozenset(ALL_VARIABLES) | _NOT_SETTINGS
    for name in env:
        if name.startswith(_PREFIX) and name not in known and name not in _warned:
            _warned.add(name)
            import difflib  # only when there is something to say

            close = difflib.get_close_matches(name, ALL_VARIABLES, n=1, cutoff=0.75)
            hint = f"; did you mean {close[0]}?" if close else ""
            logging.getLogger("cost_middleware").warning(
                "cost_middleware: %s is not a setting and is ignored%s", name, hint)


def _bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(name, value, "must be one of true/false/1/0/yes/no/on/off")


def _int(name: str, value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ConfigError(name, value, "must be an integer") from None


def _float(name: str, value: str) -> float:
    try:
        result = float(value.strip())
    except ValueError:
        raise ConfigError(name, value, "must be a number") from None
    if result != result or result in (float("inf"), float("-inf")):
        raise ConfigError(name, value, "must be a finite number")
    return result


def _positive(name: str, raw: str, value: float) -> Any:
    """``value`` when above zero; the error quotes the raw environment string."""
    if not value > 0:
        raise ConfigError(name, raw, "must be greater than zero")
    return value


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not value > 0:
        raise ConfigError(name, value, "must be greater than zero")


def _globs(name: str, value: str) -> tuple[str, ...]:
    globs = tuple(p.strip() for p in value.split(",") if p.strip())
    for g in globs:
        _check_glob(name, value, g)
    return globs


def _check_glob(name: str, value: object, glob: str) -> None:
    if not glob.startswith(("/", "*")):
        raise ConfigError(name, value, f"glob {glob!r} must start with '/' or '*'")


def _routes(value: str) -> tuple[tuple[str, str], ...]:
    """Comma-separated ``GLOB=PROVIDER`` pairs (blank items skipped, as in the glob lists)."""
    routes = []
    for item in filter(str.strip, value.split(",")):
        glob, sep, provider = (part.strip() for part in item.partition("="))
        if not sep or not glob or not provider or "=" in provider:
            raise ConfigError(ROUTE_PROVIDERS, value, f"{item.strip()!r} is not GLOB=PROVIDER")
        routes.append((glob, provider))
    return tuple(routes)


def _check_routes(value: object, routes: tuple[tuple[str, str], ...]
                  ) -> tuple[tuple[str, str], ...]:
    """``routes`` when each glob is a path glob declared once, naming a provider that is no
    misspelling of ours (the rule ``prices set`` applies)."""
    # Imported here: the provider names come with the usage modules, which Settings alone
    # does not need.
    from cost_middleware.pricing.matching import provider_error

    seen: set[str] = set()
    for glob, provider in routes:
        _check_glob(ROUTE_PROVIDERS, value, glob)
        if glob in seen:
            raise ConfigError(ROUTE_PROVIDERS, value, f"glob {glob!r} is declared twice")
        seen.add(glob)
        if not provider or provider != provider.strip():
            raise ConfigError(ROUTE_PROVIDERS, value, f"provider {provider!r} must be a name")
        if (error := provider_error(provider)) is not None:
            raise ConfigError(ROUTE_PROVIDERS, value, error)
    return routes


#: What ``COST_MIDDLEWARE_OTEL_ATTRIBUTES`` may list.
OTEL_OPT_INS = ("tenant", "route")


def _check_otel_attributes(value: object, names: tuple[str, ...]) -> tuple[str, ...]:
    for name in names:
        if name not in OTEL_OPT_INS:
            raise ConfigError(OTEL_ATTRIBUTES, value,
                              f"{name!r} is not one of {', '.join(OTEL_OPT_INS)}")
    return names


def _check_interval(value: object, interval: float) -> float:
    """``interval`` when not below the minimum; the error quotes ``value`` (the raw string)."""
    if isinstance(interval, bool) or not interval >= MIN_REFRESH_INTERVAL:
        raise ConfigError(PRICES_REFRESH_INTERVAL, value,
                          f"must be at least {MIN_REFRESH_INTERVAL:g} seconds")
    return interval


def _check_refresh(settings: Settings) -> None:
    """A source the refresh can read, an interval not below the minimum, and the database as
    the price source (the refresh writes the table, which a prices file replaces)."""
    _check_interval(settings.prices_refresh_interval, settings.prices_refresh_interval)
    source = settings.prices_refresh
    if source is None:
        return
    scheme, sep, rest = source.partition("://")
    if not source.strip() or (sep and (scheme.lower() not in ("http", "https")
                                       or not rest.split("/", 1)[0])):
        raise ConfigError(PRICES_REFRESH, source,
                          "must be a file path or an http:// or https:// URL with a host")
    if settings.prices_file is not None:
        raise ConfigError(PRICES_REFRESH, source,
                          f"refreshes the database's prices, which {PRICES_FILE} replaces as "
                          "the price source: set one of the two")


def _check_prefix(prefix: str) -> None:
    if not all(c.isalnum() or c in "._-" for c in prefix):
        raise ConfigError(STATSD_PREFIX, prefix,
                          "may contain only letters, digits, '.', '_' and '-'")


def _is_token(name: str) -> bool:
    return all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in name)
