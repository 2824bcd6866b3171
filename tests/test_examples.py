"""Every example starts under a real server, answers a request, and its record is stored."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from conftest import ROOT, free_port

from cost_middleware.schema import cost_records

BIN = Path(sys.executable).parent


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = proc.stdout.read() if proc.stdout else b""
            raise RuntimeError(f"server exited early: {output!r}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


def start(args: list[str], port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    wait_for_port(port, proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout:
        proc.stdout.close()


@pytest.fixture
def provider() -> Iterator[str]:
    port = free_port()
    proc = start([str(BIN / "uvicorn"), "examples.fake_provider:app", "--port", str(port),
                  "--log-level", "warning"], port, dict(os.environ))
    yield f"http://127.0.0.1:{port}"
    stop(proc)


def example_env(tmp_path: Path, upstream: str) -> dict[str, str]:
    return {**os.environ, "UPSTREAM_URL": upstream,
            "COST_MIDDLEWARE_DATABASE_URL": f"sqlite:///{tmp_path / 'ex.db'}",
            "COST_MIDDLEWARE_SPOOL_DIR": str(tmp_path / "spool"),
            "COST_MIDDLEWARE_STATSD": "off"}


def stored(tmp_path: Path) -> list[dict[str, object]]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'ex.db'}")
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(sa.select(cost_records)).mappings()]
    engine.dispose()
    return rows


@pytest.mark.parametrize(
    ("server", "path", "payload"),
    [
        ("examples.starlette_app:app", "/v1/chat/completions",
         {"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True},
          "messages": [{"role": "user", "content": "hi"}]}),
        ("examples.fastapi_app:app", "/summarize", {"text": "a long document"}),
        ("examples.fastapi_app:app", "/v1/messages",
         {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]}),
    ],
)
def test_asgi_examples(server: str, path: str, payload: dict[str, object], provider: str,
                       tmp_path: Path) -> None:
    port = free_port()
    proc = start([str(BIN / "uvicorn"), server, "--port", str(port), "--log-level", "warning"],
                 port, example_env(tmp_path, provider))
    try:
        reply = httpx.post(f"http://127.0.0.1:{port}{path}", json=payload,
                           headers={"x-tenant-id": "acme"}, timeout=20)
        assert reply.status_code == 200, reply.text
    finally:
        stop(proc)
    rows = stored(tmp_path)
    assert len(rows) == 1
    assert rows[0]["tenant"] == "acme" and rows[0]["input_tokens"]
    assert rows[0]["cost_usd"] is not None


def test_flask_example_under_gunicorn(provider: str, tmp_path: Path) -> None:
    port = free_port()
    proc = start([str(BIN / "gunicorn"), "examples.flask_app:app", "-b", f"127.0.0.1:{port}",
                  "-w", "1", "--log-level", "warning"], port, example_env(tmp_path, provider))
    try:
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                           json={"model": "gpt-4o", "stream": True,
                                 "stream_options": {"include_usage": True},
                                 "messages": [{"role": "user", "content": "hi"}]},
                           headers={"x-tenant-id": "globex"}, timeout=20)
        assert reply.status_code == 200
        assert b"data: [DONE]" in reply.content
    finally:
        stop(proc)
    rows = stored(tmp_path)
    assert len(rows) == 1 and rows[0]["tenant"] == "globex"
    assert rows[0]["model"] == "gpt-4o" and rows[0]["streamed"]
