"""A raw ASGI provider stand-in that replays fixture bodies in given chunks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cost_middleware._types import Receive, Scope, Send


class ReplayApp:
    """Answers every request with ``chunks``; records what the app itself received."""

    def __init__(self, chunks: Sequence[bytes], status: int = 200,
                 headers: Sequence[tuple[bytes, bytes]] = ((b"content-type", b"application/json"),),
                 fail_after: int | None = None) -> None:
        self.chunks = list(chunks)
        self.status = status
        self.headers = list(headers)
        self.fail_after = fail_after
        self.request_body = b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.request_body = body
        await send({"type": "http.response.start", "status": self.status,
                    "headers": self.headers})
        for i, chunk in enumerate(self.chunks):
            if self.fail_after is not None and i == self.fail_after:
                raise RuntimeError("upstream died")
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def content_headers(entry: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", entry["content_type"].encode())]
    for name, value in (entry.get("response_headers") or {}).items():
        if name.lower() != "content-type":
            headers.append((name.lower().encode(), value.encode()))
    return headers
