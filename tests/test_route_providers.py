"""A gateway's upstream is known: declared routes and the httpx transport's vendor hosts.

``COST_MIDDLEWARE_ROUTE_PROVIDERS`` names the provider of app routes (strictly parsed, names
checked as ``prices set`` checks them); such a route's records show that provider, priced by its
rows, while the response still picks the family. The transport maps the host it sends to onto
the vendor where the path says only "OpenAI-shaped"; the middleware never reads a ``Host``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from test_httpx_transport import collect, settings

from cost_middleware import CostMiddleware, config
from cost_middleware._types import Receive, Scope, Send
from cost_middleware.config import ConfigError, Settings
from cost_middleware.engine.tracker import CostTracker
from cost_middleware.httpx_transport import AsyncCostTransport, CostTransport
from cost_middleware.ops.cli import main
from cost_middleware.ops.fake_provider import anthropic_messages, fake_provider_app, respond
from cost_middleware.pricing.matching import provider_error
from cost_middleware.schema import cost_records
from cost_middleware.usage.detect import Detector
from cost_middleware.usage.hosts import HOSTS

VARIABLE = config.ROUTE_PROVIDERS

# -- the variable ---------------------------------------------------------------------------


def test_pairs_are_read_in_order() -> None:
    env = {VARIABLE: " /v1/chat/completions = acme ,/together/*=together,, "}
    assert Settings.from_env(env).route_providers == (
        ("/v1/chat/completions", "acme"), ("/together/*", "together"))
    assert Settings.from_env({}).route_providers == ()


@pytest.mark.parametrize(("value", "reason"), [
    ("/v1/chat/completions", "'/v1/chat/completions' is not GLOB=PROVIDER"),
    ("/v1/chat/completions=", "is not GLOB=PROVIDER"),
    ("=acme", "is not GLOB=PROVIDER"),
    ("/a=acme=beta", "is not GLOB=PROVIDER"),
    ("/ok=acme,oops", "'oops' is not GLOB=PROVIDER"),
    ("v1/*=acme", "glob 'v1/*' must start with '/' or '*'"),
    ("/a=acme,/a=beta", "glob '/a' is declared twice"),
    ("/a=OpenAI", "did you mean 'openai'?"),
    ("/a=opneai", "did you mean 'openai'?"),
    ("/a=gemini", "did you mean 'google_gemini' or 'vertex_gemini'?"),
])
def test_a_bad_value_names_the_variable_and_the_value(value: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({VARIABLE: value})
    assert info.value.variable == VARIABLE
    assert str(info.value).startswith(f"{VARIABLE}={value!r}: ")
    assert reason in str(info.value)


@pytest.mark.parametrize("routes", [(("v1", "acme"),), (("/a", ""),), (("/a", " acme"),),
                                    (("/a", "opneai"),), (("/a", "x"), ("/a", "y"))])
def test_constructor_values_are_checked_too(routes: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(ConfigError) as info:
        Settings(route_providers=routes)
    assert info.value.variable == VARIABLE


# -- the detector ---------------------------------------------------------------------------

DECLARED = (("/v1/chat/completions", "acme"), ("/together/*", "together"),
            ("/gw/*", "first"), ("/gw/special/*", "never"))


@pytest.mark.parametrize(("path", "provider", "api"), [
    ("/v1/chat/completions", "acme", "chat_completions"),
    ("/together/v1/chat/completions", "together", "chat_completions"),
    ("/together/v1/messages", "together", "messages"),
    ("/together/generate-text", "together", "unknown"),  # read by shape
    ("/gw/special/x", "first", "unknown"),  # the first glob that matches
    ("/proxy/v1/chat/completions", "openai", "chat_completions"),  # not declared
    ("/v1/messages", "anthropic", "messages"),
])
def test_a_declared_route_keeps_its_family_and_shows_the_provider(path: str, provider: str,
                                                                   api: str) -> None:
    detector = Detector(("/llm/*",), DECLARED)
    target = detector.match("POST", path)
    assert target is not None and (target.provider, target.api) == (provider, api)
    assert detector.match("POST", path) is target  # built once
    assert detector.match("GET", path) is None


def test_undeclared_paths_are_untouched() -> None:
    plain, declaring = Detector(("/llm/*",)), Detector(("/llm/*",), DECLARED)
    for path in ("/llm/x", "/other", "/v1/embeddings", "/api/chat", "/health"):
        assert declaring.match("POST", path) is plain.match("POST", path)


# -- through the middleware, into SQLite ----------------------------------------------------

MODEL = "acme-llm-1"
#: A million of each: at the rates set below, exactly 3 + 7 = 10 USD.
USAGE = {"prompt_tokens": 1_000_000, "completion_tokens": 1_000_000,
         "total_tokens": 2_000_000}


def chat_body(model: str) -> bytes:
    return orjson.dumps({"id": "chatcmpl-1", "object": "chat.completion", "model": model,
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": "hi"}}],
                         "usage": USAGE})


def chat_stream(model: str) -> Iterator[bytes]:
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model}
    yield b"data: " + orjson.dumps({**chunk, "choices": [{"index": 0, "delta": {
        "role": "assistant", "content": "hi"}, "finish_reason": None}]}) + b"\n\n"
    yield b"data: " + orjson.dumps({**chunk, "choices": [], "usage": USAGE}) + b"\n\n"
    yield b"data: [DONE]\n\n"


async def upstream_answer(scope: Scope, receive: Receive, send: Send) -> None:
    """A gateway forwarding to a vendor of its own: chat completions, a stream on ``/stream``."""
    while (await receive()).get("more_body"):
        pass
    stream = scope["path"].endswith("/stream")
    await send({"type": "http.response.start", "status": 200, "headers": [(
        b"content-type", b"text/event-stream" if stream else b"application/json")]})
    for chunk in chat_stream(MODEL) if stream else [chat_body(MODEL)]:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def test_a_gateway_route_is_priced_by_the_declared_provider_s_row(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'cost.db'}"
    for name, value in ((config.DATABASE_URL, url), (config.STATSD, "off"),
                        (config.SPOOL_DIR, str(tmp_path / "spool")),
                        (VARIABLE, "/v1/chat/completions=acme,/acme/*=acme")):
        monkeypatch.setenv(name, value)
    assert main(["prices", "set", "acme", MODEL, "--input", "3", "--output", "7"]) == 0
    mw = CostMiddleware(upstream_answer)

    async def send_all() -> None:
        # The Host header names a vendor of the table: the middleware never reads it.
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=mw),
                                     base_url="http://api.groq.com") as client:
            for path in ("/v1/chat/completions", "/acme/stream", "/proxy/v1/chat/completions"):
                assert (await client.post(path, json={"model": MODEL})).status_code == 200

    asyncio.run(send_all())
    mw.tracker.close()
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(cost_records).order_by(cost_records.c.route)).mappings()
        got = [(r["route"], r["provider"], r["api"], r["model"], r["streamed"], r["partial"],
                r["cost_usd"]) for r in rows]
    engine.dispose()
    assert got == [
        ("/acme/stream", "acme", "chat_completions", MODEL, True, False, Decimal(10)),
        ("/proxy/v1/chat/completions", "openai_compatible", "chat_completions", MODEL, False,
         False, None),
        ("/v1/chat/completions", "acme", "chat_completions", MODEL, False, False, Decimal(10)),
    ]


# -- the httpx transport --------------------------------------------------------------------


def fake_vendor(request: httpx.Request) -> httpx.Response:
    """The local fake provider, answering whatever host the request names."""
    body: Any = orjson.loads(request.content)
    if request.url.path.endswith(":rawPredict"):
        return httpx.Response(200, content=anthropic_messages(body["model"], body),
                              headers={"content-type": "application/json"})
    status, ctype, payload = respond(request.url.path, body)
    content = payload if isinstance(payload, bytes) else b"".join(payload)
    return httpx.Response(status, content=content, headers={"content-type": ctype.decode()})


#: (URL, model asked for, the provider recorded).
CALLS = [
    ("https://api.openai.com/v1/chat/completions", "gpt-oss-120b", "openai"),
    ("https://api.together.xyz/v1/chat/completions", "Qwen/Qwen2.5-72B-Instruct", "together"),
    ("https://api.groq.com/openai/v1/chat/completions", "llama-3.3-70b-versatile", "groq"),
    ("https://api.deepseek.com/chat/completions", "deepseek-chat", "deepseek"),
    ("https://openrouter.ai/api/v1/chat/completions", "qwen/qwen3-235b", "openrouter"),
    ("https://api.mistral.ai/v1/chat/completions", "open-mixtral-8x22b", "mistral"),
    ("https://api.fireworks.ai/inference/v1/chat/completions",
     "accounts/fireworks/models/llama-v3p1-8b-instruct", "fireworks"),
    ("https://prod-eu.openai.azure.com/openai/v1/chat/completions", "gpt-4o", "azure_openai"),
    ("https://api.anthropic.com/v1/chat/completions", "claude-sonnet-4-5", "anthropic"),
    ("https://generativelanguage.googleapis.com/v1beta/openai/chat/completions",
     "gemini-2.5-flash", "google_gemini"),
    ("https://us-central1-aiplatform.googleapis.com/v1/projects/p/locations/us-central1"
     "/endpoints/openapi/chat/completions", "google/gemini-2.5-flash", "vertex_gemini"),
    ("https://bedrock-runtime.us-east-1.amazonaws.com/openai/v1/chat/completions",
     "openai.gpt-oss-120b-1:0", "aws_bedrock"),
    ("https://api.cohere.com/compatibility/v1/chat/completions", "command-a-03-2025",
     "cohere"),
    # Not in the table: as today, the response decides.
    ("https://llm.internal.example/v1/chat/completions", "Qwen/Qwen2.5-72B-Instruct",
     "openai_compatible"),
    ("https://llm.internal.example/v1/chat/completions", "gpt-4o-mini", "openai"),
    # A path that names its vendor knows more than the host (Claude on Vertex).
    ("https://us-east5-aiplatform.googleapis.com/v1/projects/p/locations/us-east5/publishers"
     "/anthropic/models/claude-sonnet-4-5@20250929:rawPredict", "claude-sonnet-4-5",
     "vertex_anthropic"),
]


@pytest.mark.parametrize(("url", "model", "provider"), CALLS,
                         ids=[f"{httpx.URL(u).host}-{m}" for u, m, _ in CALLS])
def test_the_transport_names_the_vendor_of_the_host_it_sends_to(
        url: str, model: str, provider: str, tmp_path: Path) -> None:
    tracker = CostTracker(settings(tmp_path))
    records = collect(tracker)
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    with httpx.Client(transport=CostTransport(httpx.MockTransport(fake_vendor),
                                              tracker=tracker)) as client:
        assert client.post(url, json=body).status_code == 200
    tracker.close()
    assert [(r.provider, r.usage is not None) for r in records] == [(provider, True)]


def test_every_name_a_host_gives_is_a_provider_name_prices_accept() -> None:
    assert all(provider_error(provider) is None for provider in HOSTS.values())


def gateway(client: httpx.AsyncClient, upstream: str) -> Starlette:
    """``/acme/chat`` forwards the request through the transport; ``/ask`` calls the same
    upstream path for an answer of its own."""
    async def forward(request: Request) -> Response:
        reply = await client.post(upstream, content=await request.body())
        return Response(reply.content, media_type="application/json")

    async def ask(request: Request) -> JSONResponse:
        reply = await client.post(upstream, json={"model": "gpt-4o-mini", "messages": []})
        return JSONResponse({"model": reply.json()["model"]})

    return Starlette(routes=[Route("/acme/chat", forward, methods=["POST"]),
                             Route("/ask", ask, methods=["POST"])])


@pytest.mark.parametrize("upstream", ["http://llm.internal/v1/chat/completions",
                                      "https://api.together.xyz/v1/chat/completions"])
def test_inside_a_declared_route_the_transport_records_the_declared_provider(
        upstream: str, tmp_path: Path) -> None:
    """The declaration is the app route's, whatever its upstream's path and host; other
    routes calling the same upstream path are not relabelled; each call is recorded once."""
    client = httpx.AsyncClient(transport=AsyncCostTransport(
        httpx.ASGITransport(app=fake_provider_app)))
    declared = settings(tmp_path).with_overrides(route_providers=(("/acme/*", "acme"),))
    mw = CostMiddleware(gateway(client, upstream), declared)
    records = collect(mw.tracker)

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=mw),
                                     base_url="http://app") as app:
            body = {"model": "Qwen/Qwen2.5-72B-Instruct", "messages": []}
            assert (await app.post("/acme/chat", json=body)).status_code == 200
            assert (await app.post("/ask")).status_code == 200

    asyncio.run(go())
    mw.tracker.close()
    other = "together" if "together" in upstream else "openai"
    assert [(r.route, r.provider) for r in records] == [("/acme/chat", "acme"), ("/ask", other)]
