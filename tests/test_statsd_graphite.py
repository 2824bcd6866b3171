"""The shipped Grafana dashboard against a real StatsD and Graphite.

``examples/graphite/run-stack.sh`` starts the reference StatsD daemon (npm's ``statsd``) in front
of Debian's carbon-cache and graphite-web. Demo traffic, plus the faults that drive the rarer
counters (a database cut, a Redis restart, a broken spool), goes through the middleware into a
PostgreSQL ledger; then every Graphite target of ``examples/grafana/cost-middleware.json`` is
rendered by graphite-web and must return data, and the cost and token series must add up to the
ledger: to the micro-dollar, the unit the cost counters count in.

Selected with ``-m graphite``; needs the stack installed (``run-stack.sh install``).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
import sqlalchemy as sa
from conftest import ROOT, RedisServer, service_missing
from faults import Proxy

from cost_middleware.asgi import CostMiddleware
from cost_middleware.config import Settings
from cost_middleware.engine.tracker import CostTracker
from cost_middleware.metrics import sanitize
from cost_middleware.ops.demo import DemoRequest, build_requests, call, serving
from cost_middleware.ops.fake_provider import FakeProviderApp
from cost_middleware.records import CostRecord

pytestmark = pytest.mark.graphite
T = TypeVar("T")

STACK = ROOT / "examples" / "graphite" / "run-stack.sh"
DASHBOARD = ROOT / "examples" / "grafana" / "cost-middleware.json"
PREFIX = "cost_middleware"
TOKEN_KINDS = ("input", "cached_input", "cache_write_input", "output", "reasoning")
#: Generous: StatsD flushes every second and carbon answers from its cache at once.
SETTLE_SECONDS = 45.0


@dataclass(frozen=True)
class Stack:
    statsd_port: int
    graphite_url: str

    def render(self, target: str) -> list[dict[str, Any]]:
        # Everything in this private Graphite is this test's, so a wide window is exact.
        query = urllib.parse.urlencode({"target": target, "from": "-30min", "format": "json"})
        with urllib.request.urlopen(f"{self.graphite_url}/render?{query}", timeout=10) as r:
            series: list[dict[str, Any]] = json.load(r)
        return series


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    if subprocess.run([str(STACK), "check"], capture_output=True).returncode != 0:
        service_missing("StatsD and Graphite (examples/graphite/run-stack.sh install)")
    home = tmp_path / "stack"
    home.mkdir()
    try:
        up = subprocess.run([str(STACK), "up", str(home)], capture_output=True, text=True,
                            timeout=120)
        if up.returncode != 0:
            logs = "\n".join(f"{p.name}: {p.read_text()[-2000:]}"
                             for p in sorted((home / "log").glob("*.log")))
            pytest.fail(f"run-stack.sh up failed: {up.stderr}\n{logs}")
        env = dict(line.split("=", 1) for line in up.stdout.split())
        yield Stack(int(env["STATSD_PORT"]), env["GRAPHITE_URL"])
    finally:
        subprocess.run([str(STACK), "down", str(home)], check=True, timeout=60)


def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, Graphite target) for every target, template variables expanded."""
    board = json.loads(DASHBOARD.read_text())
    values = {v["name"]: v["current"]["value"] for v in board["templating"]["list"]}
    assert values == {"prefix": PREFIX}, "a new template variable: expand it here"

    def panels(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for panel in node.get("panels", []):
            yield panel
            yield from panels(panel)

    found = []
    for panel in panels(board):
        for target in panel.get("targets", []):
            expanded = re.sub(r"\$(\w+)", lambda m: values[m.group(1)], target["target"])
            found.append((panel["title"], expanded))
    return found


def target_of(title: str) -> str:
    (target,) = [t for panel, t in dashboard_targets() if panel == title]
    return target


def points(series: dict[str, Any]) -> list[float]:
    return [value for value, _ in series["datapoints"] if value is not None]


def summed(stack: Stack, target: str, scale: float = 1.0) -> dict[str, int]:
    """Each series of ``target`` summed over the run (times ``scale``), by its name."""
    return {s["target"]: round(sum(points(s)) * scale) for s in stack.render(target)}


def _post(path: str, body: dict[str, Any] | bytes) -> DemoRequest:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return DemoRequest(path, raw, [(b"content-type", b"application/json"),
                                   (b"x-tenant-id", b"acme")])


def _chat(model: str, **extra: Any) -> DemoRequest:
    return _post("/v1/chat/completions",
                 {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra})


def settle(poll: Callable[[], T], done: Callable[[T], bool]) -> T:
    """``poll()`` until ``done`` accepts its value or the time is up; the last value."""
    deadline = time.monotonic() + SETTLE_SECONDS
    value = poll()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.5)
        value = poll()
    return value


