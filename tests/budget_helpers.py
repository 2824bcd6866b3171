"""What the budget tests share: settings, an in-process app, requests, waiting, the ledger."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import sqlalchemy as sa

from cost_middleware import CostMiddleware, Settings
from cost_middleware.budgets.model import Budget, window_bounds
from cost_middleware.budgets.runtime import current_window, usd
from cost_middleware.budgets.spend import window_spend
from cost_middleware.ops.fake_provider import FakeProviderApp
from cost_middleware.utc import utcnow

CHAT = "/v1/chat/completions"


def settings(db_url: str, tmp_path: Path, redis_url: str | None = None, **extra: Any) -> Settings:
    return Settings(database_url=db_url, redis_url=redis_url, statsd_enabled=False,
                    flush_interval=0.05, spool_dir=str(tmp_path / "spool"), **extra)


def app(config: Settings) -> CostMiddleware:
    return CostMiddleware(FakeProviderApp(), config)


def body(n: int) -> bytes:
    return orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user",
                                                                "content": f"q{n}"}]})


def post(middleware: CostMiddleware, tenant: str, n: int = 0, path: str = CHAT
         ) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await client.post(path, headers={"x-tenant-id": tenant}, content=body(n))

    return asyncio.run(go())


def ledger_spend(engine: sa.Engine, budget: Budget) -> dict[str, int]:
    return window_spend(engine, budget, *window_bounds(budget.window, utcnow()))


def ledger_usd(engine: sa.Engine, budget: Budget, value: str) -> Decimal:
    return usd(ledger_spend(engine, budget).get(value, 0))


def window_key(budget: Budget) -> str:
    return current_window(budget, utcnow()).key
