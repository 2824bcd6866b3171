"""One bad environment variable never takes the app down, in process and under real servers.

Every variable that can be invalid gets a bad value. ASGI: the middleware logs one ERROR
(variable, value, fix), passes every request through untouched and fails the server's
lifespan start-up, so the server exits. WSGI: the wrapper raises while the app is loaded, so
the server does not start. Never a 500 of ours.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ROOT, free_port
from test_examples import stop

from cost_middleware import CostMiddleware, Usage, WSGICostMiddleware, config, record_usage
from cost_middleware._types import Message, Receive, Scope, Send
from cost_middleware.config import ConfigError, Settings
from cost_middleware.httpx_transport import AsyncCostTransport, CostTransport
from cost_middleware.ops.demo import serving

#: A bad value for every variable that has one.
BAD = {
    config.ENABLED: "maybe",
    config.DATABASE_URL: "cost.db",
    config.REDIS_URL: "localhost:6379",
    config.CACHE_TTL: "-1",
    config.CACHE_SIZE: "1.5",
    config.BATCH_SIZE: "0",
    config.FLUSH_INTERVAL: "soon",
    config.QUEUE_SIZE: "",
    config.SPOOL_DIR: " ",
    config.STATSD: "disabled",
    config.STATSD_PORT: "70000",
    config.STATSD_PREFIX: "a:1|c",
    config.TENANT_HEADER: "x tenant",
    config.REQUEST_ID_HEADER: "x request id",
    config.ECHO_REQUEST_ID: "sometimes",
    config.PATHS: "llm/*",
    config.ROUTE_PROVIDERS: "/v1/chat/completions",
    config.MAX_BODY_BYTES: "-5",
    config.SHUTDOWN_TIMEOUT: "inf",
    config.PRICES_REFRESH: "ftp://prices.example.com/p.json",
    config.PRICES_REFRESH_INTERVAL: "5",
    config.OTEL: "maybe",
    config.OTEL_ATTRIBUTES: "tenant,model",
    config.BUDGETS_FAIL_CLOSED: "perhaps",
}
#: Any value is valid: a path, a host name or a token is only checked when it is used (the
#: dashboard refuses a short token itself).
ALWAYS_VALID = {config.PRICES_FILE, config.STATSD_HOST, config.DASHBOARD_TOKEN}
VARIABLES = sorted(BAD)


def error_for(variable: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: BAD[variable]})
    return info.value


def test_every_variable_is_covered() -> None:
    assert set(config.ALL_VARIABLES) == set(BAD) | ALWAYS_VALID
    for variable in ALWAYS_VALID:
        Settings.from_env({variable: "anything at all"})


@pytest.mark.parametrize("variable", VARIABLES)
def test_the_error_names_the_variable_and_the_value(variable: str) -> None:
    error = error_for(variable)
    assert error.variable == variable
    assert str(error).startswith(f"{variable}={BAD[variable]!r}: ")


# -- in process --------------------------------------------------------------------------


async def app_answer(scope: Scope, receive: Receive, send: Send) -> None:
    """A provider route's answer (usage and all), or a status of the app's own."""
    assert scope["type"] == "http"
    await receive()
    if scope["path"] == "/v1/chat/completions":
        body = (b'{"id": "c1", "object": "chat.completion", "model": "gpt-4o", "choices": [],'
                b' "usage": {"prompt_tokens": 10, "completion_tokens": 2}}')
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body[:20], "more_body": True})
        await send({"type": "http.response.body", "body": body[20:]})
    else:
        await send({"type": "http.response.start", "status": 418, "headers": []})
        await send({"type": "http.response.body", "body": b"teapot"})


async def exchange(app: Callable[..., Any], path: str) -> list[Message]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "method": "POST", "path": path,
             "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json")]}
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b'{"model": "gpt-4o"}'}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def our_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "cost_middleware" and r.levelno >= logging.ERROR]


@pytest.mark.parametrize("variable", VARIABLES)
def test_asgi_passes_http_through_untouched_and_logs_once(
    variable: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(variable, BAD[variable])
    mw = CostMiddleware(app_answer)
    error = error_for(variable)
    assert mw.config_error is not None and str(mw.config_error) == str(error)
    paths = ("/v1/chat/completions", "/teapot") * 2
    seen = [asyncio.run(exchange(mw, path)) for path in paths]
    assert seen == [asyncio.run(exchange(app_answer, path)) for path in paths]
    logged = our_errors(caplog)
    assert len(logged) == 1
    assert str(error) in logged[0] and f"unset {variable}" in logged[0]
    assert not mw.tracker.settings.enabled and mw.tracker.batcher._thread is None


@pytest.mark.parametrize("variable", VARIABLES)
def test_asgi_lifespan_startup_fails_with_the_message(variable: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(variable, BAD[variable])
    mw = CostMiddleware(app_answer)  # the app's own lifespan is never reached

    async def start() -> None:
        async with serving(mw):
            raise AssertionError("started")

    with pytest.raises(RuntimeError, match="lifespan startup failed") as info:
        asyncio.run(start())
    assert str(error_for(variable)) in str(info.value)


@pytest.mark.parametrize("variable", VARIABLES)
def test_starlette_builds_the_stack_once_and_answers_with_the_app(
    variable: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Starlette builds middleware on the first scope (and again while that raises)."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def own(request: Any) -> PlainTextResponse:
        return PlainTextResponse("own", status_code=418)

    monkeypatch.setenv(variable, BAD[variable])
    app = Starlette(routes=[Route("/v1/chat/completions", own, methods=["POST"])])
    app.add_middleware(CostMiddleware)

    async def requests() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return [await client.post("/v1/chat/completions", json={}) for _ in range(3)]

    replies = asyncio.run(requests())
    assert [r.status_code for r in replies] == [418] * 3
    assert all("x-request-id" not in r.headers for r in replies)
    assert len(our_errors(caplog)) == 1


@pytest.mark.parametrize("variable", VARIABLES)
def test_wsgi_raises_at_construction(variable: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(variable, BAD[variable])
    with pytest.raises(ConfigError) as info:
        WSGICostMiddleware(lambda environ, start_response: [])
    assert info.value.variable == variable


@pytest.mark.parametrize("variable", VARIABLES)
def test_sdk_calls_never_see_an_exception(variable: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The transports read no settings when built; with a broken middleware's engine (or
    none) they and ``record_usage`` pass everything through and record nothing."""
    monkeypatch.setenv(variable, BAD[variable])
    body = b'{"model": "gpt-4o", "choices": [], "usage": {"prompt_tokens": 3}}'

    def provider(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    broken = CostMiddleware(app_answer)
    usage = Usage(input_tokens=3, output_tokens=1)
    for tracker in (None, broken.tracker):
        sync = httpx.Client(transport=CostTransport(httpx.MockTransport(provider),
                                                    tracker=tracker))
        assert sync.post("https://api.openai.com/v1/chat/completions").content == body
        sync.close()

        async def call_async(tracker: Any = tracker) -> bytes:
            transport = AsyncCostTransport(httpx.MockTransport(provider), tracker=tracker)
            async with httpx.AsyncClient(transport=transport) as client:
                reply = await client.post("https://api.openai.com/v1/chat/completions")
                return reply.content

        assert asyncio.run(call_async()) == body
        assert record_usage(usage, provider="openai", model="gpt-4o", tracker=tracker) is None

    async def in_a_request(scope: Scope, receive: Receive, send: Send) -> None:
        assert record_usage(usage, provider="openai", model="gpt-4o") is None
        await app_answer(scope, receive, send)

    asyncio.run(exchange(CostMiddleware(in_a_request), "/teapot"))
    assert broken.tracker.batcher._thread is None  # nothing was ever queued


# -- real servers ------------------------------------------------------------------------

BIN = Path(sys.executable).parent
#: How each server is started, and whether it must refuse to start (True) or serve.
SERVERS: dict[str, tuple[Callable[[int], list[str]], bool]] = {
    **{f"uvicorn-lifespan-{mode}": ((lambda port, mode=mode: [
        str(BIN / "uvicorn"), "bad_config_apps:asgi_app", "--host", "127.0.0.1",
        "--port", str(port), "--lifespan", mode]), mode != "off")
       for mode in ("auto", "on", "off")},
    "gunicorn-flask": ((lambda port: [
        str(BIN / "gunicorn"), "bad_config_apps:create_flask_app()", "-k", "sync", "-w", "1",
        "-b", f"127.0.0.1:{port}"]), True),
    "flask-run": ((lambda port: [
        str(BIN / "flask"), "--app", "bad_config_apps:create_flask_app()", "run",
        "--host", "127.0.0.1", "--port", str(port)]), True),
}
START_TIMEOUT = 30.0


@dataclass
class Outcome:
    exit_code: int | None  # None: it was serving and we stopped it
    #: (status, whether x-request-id came back) of each request it answered.
    answers: list[tuple[int, bool]]
    output: str


def probe(port: int) -> list[tuple[int, bool]]:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        replies = [client.post("/v1/chat/completions",
                               json={"model": "gpt-4o-mini", "messages": []}),
                   client.get("/teapot")]
    return [(r.status_code, "x-request-id" in r.headers) for r in replies]


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def run_server(server: str, variable: str, workdir: Path) -> Outcome:
    """Start it with the bad value; it either exits or answers the probe. Always stopped."""
    command, _ = SERVERS[server]
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in config.ALL_VARIABLES and k != config.STANDARD_STATSD_HOST}
    env.update({"PYTHONPATH": str(ROOT / "tests"), variable: BAD[variable],
                "PYTHONUNBUFFERED": "1"})
    workdir.mkdir(parents=True)
    log = workdir / "output.log"
    answers: list[tuple[int, bool]] = []
    with log.open("wb") as out:
        # In its own folder: nothing may be written next to the tests.
        proc = subprocess.Popen(command(port), cwd=workdir, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while proc.poll() is None and time.monotonic() < deadline:
                if listening(port):
                    try:
                        answers = probe(port)
                        break
                    except httpx.HTTPError:
                        pass  # gunicorn listens before its worker boots (or fails to)
                time.sleep(0.05)
        finally:
            exit_code = proc.poll()
            stop(proc)
    return Outcome(exit_code, answers, log.read_text(errors="replace"))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Outcome]:
    """Every (server, variable) run, a few at a time: most of each run is interpreter start."""
    root = tmp_path_factory.mktemp("servers")
    runs = [(server, variable) for server in SERVERS for variable in VARIABLES]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(lambda run: run_server(*run, root / f"{run[0]}-{run[1]}"), runs)
        return dict(zip(runs, results, strict=True))


@pytest.mark.parametrize("variable", VARIABLES)
@pytest.mark.parametrize("server", SERVERS)
def test_a_real_server_refuses_to_start_or_serves_the_app(
    server: str, variable: str, outcomes: dict[tuple[str, str], Outcome]
) -> None:
    outcome = outcomes[server, variable]
    error = str(error_for(variable))
    assert error in outcome.output, outcome.output
    _, must_refuse = SERVERS[server]
    if must_refuse:
        assert outcome.exit_code not in (None, 0), outcome.output
        assert outcome.answers == []
    else:
        # Every request answered by the app itself, untouched (no request id added), and
        # our ERROR logged once, when the app was built.
        assert outcome.exit_code is None, outcome.output
        assert outcome.answers == [(200, False), (418, False)], outcome.output
        assert outcome.output.count(f"cost_middleware: {error}") == 1, outcome.output
        assert "Traceback" not in outcome.output
