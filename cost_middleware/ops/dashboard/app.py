"""The dashboard as a plain ASGI app: routing, access, responses; the views do the reading.

Pages and their JSON twins (``/api/<page>``) are GET only. The ledger is opened on the first
request (read only: nothing is created) and kept; a ledger that cannot be read is a 503 page
that says why, and the next request tries again. Queries run in a worker thread, so the event
loop of an app the dashboard is mounted in never waits on the database.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any

from cost_middleware._types import Receive, Scope, Send
from cost_middleware.config import Settings
from cost_middleware.ops.dashboard import access, views
from cost_middleware.ops.dashboard.markup import href, join, tag
from cost_middleware.ops.dashboard.params import BadRequest, Query

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from cost_middleware.pricing.book import PriceBook

#: (path, title) of each page, in the navigation's order.
PAGES = (("/", "Overview"), ("/breakdown", "Breakdown"), ("/unpriced", "Unpriced"),
         ("/cache", "Cache savings"), ("/tokens", "Tokens"), ("/budgets", "Budgets"))

#: No script at all, styles from our own file, forms back to us, never framed.
_POLICY = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
           "frame-ancestors 'none'; base-uri 'none'")
_COMMON = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
           (b"cache-control", b"no-store"), (b"content-security-policy", _POLICY.encode())]


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: str
    extra: list[tuple[bytes, bytes]]

    async def send(self, send: Send, head: bool) -> None:
        headers = [(b"content-type", self.content_type.encode()),
                   (b"content-length", str(len(self.body)).encode()), *_COMMON, *self.extra]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else self.body})


def _json(status: int, data: Any) -> Response:
    body = (json.dumps(data, indent=2) + "\n").encode()
    return Response(status, body, "application/json", [])


def _text(status: int, message: str) -> Response:
    return Response(status, (message + "\n").encode(), "text/plain; charset=utf-8", [])


class Dashboard:
    """The ASGI app :func:`create_dashboard` returns."""

    def __init__(self, settings: Settings, token: str | None = None) -> None:
        self.settings = settings
        self.token = access.check_token(token)
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        self._css = resources.files("cost_middleware.ops.dashboard").joinpath(
            "static/dashboard.css").read_bytes()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # no websockets here: the server refuses the handshake
        response = await self._respond(scope)
        await response.send(send, scope["method"] == "HEAD")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def close(self) -> None:
        """Dispose of the ledger's connections (a later request opens it again)."""
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()

    async def _respond(self, scope: Scope) -> Response:
        root = str(scope.get("root_path", "")).rstrip("/")
        path = str(scope["path"])
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        if scope["method"] not in ("GET", "HEAD"):
            response = _text(405, "the dashboard only reads: GET or HEAD")
            response.extra.append((b"allow", b"GET, HEAD"))
            return response
        try:
            query = Query.parse(scope.get("query_string", b""))
        except BadRequest as exc:
            return _text(400, str(exc))
        refused = self._refused(scope, query)
        if refused is not None:
            return refused
        if self.token is not None and query.get("token") is not None and not path.startswith(
                ("/api/", "/static/")):
            return self._remember_token(scope, root, path, query)
        if path == "/static/dashboard.css":
            return Response(200, self._css, "text/css; charset=utf-8", [])
        api = path.startswith("/api/")
        name = path[len("/api"):] if api else path
        if api and name == "/overview":
            name = "/"  # the overview's page is the root
        elif api and name == "/":
            return _text(404, "no such page: the API is /api/<page>, e.g. /api/overview")
        if name not in _VIEWS and name != "/report":
            return _text(404, "no such page")
        try:
            return await asyncio.to_thread(self._render, name, api, query, root)
        except BadRequest as exc:
            return _json(400, {"error": str(exc)}) if api else _text(400, str(exc))

    def _refused(self, scope: Scope, query: Query) -> Response | None:
        headers = scope.get("headers", [])
        if self.token is not None:
            if access.token_matches(self.token, access.presented(headers, query.get("token"))):
                return None
            response = _text(401, "this dashboard needs its token: Authorization: Bearer "
                                  "<token>, or ?token=<token> once")
            response.extra.append((b"www-authenticate", b'Bearer realm="cost-middleware"'))
            return response
        client = scope.get("client")
        host = next((v.decode("latin-1") for k, v in headers if k == b"host"), "localhost")
        if client and access.is_loopback(str(client[0])) and access.is_loopback(
                access.host_name(host)):
            return None
        return _text(403, "without a token the dashboard answers only this machine, under a "
                          "loopback name (127.0.0.1, localhost); set "
                          "COST_MIDDLEWARE_DASHBOARD_TOKEN to serve it further")

    def _remember_token(self, scope: Scope, root: str, path: str, query: Query) -> Response:
        """A valid ``?token=`` on a page: keep it in a cookie, and drop it from the address."""
        from urllib.parse import urlencode

        rest = {k: v for k, v in query.values.items() if k != "token"}
        target = (root + path) + ("?" + urlencode(rest) if rest else "")
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        cookie = (f"{access.COOKIE}={self.token}; HttpOnly; SameSite=Strict; "
                  f"Path={root or '/'}{secure}")
        return Response(303, b"", "text/plain; charset=utf-8",
                        [(b"location", target.encode()), (b"set-cookie", cookie.encode())])

    # -- reading ---------------------------------------------------------------------------

    def _ledger(self) -> Engine:
        from cost_middleware.engine.ledger import read_ledger

        with self._lock:
            if self._engine is None:
                self._engine = read_ledger(self.settings)
            return self._engine

    def _render(self, name: str, api: bool, query: Query, root: str) -> Response:
        from cost_middleware.engine.ledger import ledger_name, unreachable
        from cost_middleware.storage.revision import LedgerVersionError

        try:
            engine = self._ledger()
            view = views.View(engine, self.settings, query, root, datetime.now(UTC))
            if name == "/report":
                return Response(200, _report_json(engine, query), "application/json", [])
            page = _VIEWS[name](self, view)
        except BadRequest:
            raise
        except LedgerVersionError as exc:
            return self._failure(api, root, str(exc))
        except Exception as exc:
            problem = unreachable(self.settings.database_url, exc)
            if problem is None:
                raise
            self.close()  # a dead pool: the next request opens it again
            return self._failure(api, root, problem)
        if api:
            return _json(200, page.data)
        return Response(200, layout(page, root, ledger_name(self.settings.database_url),
                                    query).encode(), "text/html; charset=utf-8", [])

    def _failure(self, api: bool, root: str, problem: str) -> Response:
        if api:
            return _json(503, {"error": problem})
        page = views.Page("Ledger unavailable", None, tag('<p class="error">{p}</p>', p=problem))
        return Response(503, layout(page, root, "", Query({})).encode(),
                        "text/html; charset=utf-8", [])

    def book(self, engine: Engine) -> PriceBook:
        """The settings' prices, counting nothing to StatsD (the dashboard is not the app)."""
        from cost_middleware.metrics import Metrics
        from cost_middleware.pricing.book import PriceBook

        book = PriceBook.from_settings(self.settings, engine, Metrics(
            self.settings.with_overrides(statsd_enabled=False)))
        book.log_unknown_models = False
        return book

    def unpriced(self, view: views.View) -> views.Page:
        from cost_middleware.pricing.unpriced import explain_unpriced

        book = self.book(view.engine)
        try:
            return views.unpriced(view, lambda since: explain_unpriced(view.engine, book, since))
        finally:
            book.close()

    def cache(self, view: views.View) -> views.Page:
        if self.settings.prices_file is None:
            return views.cache(view, None)  # rows found by the version each record keeps
        book = self.book(view.engine)
        try:
            return views.cache(view, book.lookup)
        finally:
            book.close()


