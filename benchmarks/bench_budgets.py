"""What budgets cost the request path: the check of the local spent set, and whole requests.

The spent set is as the budget worker builds it: 1,000 tenants of a ``*`` budget spent, plus
a spent route of another app. Three checks of one provider request (tenant ``acme``) are timed
in alternating rounds: with no budget spent at all (the baseline, what the middleware does
without budgets), with budgets spent but not this tenant's, and with this tenant's spent (the
lookup that leads to a 429). Then whole requests through ``CostMiddleware`` (ASGI, no network):
a provider request without budgets (baseline), the same request with budgets spent for other
tenants, and a request answered 429. Records go to SQLite in the background as in production.

    python benchmarks/bench_budgets.py [--quick]
"""

from __future__ import annotations

import asyncio
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench_middleware import _time, make_app, openai_body
from common import Result, best_per_call, interleave, standalone

from cost_middleware import CostMiddleware, Settings
from cost_middleware.budgets.gate import NOTHING, Blocked, Blocks
from cost_middleware.context import RequestContext

PATH = "/v1/chat/completions"
#: docs/DESIGN targets: the check adds at most this to a request that is not blocked.
CHECK_LIMIT_US = 1.0


def spent_set(with_acme: bool) -> Blocks:
    def blocked(subject: str) -> Blocked:
        return Blocked("tenant", subject, "day", Decimal(10), Decimal(11), 4e9)

    exact = {("tenant", f"tenant-{i}"): blocked(f"tenant-{i}") for i in range(1000)}
    exact["route", "/other/v1/chat/completions"] = Blocked("route", "/other", "day",
                                                           Decimal(1), Decimal(2), 4e9)
    if with_acme:
        exact["tenant", "acme"] = blocked("acme")
    return Blocks(exact, {})


def bench_check(middleware: CostMiddleware, quick: bool) -> list[Result]:
    tracker = middleware.tracker
    gate = tracker.budget_gate
    headers = [(b"content-type", b"application/json"), (b"x-tenant-id", b"acme"),
               (b"user-agent", b"bench"), (b"accept", b"*/*")]
    states = {"none": NOTHING, "others": spent_set(False), "acme": spent_set(True)}

    def check(state: Blocks) -> Any:
        def one() -> object:
            gate.blocks = state
            # A new context per request, as the adapter makes one.
            return gate.check(RequestContext(tracker, "POST", PATH, headers, 0.0), "openai")
        return one

    times = best_per_call({name: check(s) for name, s in states.items()},
                          rounds=5 if quick else 25)
    gate.blocks = NOTHING
    base = times["none"]
    added_us = (times["others"] - base) * 1e6
    return [
        Result("budget check, not blocked (1,001 spent)", times["others"] * 1e6, "µs",
               "check with nothing spent", base * 1e6, f"adds ≤ {CHECK_LIMIT_US} µs",
               added_us <= CHECK_LIMIT_US, f"adds {added_us:.3f} µs"),
        Result("budget check, blocked (lookup hit)", times["acme"] * 1e6, "µs",
               "check with nothing spent", base * 1e6, "", None,
               f"adds {(times['acme'] - base) * 1e6:.3f} µs"),
    ]


def bench_requests(middleware: CostMiddleware, quick: bool) -> list[Result]:
    gate = middleware.tracker.budget_gate
    n = 200 if quick else 1000

    def run(state: Blocks) -> Any:
        def sample() -> float:
            gate.blocks = state
            return asyncio.run(_time(middleware, PATH, n))[0]
        return sample

    samples = interleave({"none": run(NOTHING), "others": run(spent_set(False)),
                          "blocked": run(spent_set(True))}, rounds=3 if quick else 9)
    gate.blocks = NOTHING
    best = {name: min(values) for name, values in samples.items()}
    base = best["none"]
    return [
        Result("request, budgets spent for others", best["others"] * 1e6, "µs/request",
               "the same request without budgets", base * 1e6, "", None,
               f"difference {(best['others'] - base) * 1e6:+.2f} µs (noise of two whole "
               "requests; the check itself is timed above)"),
        Result("request answered 429 (blocked)", best["blocked"] * 1e6, "µs/request",
               "a provider request without budgets", base * 1e6, "", None,
               "the app does not run; nothing is recorded"),
    ]


def run(quick: bool) -> list[Result]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(database_url=f"sqlite:///{Path(tmp) / 'bench.db'}",
                            spool_dir=str(Path(tmp) / "spool"), statsd_enabled=False)
        middleware = CostMiddleware(make_app([openai_body(2048)], b"application/json"),
                                    settings)
        # The worker would replace the set at its polls: keep it ours, measured alone.
        worker = middleware.tracker.budgets
        worker._loaded, worker._next_poll = True, float("inf")
        try:
            return bench_check(middleware, quick) + bench_requests(middleware, quick)
        finally:
            middleware.tracker.close()


if __name__ == "__main__":
    standalone(run, "budgets: the request-path check and whole requests vs no budgets")
