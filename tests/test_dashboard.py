"""The dashboard over real SQLite and PostgreSQL ledgers written by the real pipeline: every
page and its JSON checked against the ledger's own sums, hostile names kept as text, the
access rules; and the same pages in a real headless Chromium served by a real uvicorn."""

from __future__ import annotations

import asyncio
import html
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from conftest import free_port, service_missing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cost_middleware.budgets.model import Budget
from cost_middleware.budgets.store import set_budget
from cost_middleware.config import Settings
from cost_middleware.engine.ledger import open_ledger
from cost_middleware.engine.tracker import CostTracker
from cost_middleware.ops.cli import main
from cost_middleware.ops.dashboard import create_dashboard
from cost_middleware.ops.dashboard.access import AccessError, check_bind
from cost_middleware.ops.dashboard.charts import hbars, stacked_columns
from cost_middleware.ops.dashboard.markup import esc, money
from cost_middleware.ops.dashboard.queries import Series
from cost_middleware.ops.report import report_data
from cost_middleware.pricing.admin import write_prices
from cost_middleware.pricing.catalog import parse_catalog
from cost_middleware.records import CostRecord
from cost_middleware.schema import cost_records
from cost_middleware.usage.model import Usage

CATALOG = {"prices": [
    {"provider": "acme", "model": "alpha", "input": "1.00", "output": "2.00",
     "effective_from": "2020-01-01T00:00:00Z"},
    {"provider": "acme", "model": "beta", "input": "0.15", "cached_input": "0.075",
     "output": "0.60", "effective_from": "2020-01-01T00:00:00Z"},
    # A tier from 1,000 input tokens: cached reads there save 4.00 - 1.00 per 1M.
    {"provider": "acme", "model": "gamma", "input": "2.00", "cached_input": "0.50",
     "output": "8.00", "tiers": [{"above_input_tokens": 1000, "input": "4.00",
                                  "cached_input": "1.00", "output": "16.00"}],
     "effective_from": "2020-01-01T00:00:00Z"},
]}
#: Names that would run script if a page let them through as markup.
HOSTILE_TENANT = "<script>document.title='pwned'</script>"
HOSTILE_ROUTE = "/v1/x\"><img src=x onerror=\"document.title='pwned'\">"
HOSTILE_MODEL = "</text><script>document.title='pwned'</script>"
PAGES = ("/", "/breakdown", "/unpriced", "/cache", "/tokens", "/budgets")
APIS = ("/api/overview", "/api/breakdown", "/api/unpriced", "/api/cache", "/api/tokens",
        "/api/budgets", "/api/report")
TOKEN = "t0k3n-for-the-dashboard-tests"


def _record(model: str | None, usage: Usage | None, *, tenant: str | None, route: str,
            at: datetime, provider: str = "acme") -> CostRecord:
    return CostRecord(provider=provider, api="chat_completions", model=model, usage=usage,
                      tenant=tenant, route=route, method="POST", status_code=200, created_at=at)


def records(now: datetime) -> list[CostRecord]:
    recent, old = now - timedelta(minutes=2), now - timedelta(days=3, hours=5)
    return [
        *(_record("alpha", Usage(input_tokens=100_000, output_tokens=10), tenant="acme",
                  route="/v1/chat/completions", at=recent) for _ in range(4)),
        *(_record("beta", Usage(input_tokens=1000, cached_input_tokens=400, output_tokens=10,
                                reasoning_tokens=4), tenant="globex", route="/v1/messages",
                  at=old) for _ in range(3)),
        _record("gamma", Usage(input_tokens=5000, cached_input_tokens=3000, output_tokens=1),
                tenant="acme", route="/v1/messages", at=recent),
        _record("gamma", Usage(input_tokens=900, cached_input_tokens=500, output_tokens=1),
                tenant="acme", route="/v1/messages", at=recent),
        _record(HOSTILE_MODEL, Usage(input_tokens=50, output_tokens=50), tenant=HOSTILE_TENANT,
                route=HOSTILE_ROUTE, at=recent),
        _record("alpha", Usage(input_tokens=10, output_tokens=1), tenant=HOSTILE_TENANT,
                route=HOSTILE_ROUTE, at=recent),
        _record("alpha", None, tenant=None, route="/v1/chat/completions", at=recent),
    ]