def rows(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM cost_records")).scalar_one())


def ledger_sums(engine: sa.Engine) -> tuple[dict[str, int], dict[str, int]]:
    """Micro-dollars per ``provider.model`` and tokens per ``kind.provider.model``, as the
    metric names spell them, from the ledger's exact columns."""
    columns = ", ".join(f"sum({kind}_tokens)" for kind in TOKEN_KINDS)
    query = sa.text(f"SELECT provider, model, sum(cost_usd_pico), {columns} "
                    "FROM cost_records GROUP BY provider, model")
    pico: dict[str, int] = defaultdict(int)
    tokens: dict[str, int] = defaultdict(int)
    with engine.connect() as conn:
        for provider, model, cost, *counts in conn.execute(query):
            name = f"{sanitize(provider)}.{sanitize(model) if model else 'unknown'}"
            if cost is not None:
                pico[name] += int(cost)
            for kind, count in zip(TOKEN_KINDS, counts, strict=True):
                if count:
                    tokens[f"{kind}.{name}"] += int(count)
    # The counters carry fractions of a micro-dollar forward: what was sent is the floor.
    micro = {name: value // 10**6 for name, value in pico.items() if value >= 10**6}
    return micro, dict(tokens)


async def _traffic(app: CostMiddleware, tracker: CostTracker, proxy: Proxy,
                   redis: RedisServer, broken_spool: Path, settings: Settings) -> int:
    """Sends everything; returns how many records the ledger must end up holding."""
    for request in build_requests(400, seed=15):
        await call(app, request)
    await call(app, _chat("no-such-model-15"))  # price.unknown_model
    await call(app, _chat("gpt-4o-mini", stream=True))  # no include_usage: usage.missing
    await call(app, _post("/v1/chat/completions", b"{not json"))  # 400: skipped.*
    assert tracker.flush(30)
    # A second submission of a stored record (no usage, so no cost): records.duplicates.
    again = CostRecord(provider="openai", api="chat", model="gpt-4o-mini", usage=None)
    for _ in range(2):
        tracker.record(again)
        assert tracker.flush(30)
    # The price sync loses Redis and subscribes again: sync.reconnects (each subscription
    # also counts sync.invalidations).
    redis.stop()
    redis.start()
    # The database goes away: a model not yet priced fails its lookup (price.source_error),
    # the write fails (batch.failed) and the records go to disk (records.spooled,
    # spool.bytes); once it is back they are priced and written (records.replayed).
    proxy.cut()
    for _ in range(5):
        await call(app, _chat("gpt-4.1-mini"))
    assert tracker.flush(30)
    # A process whose spool cannot be written loses its records: records.dropped.
    lost = CostTracker(settings.with_overrides(spool_dir=str(broken_spool)))
    lost.record(CostRecord(provider="openai", api="chat", model="gpt-4o-mini", usage=None))
    lost.close(5)
    proxy.restore()
    return 400 + 2 + 1 + 5


def test_every_dashboard_target_has_data_and_the_sums_match_the_ledger(
    stack: Stack, proxy: Proxy, pg_url: str, redis_server: RedisServer, tmp_path: Path,
) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    # A spool file without a valid header, as a crash can leave: set aside, spool.corrupt.
    (spool_dir / f"{'0' * 20}-1-0badf11e.spool").write_bytes(b"torn\n")
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("")
    settings = Settings(database_url=proxy.url(pg_url), redis_url=redis_server.url,
                        spool_dir=str(spool_dir), statsd_host="127.0.0.1",
                        statsd_port=stack.statsd_port, flush_interval=0.2)
    tracker = CostTracker(settings)
    app = CostMiddleware(FakeProviderApp(), tracker=tracker)
    ledger = sa.create_engine(pg_url)
    targets = dashboard_targets()
    assert len(targets) >= 20

    def empty_targets() -> list[str]:
        return [f"{panel}: {target}" for panel, target in targets
                if not any(points(s) for s in stack.render(target))]

    async def scenario() -> None:
        # Inside the app's lifespan: its end closes the tracker, which would stop the replay.
        async with serving(app):
            expected_rows = await _traffic(app, tracker, proxy, redis_server,
                                           not_a_dir / "spool", settings)
            # The spooled records replayed.
            assert settle(lambda: rows(ledger), lambda n: n == expected_rows) == expected_rows
            # Every target of every panel, while the tracker still runs (the price sync may
            # still be reconnecting).
            assert settle(empty_targets, lambda empty: not empty) == []

    try:
        asyncio.run(scenario())
        micro, tokens = ledger_sums(ledger)
    finally:
        tracker.close(10)
        ledger.dispose()
    assert micro and tokens and any(k.startswith("cached_input.") for k in tokens)

    # Once the last flush is in, each cost and token series adds up to the ledger.
    by_model = target_of("Cost by model (USD per minute)")
    assert settle(lambda: summed(stack, by_model, 1e6), lambda sent: sent == micro) == micro
    total = summed(stack, target_of("Cost total (USD, time range)"), 1e6)
    assert list(total.values()) == [sum(micro.values())]
    by_provider: dict[str, int] = defaultdict(int)
    for name, value in micro.items():
        by_provider[name.split(".")[0]] += value
    assert summed(stack, target_of("Cost by provider (USD per minute)"), 1e6) == by_provider
    sent_tokens = {**summed(stack, target_of("Tokens by model (per minute)")),
                   **summed(stack, target_of("Cached and reasoning tokens (per minute)"))}
    assert sent_tokens == tokens
