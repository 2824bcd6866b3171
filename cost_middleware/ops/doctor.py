"""``cost-middleware doctor``: is each part this process depends on reachable and set up?"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import sqlalchemy as sa

from cost_middleware.config import Settings


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    #: Not fatal: the middleware works, with less (e.g. no cross-process sync).
    warning: bool = False


def run_checks(settings: Settings) -> list[Check]:
    return [check_database(settings), *check_redis(settings), check_statsd(settings),
            *check_refresh(settings)]


def check_database(settings: Settings) -> Check:
    from cost_middleware.engine.ledger import WHERE_HINT, absent_file, ledger_name, unreachable
    from cost_middleware.schema import cost_records, model_prices
    from cost_middleware.storage.engine import make_engine

    where = ledger_name(settings.database_url)
    init = "run `cost-middleware init`"
    if absent_file(settings.database_url):
        # Connecting would create the file: a check never does.
        return Check("database", False, f"{where}: tables missing ({cost_records.name}, "
                     f"{model_prices.name}); {init} (no file there yet: {WHERE_HINT})")
    try:
        engine = make_engine(settings.database_url)
        try:
            with engine.connect() as conn:
                inspector = sa.inspect(conn)
                missing = [t.name for t in (cost_records, model_prices)
                           if not inspector.has_table(t.name)]
                if missing:
                    return Check("database", False, f"{where}: tables missing "
                                 f"({', '.join(missing)}); {init}")
                count = sa.select(sa.func.count())
                prices = conn.execute(count.select_from(model_prices)).scalar()
                records = conn.execute(count.select_from(cost_records)).scalar()
        finally:
            engine.dispose()
    except Exception as exc:
        # The commands word a ledger they cannot reach the same way (``unreachable``).
        return Check("database", False, unreachable(settings.database_url, exc)
                     or f"{where}: {type(exc).__name__}: {exc}")
    return Check("database", True, f"{where}: {prices} price rows, {records} records")


def check_redis(settings: Settings) -> list[Check]:
    if not settings.redis_url:
        return [Check("redis", True, "not configured (COST_MIDDLEWARE_REDIS_URL unset): prices "
                      "are cached per process and refresh after the cache TTL", warning=True)]
    from cost_middleware.pricing.diagnosis import diagnose

    diagnosis = diagnose(settings.redis_url)
    return [Check("redis", diagnosis.ok, diagnosis.summary, warning=not diagnosis.ok and
                  diagnosis.reachable)]


def check_refresh(settings: Settings) -> list[Check]:
    """The price refresh, only when configured: its source and, through Redis, its last round."""
    if settings.prices_refresh is None:
        return []
    from cost_middleware.pricing.refresh import describe_status

    ok, detail = describe_status(settings)
    return [Check("prices refresh", ok, detail, warning=not ok)]


def check_statsd(settings: Settings) -> Check:
    if not settings.statsd_enabled:
        return Check("statsd", True, "disabled (COST_MIDDLEWARE_STATSD=off)")
    target = f"{settings.statsd_host}:{settings.statsd_port}"
    try:
        info = socket.getaddrinfo(settings.statsd_host, settings.statsd_port,
                                  type=socket.SOCK_DGRAM)
        family, kind, proto, _, address = info[0]
        with socket.socket(family, kind, proto) as sock:
            sock.sendto(f"{settings.statsd_prefix}.doctor.probe:1|c".encode(), address)
    except OSError as exc:
        return Check("statsd", False, f"{target}: {exc}", warning=True)
    return Check("statsd", True, f"{target}: a probe counter was sent (UDP: delivery is not "
                 f"confirmed; look for {settings.statsd_prefix}.doctor.probe)")