#: What the cached reads above saved: beta 3 x 400 x 0.075, gamma 3000 x 3.00 (tier) + 500 x
#: 1.50 (base), per 1M tokens.
SAVED = Decimal("0.00009") + Decimal("0.009") + Decimal("0.00075")


@dataclass
class Ledger:
    url: str
    engine: sa.Engine
    settings: Settings
    now: datetime


def write_ledger(url: str, tmp: Path, rows: list[CostRecord]) -> Settings:
    settings = Settings(database_url=url, statsd_enabled=False, spool_dir=str(tmp / "spool"))
    engine = open_ledger(settings, seed=False)
    write_prices(engine, parse_catalog(CATALOG))
    set_budget(engine, Budget("tenant", "acme", "day", Decimal("0.25")))
    set_budget(engine, Budget("route", "*", "total", Decimal("1"), mode="observe",
                              alert_at=0.5))
    engine.dispose()
    tracker = CostTracker(settings)
    try:
        for record in rows:
            tracker.record(record)
        assert tracker.flush(20)
    finally:
        tracker.close()
    return settings


@pytest.fixture
def ledger(db_url: str, tmp_path: Path) -> Iterator[Ledger]:
    now = datetime.now(UTC)
    settings = write_ledger(db_url, tmp_path, records(now))
    engine = sa.create_engine(db_url)
    yield Ledger(db_url, engine, settings, now)
    engine.dispose()


def ledger_sum(engine: sa.Engine, *where: Any) -> tuple[int, Decimal]:
    """(records, exact cost) straight from ``cost_records``, not through the rollups."""
    c = cost_records.c
    with engine.connect() as conn:
        n, pico = conn.execute(sa.select(sa.func.count(), sa.func.sum(
            sa.type_coerce(c.cost_usd_pico, sa.BigInteger))).where(*where)).one()
    return int(n), Decimal(int(pico or 0)).scaleb(-12)


@pytest.fixture
def dash() -> Iterator[Any]:
    """``create_dashboard``, each app closed (its pool disposed) when the test ends."""
    apps: list[Any] = []

    def make(*args: Any, **kwargs: Any) -> Any:
        app = create_dashboard(*args, **kwargs)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def get(app: Any, path: str, *, client: str = "127.0.0.1", host: str = "127.0.0.1",
        headers: dict[str, str] | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(client, 50000))
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as c:
            return await c.get(path, headers=headers)

    return asyncio.run(go())


