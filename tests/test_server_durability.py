"""A database outage under real multi-worker servers: uvicorn --workers 2, gunicorn + Flask.

Requests keep being answered at the same latency while PostgreSQL is cut off; a SIGTERM
during the outage spools what is held; after recovery and a restart every request is in
``cost_records`` exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest
import sqlalchemy as sa
from conftest import ROOT, free_port
from faults import Proxy

from cost_middleware.engine.spool import Spool
from cost_middleware.schema import cost_records

BIN = Path(sys.executable).parent
SERVERS: dict[str, Callable[[int], list[str]]] = {
    "uvicorn-2-workers": lambda port: [
        str(BIN / "uvicorn"), "server_apps:asgi_app", "--workers", "2", "--port", str(port),
        "--log-level", "warning"],
    "gunicorn-flask-2-workers": lambda port: [
        str(BIN / "gunicorn"), "server_apps:flask_app", "-w", "2", "-b", f"127.0.0.1:{port}",
        "--log-level", "warning", "--graceful-timeout", "20"],
}


def start(args: list[str], port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(args, cwd=ROOT / "tests", env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(40)


def send(port: int, count: int, sent: list[str], latencies: list[float]) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        for _ in range(count):
            rid = f"r{len(sent):06d}"
            t0 = time.perf_counter()
            reply = client.post("/v1/chat/completions", headers={"x-request-id": rid},
                                content=orjson.dumps({"model": "gpt-4o-mini", "messages": [
                                    {"role": "user", "content": rid}]}))
            latencies.append(time.perf_counter() - t0)
            assert reply.status_code == 200
            sent.append(rid)


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[int(len(ordered) * 0.99)]


def stored(engine: sa.Engine) -> list[str]:
    """The request ids in the ledger; none while no worker has made its tables yet (the
    first phase's workers may have been cut off while making them)."""
    if not sa.inspect(engine).has_table(cost_records.name):
        return []
    with engine.connect() as conn:
        return list(conn.execute(sa.select(cost_records.c.request_id)).scalars())


@pytest.mark.parametrize("server", SERVERS)
def test_outage_sigterm_and_restart_lose_nothing(server: str, proxy: Proxy, pg_url: str,
                                                 tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"),
           "COST_MIDDLEWARE_DATABASE_URL": proxy.url(pg_url),
           "COST_MIDDLEWARE_SPOOL_DIR": str(tmp_path / "spool"),
           "COST_MIDDLEWARE_FLUSH_INTERVAL": "0.2", "COST_MIDDLEWARE_STATSD": "off"}
    engine = sa.create_engine(pg_url)
    sent: list[str] = []
    before: list[float] = []
    during: list[float] = []
    proc = start(SERVERS[server](port), port, env)
    try:
        send(port, 150, sent, before)
        proxy.cut()
        send(port, 150, sent, during)
        # SIGTERM while the database is still away: what the workers hold goes to the spool.
        stop(proc)
        held = Spool(str(tmp_path / "spool")).status().records
        assert held > 0  # the outage really kept records from the database
        proxy.restore()
        proc = start(SERVERS[server](port), port, env)
        send(port, 50, sent, before)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(stored(engine)) < len(sent):
            time.sleep(0.2)
    finally:
        stop(proc)
    try:
        ids = stored(engine)
    finally:
        engine.dispose()
    assert sorted(ids) == sorted(sent)  # every request, exactly once
    assert Spool(str(tmp_path / "spool")).status().records == 0
    # Latency does not depend on the database: generous bound for a loaded 2-core machine.
    assert p99(during) <= 3 * p99(before) + 0.02
