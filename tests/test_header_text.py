"""Attribution headers are text as the client wrote it: UTF-8 when valid, else latin-1.

Through both adapters into SQLite: a ``テナント`` tenant is stored as such (it was mojibake
when header bytes were always read as latin-1), bytes that are not UTF-8 lose nothing, and
an echoed request id goes back as the bytes it came as.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
from providers import ReplayApp

from cost_middleware import CostMiddleware, Settings, WSGICostMiddleware
from cost_middleware._types import Message
from cost_middleware.schema import cost_records

CHAT = "/v1/chat/completions"
BODY = orjson.dumps({"id": "c", "object": "chat.completion", "model": "gpt-4o",
                     "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}})
#: Header bytes as sent -> the text stored.
VALUES = {
    "テナント".encode(): "テナント",
    "café 🧾".encode(): "café 🧾",
    b"plain-ascii": "plain-ascii",
    b"caf\xe9": "café",  # latin-1 bytes, not UTF-8: kept byte for byte
    b"\xc3\x28": "Ã(",  # an invalid UTF-8 sequence: the same
}


def echo_of(raw: bytes) -> bytes:
    """The echoed id's bytes: UTF-8 of the stored text (so, for bytes that were not UTF-8,
    the UTF-8 of their latin-1 reading)."""
    return VALUES[raw].encode()


def settings(tmp: Path) -> Settings:
    return Settings(statsd_enabled=False, database_url=f"sqlite:///{tmp / 'cost.db'}",
                    spool_dir=str(tmp / "spool"))


def stored(tmp: Path) -> list[tuple[str | None, str | None]]:
    engine = sa.create_engine(f"sqlite:///{tmp / 'cost.db'}")
    with engine.connect() as conn:
        rows = conn.execute(sa.select(cost_records.c.tenant, cost_records.c.request_id))
        found = [(tenant, request_id) for tenant, request_id in rows]
    engine.dispose()
    return found


#: Answers every request with a provider body.
provider = ReplayApp([BODY])


@pytest.mark.parametrize("raw", VALUES, ids=repr)
def test_asgi_stores_header_text_as_written(raw: bytes, tmp_path: Path) -> None:
    mw = CostMiddleware(provider, settings(tmp_path))
    echoed: list[bytes] = []

    async def run() -> None:
        scope = {"type": "http", "method": "POST", "path": CHAT, "raw_path": CHAT.encode(),
                 "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
                 "asgi": {"version": "3.0"},
                 "headers": [(b"x-tenant-id", raw), (b"x-request-id", raw)]}

        async def receive() -> Message:
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                echoed.extend(v for k, v in message["headers"] if k == b"x-request-id")

        await mw(scope, receive, send)

    asyncio.run(run())
    mw.tracker.close()
    assert stored(tmp_path) == [(VALUES[raw], VALUES[raw])]
    assert echoed == [echo_of(raw)]


def wsgi_provider(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "application/json")])
    return [BODY]


@pytest.mark.parametrize("raw", VALUES, ids=repr)
def test_wsgi_stores_header_text_as_written(raw: bytes, tmp_path: Path) -> None:
    mw = WSGICostMiddleware(wsgi_provider, settings(tmp_path))
    # PEP 3333: a server hands header bytes over as latin-1 text.
    text = raw.decode("latin-1")
    environ = {"wsgi.version": (1, 0), "REQUEST_METHOD": "POST", "PATH_INFO": CHAT,
               "SCRIPT_NAME": "", "QUERY_STRING": "", "wsgi.input": io.BytesIO(b"{}"),
               "HTTP_X_TENANT_ID": text, "HTTP_X_REQUEST_ID": text}
    echoed: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> Any:
        echoed.extend(v for k, v in headers if k == "x-request-id")
        return lambda data: None

    assert b"".join(mw(environ, start_response)) == BODY
    mw.close()
    assert stored(tmp_path) == [(VALUES[raw], VALUES[raw])]
    # What a server writes for the echoed header: its latin-1 encoding (so every char must
    # be in range).
    assert [value.encode("latin-1") for value in echoed] == [echo_of(raw)]


def test_a_real_client_s_utf8_tenant_through_asgi(tmp_path: Path) -> None:
    mw = CostMiddleware(provider, settings(tmp_path))

    async def run() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=mw),
                                     base_url="http://t") as client:
            return await client.post(CHAT, content=b"{}",
                                     headers=[(b"x-tenant-id", "テナント".encode())])

    assert asyncio.run(run()).content == BODY
    mw.tracker.close()
    [(tenant, _)] = stored(tmp_path)
    assert tenant == "テナント"
