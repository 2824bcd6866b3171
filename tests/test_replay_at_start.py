"""Records a stopped process spooled are replayed when the next one starts, without traffic.

gunicorn (plain, and ``--preload``, which builds the app in the master and forks workers from
it) is stopped during a database outage and restarted with the database back: the spooled
rows are in the ledger within 2 s, no request sent. The same in process for both adapters
(the ASGI one without lifespan), and for a child forked after the wrapper was built.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import orjson
import pytest
import sqlalchemy as sa
from conftest import ROOT, free_port

from cost_middleware import CostMiddleware, CostRecord, Settings, Usage, WSGICostMiddleware
from cost_middleware._types import Receive, Scope, Send
from cost_middleware.engine.spool import Spool
from cost_middleware.schema import cost_records

BIN = Path(sys.executable).parent
REPLAY_SECONDS = 2.0


def ledger_ids(url: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return sorted(conn.execute(sa.select(cost_records.c.request_id)).scalars())
    except sa.exc.OperationalError:  # the worker has not created the table yet
        return []
    finally:
        engine.dispose()


def replayed_within(url: str, expected: list[str], seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    found = ledger_ids(url)
    while found != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        found = ledger_ids(url)
    return found


def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    """Until the server accepts connections (a TCP connect: no request is sent)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the server did not start")


def gunicorn(port: int, env: dict[str, str], preload: bool) -> subprocess.Popen[bytes]:
    args = [str(BIN / "gunicorn"), "server_apps:flask_app", "-w", "2", "-b",
            f"127.0.0.1:{port}", "--log-level", "warning", "--graceful-timeout", "20"]
    proc = subprocess.Popen(args + (["--preload"] if preload else []), cwd=ROOT / "tests",
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port, proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(40)


@pytest.mark.parametrize("preload", [False, True], ids=["gunicorn", "gunicorn-preload"])
def test_gunicorn_restarted_after_an_outage_replays_within_2_s(preload: bool,
                                                               tmp_path: Path) -> None:
    port = free_port()
    spool_dir = str(tmp_path / "spool")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "COST_MIDDLEWARE_SPOOL_DIR": spool_dir,
           "COST_MIDDLEWARE_FLUSH_INTERVAL": "0.2", "COST_MIDDLEWARE_STATSD": "off",
           # The outage: a PostgreSQL nobody listens for.
           "COST_MIDDLEWARE_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:"
                                           f"{free_port()}/none"}
    sent = [f"r{n:03d}" for n in range(20)]
    proc = gunicorn(port, env, preload)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for rid in sent:
                reply = client.post("/v1/chat/completions", headers={"x-request-id": rid},
                                    content=orjson.dumps({"model": "gpt-4o-mini",
                                                          "messages": []}))
                assert reply.status_code == 200
    finally:
        stop(proc)  # SIGTERM during the outage: what the workers hold goes to the spool
    assert Spool(spool_dir).status().records == len(sent)
    url = f"sqlite:///{tmp_path / 'cost.db'}"
    proc = gunicorn(port, {**env, "COST_MIDDLEWARE_DATABASE_URL": url}, preload)
    try:
        assert replayed_within(url, sent, REPLAY_SECONDS) == sent  # no request sent
    finally:
        stop(proc)
    assert Spool(spool_dir).status().records == 0


def spooled(spool_dir: str, count: int) -> list[str]:
    """``count`` records left in the spool by an earlier process (sealed: replayable)."""
    ids = [f"s{n:03d}" for n in range(count)]
    spool = Spool(spool_dir)
    spool.append([CostRecord(provider="openai", api="chat_completions", model="gpt-4o",
                             usage=Usage(10, 5), request_id=rid) for rid in ids])
    spool.close()
    return ids


async def asgi_app(scope: Scope, receive: Receive, send: Send) -> None:
    """An app without lifespan support: it refuses every scope but HTTP."""
    assert scope["type"] == "http"


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_building_the_wrapper_replays_the_spool(adapter: str, tmp_path: Path) -> None:
    spool_dir = str(tmp_path / "spool")
    ids = spooled(spool_dir, 5)
    url = f"sqlite:///{tmp_path / 'cost.db'}"
    settings = Settings(database_url=url, spool_dir=spool_dir, statsd_enabled=False)
    if adapter == "asgi":
        mw: CostMiddleware | WSGICostMiddleware = CostMiddleware(asgi_app, settings)
    else:
        mw = WSGICostMiddleware(lambda environ, start_response: [], settings)
    try:
        assert replayed_within(url, ids, REPLAY_SECONDS) == ids
    finally:
        mw.tracker.close()


def test_an_empty_spool_starts_no_worker(tmp_path: Path) -> None:
    mw = WSGICostMiddleware(lambda environ, start_response: [], Settings(
        database_url=f"sqlite:///{tmp_path / 'cost.db'}", spool_dir=str(tmp_path / "spool"),
        statsd_enabled=False))
    # Nothing to replay: the worker (and the database) wait for the first record.
    assert mw.tracker.batcher._thread is None
    assert not (tmp_path / "cost.db").exists()
    mw.close()


FORKED = textwrap.dedent("""
    import os, sys, time
    from cost_middleware import Settings, WSGICostMiddleware
    directory = sys.argv[1]
    mw = WSGICostMiddleware(lambda environ, start_response: [], Settings(
        database_url="sqlite:///" + os.path.join(directory, "cost.db"),
        spool_dir=os.path.join(directory, "spool"), statsd_enabled=False))
    pid = os.fork()
    if pid == 0:
        # As a gunicorn worker forked from a preloading master: a worker of its own, at once.
        thread = mw.tracker.batcher._thread
        os._exit(0 if thread is not None and thread.is_alive() else 1)
    _, status = os.waitpid(pid, 0)
    mw.close()
    sys.exit(os.waitstatus_to_exitcode(status))
""")


def test_a_child_forked_after_the_start_starts_its_own_worker(tmp_path: Path) -> None:
    spooled(str(tmp_path / "spool"), 1)
    done = subprocess.run([sys.executable, "-c", FORKED, str(tmp_path)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