class Dom(HTMLParser):
    """What a page holds that could run: script elements, handler attributes, script links;
    and its title, its text, and the exact amounts of its money cells by element id."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.scripts = 0
        self.handlers: list[str] = []
        self.script_links: list[str] = []
        self.title = ""
        self.text: list[str] = []
        self.usd: dict[str, str] = {}
        self._in_title = self._titled = False
        self._ids: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script":
            self.scripts += 1
        self.handlers += [name for name, _ in attrs if name.startswith("on")]
        self.script_links += [v for n, v in attrs if n in ("href", "src", "action") and v
                              and v.strip().lower().startswith("javascript:")]
        # The document's title is the first; SVG shapes carry <title>s of their own.
        self._in_title = tag == "title" and not self._titled
        self._titled = self._titled or self._in_title
        if ident := values.get("id"):
            self._ids.append(ident)
        if "data-usd" in values and self._ids:
            self.usd.setdefault(self._ids[-1], values["data-usd"] or "")

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        self.text.append(data)

    def all_text(self) -> str:
        return "".join(self.text)


def assert_inert(text: str) -> Dom:
    dom = Dom(text)
    assert dom.scripts == 0
    assert dom.handlers == []
    assert dom.script_links == []
    assert "pwned" not in dom.title
    return dom


# -- every page and its JSON, against the ledger ---------------------------------------------


def test_overview_against_the_ledger(dash: Any, ledger: Ledger) -> None:
    app = dash(ledger.settings)
    c = cost_records.c
    today = ledger.now.replace(hour=0, minute=0, second=0, microsecond=0)
    month = today.replace(day=1)
    data = get(app, "/api/overview").json()
    n, cost = ledger_sum(ledger.engine, c.created_at >= today)
    assert (data["today"]["requests"], Decimal(data["today"]["cost_usd"])) == (n, cost)
    n, cost = ledger_sum(ledger.engine, c.created_at >= month)
    assert (data["month"]["requests"], Decimal(data["month"]["cost_usd"])) == (n, cost)
    _, everything = ledger_sum(ledger.engine)
    daily = sum(Decimal(v) for b in data["daily"]["buckets"] for v in b["cost_usd"].values())
    assert daily == everything  # every record is within the 30 days
    hourly = sum(Decimal(v) for b in data["hourly"]["buckets"] for v in b["cost_usd"].values())
    assert hourly == ledger_sum(ledger.engine, c.created_at >= ledger.now - timedelta(hours=2))[1]
    page = get(app, "/")
    assert page.status_code == 200
    dom = assert_inert(page.text)
    assert Decimal(dom.usd["today"]) == Decimal(data["today"]["cost_usd"])
    assert money(Decimal(data["month"]["cost_usd"])) in dom.all_text()
    assert HOSTILE_MODEL[:39] in dom.all_text()  # in the legend, as text (clipped)


@pytest.mark.parametrize("by", ["model", "tenant", "route", "provider"])
def test_breakdown_against_the_ledger(dash: Any, ledger: Ledger, by: str) -> None:
    app = dash(ledger.settings)
    data = get(app, f"/api/breakdown?by={by}&period=all").json()
    column = cost_records.c[by]
    with ledger.engine.connect() as conn:
        expected = {("(none)" if key is None else key): (int(n), int(pico or 0)) for
                    key, n, pico in conn.execute(sa.select(column, sa.func.count(), sa.func.sum(
                        sa.type_coerce(cost_records.c.cost_usd_pico, sa.BigInteger)))
                        .group_by(column))}
    got = {row[by]: (row["requests"], int(Decimal(row["cost_usd"] or 0).scaleb(12)))
           for row in data["rows"]}
    assert got == expected
    page = get(app, f"/breakdown?by={by}&period=all")
    dom = assert_inert(page.text)
    for key in expected:
        assert key in dom.all_text()


def test_breakdown_filters(dash: Any, ledger: Ledger) -> None:
    app = dash(ledger.settings)
    c = cost_records.c
    data = get(app, "/api/breakdown?by=model&tenant=acme&period=all").json()
    assert {r["model"]: r["requests"] for r in data["rows"]} == {"alpha": 4, "gamma": 2}
    assert Decimal(data["total"]["cost_usd"]) == ledger_sum(ledger.engine, c.tenant == "acme")[1]
    # A period: only the records three days old.
    since = (ledger.now - timedelta(days=4)).isoformat()
    until = (ledger.now - timedelta(days=2)).isoformat()
    window = get(app, "/api/breakdown?by=tenant&" + httpx.QueryParams(
        since=since, until=until).__str__()).json()
    assert [(r["tenant"], r["requests"]) for r in window["rows"]] == [("globex", 3)]
    hostile = get(app, "/api/breakdown?by=route&" + str(httpx.QueryParams(
        tenant=HOSTILE_TENANT, period="all"))).json()
    assert [(r["route"], r["requests"]) for r in hostile["rows"]] == [(HOSTILE_ROUTE, 2)]


def test_tokens_by_kind(dash: Any, ledger: Ledger) -> None:
    app = dash(ledger.settings)
    rows = {r["model"]: r for r in get(app, "/api/tokens?by=model&period=all").json()["rows"]}
    assert rows["beta"]["cached_input_tokens"] == 1200
    assert rows["beta"]["reasoning_tokens"] == 12
    assert rows["gamma"]["input_tokens"] == 5900
    c = cost_records.c
    with ledger.engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.sum(c.output_tokens))).scalar()
    assert sum(r["output_tokens"] for r in rows.values()) == total
    dom = assert_inert(get(app, "/tokens?period=all").text)
    assert "1,200" in dom.all_text()


def test_cache_savings(dash: Any, ledger: Ledger) -> None:
    app = dash(ledger.settings)
    data = get(app, "/api/cache?period=all").json()
    assert Decimal(data["saved_usd"]) == SAVED
    models = {m["model"]: m for m in data["models"]}
    assert Decimal(models["gamma"]["saved_usd"]) == Decimal("0.00975")
    assert models["beta"]["cached_input_tokens"] == 1200
    assert_inert(get(app, "/cache?period=all").text)


def test_unpriced_calls(dash: Any, ledger: Ledger) -> None:
    app = dash(ledger.settings)
    groups = get(app, "/api/unpriced?period=all").json()["groups"]
    found = {(g["reason"], g["model"]): g["records"] for g in groups}
    assert found == {("no row yet", HOSTILE_MODEL): 1, ("no usage", "alpha"): 1}
    assert all(g["meaning"] for g in groups)
    dom = assert_inert(get(app, "/unpriced?period=all").text)
    assert HOSTILE_MODEL in dom.all_text()


def test_budgets(dash: Any, ledger: Ledger) -> None:
    app = dash(ledger.settings)
    lines = get(app, "/api/budgets").json()["budgets"]
    c = cost_records.c
    today = ledger.now.replace(hour=0, minute=0, second=0, microsecond=0)
    acme = next(b for b in lines if b["scope"] == "tenant")
    assert Decimal(acme["spent_usd"]) == ledger_sum(
        ledger.engine, c.tenant == "acme", c.created_at >= today)[1]
    assert acme["state"] == "spent"  # 4 x $0.10002 and gamma, over $0.25
    routes = {b["subject"]: b for b in lines if b["scope"] == "route"}
    assert Decimal(routes["/v1/messages"]["spent_usd"]) == ledger_sum(
        ledger.engine, c.route == "/v1/messages")[1]
    assert HOSTILE_ROUTE in routes
    dom = assert_inert(get(app, "/budgets").text)
    assert HOSTILE_ROUTE in dom.all_text()


def test_api_report_is_what_report_json_prints(dash: Any, ledger: Ledger) -> None:
    app = dash(ledger.settings)
    since = ledger.now - timedelta(days=1)
    until = ledger.now + timedelta(minutes=1)
    query = httpx.QueryParams(by="provider,model", since=since.isoformat(),
                              until=until.isoformat(), tenant="acme")
    got = get(app, f"/api/report?{query}")
    assert got.status_code == 200
    assert got.json() == json.loads(json.dumps(report_data(
        ledger.engine, "provider,model", since, until, tenant="acme")))
    assert get(app, "/api/report?by=colour").status_code == 400


# -- untrusted names -----------------------------------------------------------------------


def test_hostile_names_are_text_on_every_page(dash: Any, ledger: Ledger) -> None:
    app = dash(ledger.settings)
    for path in PAGES:
        for query in ("", "?period=all&by=tenant", "?period=all&stack=route"):
            page = get(app, path + query)
            assert page.status_code == 200, path
            assert_inert(page.text)
            assert "<script>" not in page.text
    # In an attribute: a filter value echoed into the form.
    page = get(app, "/breakdown?" + str(httpx.QueryParams(tenant=HOSTILE_ROUTE)))
    dom = assert_inert(page.text)
    assert HOSTILE_ROUTE not in page.text
    assert dom.title.startswith("Cost by model")


_names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1,
                 max_size=40) | st.sampled_from([HOSTILE_TENANT, HOSTILE_ROUTE, HOSTILE_MODEL,
                                                 "\"'<>&", "]]></svg><script>x</script>"])


@given(st.lists(_names, min_size=1, max_size=4))
def test_charts_keep_any_name_as_text(names: list[str]) -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    series = Series("day", [start], names, [[Decimal(1)] * len(names)])
    for svg in (stacked_columns(series), hbars([(n, [Decimal(2)]) for n in names])):
        dom = Dom(svg)
        assert (dom.scripts, dom.handlers, dom.script_links) == (0, [], [])
        text = dom.all_text()
        for name in names:
            # Shown as text: control characters as \xNN, the rest as it is.
            assert html.unescape(esc(name[:20])) in text


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tenant=_names, route=_names, model=_names)
def test_any_ledger_name_renders_inert(dash: Any, sqlite_ledger: Ledger, tenant: str, route: str,
                                       model: str) -> None:
    tracker = CostTracker(sqlite_ledger.settings)
    try:
        tracker.record(_record(model, Usage(input_tokens=5, output_tokens=5), tenant=tenant,
                               route=route, at=datetime.now(UTC)))
        assert tracker.flush(20)
    finally:
        tracker.close()
    app = dash(sqlite_ledger.settings)
    for path in ("/?stack=tenant", "/breakdown?by=route", "/unpriced", "/tokens?by=tenant",
                 "/budgets"):
        page = get(app, path)
        assert page.status_code == 200
        assert_inert(page.text)


@pytest.fixture
def sqlite_ledger(sqlite_url: str, tmp_path: Path) -> Iterator[Ledger]:
    now = datetime.now(UTC)
    settings = write_ledger(sqlite_url, tmp_path, records(now))
    engine = sa.create_engine(sqlite_url)
    yield Ledger(sqlite_url, engine, settings, now)
    engine.dispose()


# -- who may read it -----------------------------------------------------------------------


def test_without_a_token_only_loopback_answers(dash: Any, sqlite_ledger: Ledger) -> None:
    app = dash(sqlite_ledger.settings)
    assert get(app, "/").status_code == 200
    assert get(app, "/", host="localhost:8050").status_code == 200
    assert get(app, "/", client="::1", host="[::1]:8050").status_code == 200
    assert get(app, "/", client="10.1.2.3").status_code == 403
    # A page elsewhere that rebinds its name to 127.0.0.1 still sends its own Host.
    assert get(app, "/api/overview", host="evil.example").status_code == 403


def test_with_a_token_every_request_carries_it(dash: Any, sqlite_ledger: Ledger) -> None:
    app = dash(sqlite_ledger.settings, token=TOKEN)
    assert get(app, "/", client="10.1.2.3", host="costs.example").status_code == 401
    assert get(app, "/", headers={"authorization": "Bearer wrong-token-wrong-token"}
               ).status_code == 401
    ok = get(app, "/api/overview", client="10.1.2.3", host="costs.example",
             headers={"authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    assert get(app, f"/api/budgets?token={TOKEN}", client="10.1.2.3").status_code == 200
    # On a page, ?token= becomes a cookie and leaves the address.
    first = get(app, f"/breakdown?by=tenant&token={TOKEN}", client="10.1.2.3")
    assert first.status_code == 303
    assert first.headers["location"] == "/breakdown?by=tenant"
    cookie = first.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    again = get(app, "/breakdown?by=tenant", client="10.1.2.3",
                headers={"cookie": cookie.split(";")[0]})
    assert again.status_code == 200
    # A settings token works the same.
    from_env = dash(Settings.from_env(
        {"COST_MIDDLEWARE_DASHBOARD_TOKEN": TOKEN}, database_url=sqlite_ledger.url))
    assert get(from_env, "/", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert TOKEN not in repr(from_env.settings)


def test_bind_and_token_rules(dash: Any, sqlite_ledger: Ledger, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("localhost", None)
    check_bind("0.0.0.0", TOKEN)
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.com"):
        with pytest.raises(AccessError, match="without a token"):
            check_bind(host, None)
    with pytest.raises(AccessError, match="at least 16"):
        create_dashboard(sqlite_ledger.settings, token="short")
    monkeypatch.setenv("COST_MIDDLEWARE_DATABASE_URL", sqlite_ledger.url)
    assert main(["dashboard", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "without a token" in err and "COST_MIDDLEWARE_DASHBOARD_TOKEN" in err


def test_requests_it_refuses(dash: Any, sqlite_ledger: Ledger, tmp_path: Path) -> None:
    app = dash(sqlite_ledger.settings)
    assert get(app, "/nowhere").status_code == 404
    assert get(app, "/breakdown?by=colour").status_code == 400
    assert get(app, "/api/breakdown?since=yesterday").status_code == 400
    assert get(app, "/api/breakdown?" + "tenant=" + "x" * 2000).status_code == 400

    async def post() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            return (await c.post("/")).status_code

    assert asyncio.run(post()) == 405
    missing = dash(Settings(database_url=f"sqlite:///{tmp_path / 'none.db'}"))
    page = get(missing, "/")
    assert page.status_code == 503 and "no ledger at" in page.text
    assert not (tmp_path / "none.db").exists()
    css = get(app, "/static/dashboard.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert "script-src" not in css.headers["content-security-policy"]  # default-src 'none'


def test_mounted_under_a_prefix(dash: Any, sqlite_ledger: Ledger) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    dashboard = dash(sqlite_ledger.settings)
    host = Starlette(routes=[Mount("/costs", app=dashboard)])
    page = get(host, "/costs/breakdown?by=tenant")
    assert page.status_code == 200
    assert 'href="/costs/static/dashboard.css"' in page.text
    assert 'href="/costs/tokens' in page.text
    assert get(host, "/costs/api/overview").json()["today"]["requests"] > 0


# -- a real browser ------------------------------------------------------------------------


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Served:
    """The dashboard under a real uvicorn on a free loopback port, in a thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                return self
            self.thread.join(0.05)
        raise RuntimeError("uvicorn did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def browse(url: str, profile: Path) -> str:
    """The DOM Chromium built from ``url`` (after any script would have run)."""
    assert CHROMIUM is not None
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-extensions", "--disable-background-networking", f"--user-data-dir={profile}",
         "--dump-dom", url],
        capture_output=True, text=True, timeout=90, check=True)
    return done.stdout


