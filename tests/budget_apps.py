"""The app the multi-worker budget test runs under uvicorn: the fake provider behind the
middleware, each response naming the worker process that answered it."""

from __future__ import annotations

import os

from cost_middleware import CostMiddleware
from cost_middleware._types import ASGIApp, Message, Receive, Scope, Send
from cost_middleware.ops.fake_provider import FakeProviderApp


class WorkerHeader:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def named(message: Message) -> None:
            if message["type"] == "http.response.start":
                pid = str(os.getpid()).encode()
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-worker", pid)]}
            await send(message)

        await self.app(scope, receive, named)


asgi_app = WorkerHeader(CostMiddleware(FakeProviderApp()))