def _report_json(engine: Engine, query: Query) -> bytes:
    """What ``cost-middleware report --format json`` prints for the same arguments."""
    from cost_middleware.ops.report import report_data

    limit = query.get("limit")
    if limit is not None and not limit.isdigit():
        raise BadRequest("limit must be a whole number")
    try:
        data = report_data(engine, query.get("by") or "model", query.when("since"),
                           query.when("until"), tenant=query.get("tenant"),
                           model=query.get("model"), provider=query.get("provider"),
                           route=query.get("route"),
                           limit=None if limit is None else int(limit))
    except ValueError as exc:  # the report's own refusal of a --by or --limit
        raise BadRequest(str(exc)) from None
    return (json.dumps(data, indent=2) + "\n").encode()


_VIEWS: dict[str, Callable[[Dashboard, views.View], views.Page]] = {
    "/": lambda app, view: views.overview(view),
    "/breakdown": lambda app, view: views.breakdowns(view),
    "/unpriced": Dashboard.unpriced,
    "/cache": Dashboard.cache,
    "/tokens": lambda app, view: views.tokens(view),
    "/budgets": lambda app, view: views.budgets(view),
}


def layout(page: views.Page, root: str, ledger: str, query: Query) -> str:
    """The whole HTML document of a page: navigation, the page's body, the ledger's name."""
    keep = {k: v for k, v in query.values.items() if k in (
        "period", "since", "until", "tenant", "model", "provider", "route")}
    nav = join(tag('<a href="{h}">{t}</a>', h=root + href(path, **keep), t=title)
               for path, title in PAGES)
    return tag(
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>{title} · cost-middleware</title>"
        '<link rel="stylesheet" href="{css}"></head>'
        '<body><header><span class="brand">cost-middleware</span><nav>{nav}</nav></header>'
        "<main><h1>{title}</h1>{body}</main>"
        '<footer>ledger: <span class="ledger">{ledger}</span> · all times UTC</footer>'
        "</body></html>\n",
        title=page.title, css=root + "/static/dashboard.css", nav=nav, body=page.body,
        ledger=ledger)


def create_dashboard(settings: Settings | None = None, *, token: str | None = None) -> Dashboard:
    """The dashboard over the ledger of ``settings`` (default: the environment's), as an ASGI
    app to serve or mount. ``token`` (default ``settings.dashboard_token``) opens it beyond
    loopback; without one it answers only this machine."""
    resolved = settings or Settings.from_env()
    return Dashboard(resolved, token if token is not None else resolved.dashboard_token)