def test_every_page_in_a_real_browser(dash: Any, ledger: Ledger, tmp_path: Path) -> None:
    if CHROMIUM is None:  # a skip here, a failure under CI (.ci/run installs it)
        service_missing("chromium (apt-get install -y chromium)")
    c = cost_records.c
    today = ledger.now.replace(hour=0, minute=0, second=0, microsecond=0)
    pages = {path: "?period=all" for path in PAGES}
    pages["/"], pages["/breakdown"] = "?stack=tenant", "?by=tenant&period=all"
    seen: dict[str, Dom] = {}
    with Served(dash(ledger.settings)) as served:
        for path, query in pages.items():
            url = f"http://127.0.0.1:{served.port}{path}{query}"
            seen[path] = dom = assert_inert(browse(url, tmp_path / "profile"))
            assert dom.title.endswith("· cost-middleware"), path
    _, spent_today = ledger_sum(ledger.engine, c.created_at >= today)
    assert Decimal(seen["/"].usd["today"]) == spent_today
    assert money(spent_today) in seen["/"].all_text()
    assert HOSTILE_TENANT in seen["/breakdown"].all_text()  # shown, as text
    _, globex = ledger_sum(ledger.engine, c.tenant == "globex")
    assert money(globex) in seen["/breakdown"].all_text()
    assert money(SAVED) in seen["/cache"].all_text()
