"""Load test: real servers on loopback, with and without the middleware, driven by wrk.

    /work/venv/bin/python benchmarks/loadtest.py            # about 25 minutes (--runs 2: 16)
    /work/venv/bin/python benchmarks/loadtest.py --runs 1 --servers uvicorn-1 --payloads json

Servers (each a separate process tree, started and stopped per run):

* ``uvicorn-1``  uvicorn, 1 worker, a Starlette gateway (``load/asgi_gateway.py``);
* ``uvicorn-2``  the same with ``--workers 2`` (through ``load/uvicorn_workers.py``, which
  keeps TCP_NODELAY that uvicorn loses with ``--workers``: see that file);
* ``gunicorn-2`` gunicorn, 2 sync workers, a Flask gateway (``load/wsgi_gateway.py``).

The gateways answer OpenAI chat completions from the in-process fake provider: ``json`` is a
2 KB completion, ``sse`` a 63-event stream with usage in its last event. That is the worst case
for the ratio: the app does almost nothing else. ``proxy-json`` and ``proxy-sse`` are the same
answers fetched over HTTP (httpx) from an upstream fake-provider server (uvicorn, 2 workers,
started per run), as a gateway in front of a real provider does. "with" wraps the app
in ``CostMiddleware`` / ``WSGICostMiddleware`` writing to a PostgreSQL database this script
creates and drops, with Redis price sync on the machine's Redis and StatsD sent to a sink in
this process. "without" is the bare app.

Each run: start the server, warm up with wrk for ``--warmup`` seconds, measure for
``--duration`` seconds (``wrk -t1 -c16``: one wrk thread, 16 connections; on this 2-core
machine wrk itself takes a good part of one core), stop the server gracefully (SIGTERM, which
flushes the middleware), then check that ``cost_records`` holds exactly one row per request
the app handled (the gateways count them; wrk drops the requests in flight when it stops, so
its own count may be lower by up to the number of connections per wrk invocation). The "with"
and "without" runs alternate so drift in machine load hits both.

Besides req/s and latency it records the server's CPU per request (from ``/proc``: main
threads, and other threads, i.e. the middleware's writer and price sync) and the CPU busy
outside the server and wrk (PostgreSQL, Redis, other jobs on the machine), since req/s on a
shared machine moves with everything else running there.

Output: a table per server and payload (median of the runs), an integrity table per "with"
run, and everything in ``benchmarks/results/loadtest.json``. ``--set VARIABLE=VALUE`` adds a
setting to the "with" servers, to see what one part costs (``COST_MIDDLEWARE_STATSD=off``).
The exit status is 0 when every case meets the targets and no record is missing.

Needs wrk (Debian: ``apt-get update && apt-get install -y wrk``), PostgreSQL on
127.0.0.1:5432 (user postgres, trust auth; ``--pg`` to change) and Redis on 127.0.0.1:6379.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import sqlalchemy as sa
from load.payloads import COUNT_DIR, MIDDLEWARE, MODEL, UPSTREAM, request_body
from load.proc_cpu import machine_busy_s, tree_cpu
from load.statsd_sink import StatsdSink
from rich.console import Console
from rich.table import Table

from cost_middleware import config
from cost_middleware.engine.spool import Spool
from cost_middleware.ops.fake_provider import openai_chat
from cost_middleware.storage.engine import ensure_schema

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
LUA = BENCH / "load" / "post.lua"
RESULTS = BENCH / "results" / "loadtest.json"
PYTHON = sys.executable
SERVERS = ("uvicorn-1", "uvicorn-2", "gunicorn-2")
PAYLOADS = ("json", "sse", "proxy-json", "proxy-sse")
#: Payloads the gateway fetches from an upstream fake-provider server over HTTP.
PROXIED = "proxy-"
#: Targets from DESIGN.md: throughput with the middleware >= 90 %, p99 within 10 %.
MIN_THROUGHPUT_RATIO = 0.90
MAX_P99_RATIO = 1.10
STOP_TIMEOUT = 60.0
_ASYNCIO_SEND_NOISE = "socket.send() raised exception."

console = Console(width=max(Console().width, 200))


@dataclass
class WrkResult:
    requests: int
    duration_us: int
    bytes: int
    connect_errors: int
    read_errors: int
    write_errors: int
    status_errors: int
    timeouts: int
    p50_us: int
    p90_us: int
    p99_us: int
    max_us: int
    mean_us: float

    @property
    def ok(self) -> int:
        return self.requests - self.status_errors

    @property
    def rps(self) -> float:
        return self.requests / (self.duration_us / 1e6)


@dataclass
class Integrity:
    """What a "with" run left in the database, the spool and StatsD."""

    wrk_ok: int
    handled: int
    rows: int
    distinct_ids: int
    partial: int
    unpriced: int
    exact_tokens: int
    distinct_costs: int
    spooled: int
    sql_input_tokens: int
    statsd_input_tokens: int
    sql_cost_usd: str
    #: The sum of the ``cost.*`` counters (whole micro-dollars per record).
    statsd_cost_usd: str
    statsd: dict[str, float]
    #: The highest value of each gauge any process sent.
    gauges_max: dict[str, float]
    overhead_p50_us: float | None
    overhead_p99_us: float | None
    log_problems: list[str]

    @property
    def missing(self) -> int:
        """Handled requests that left neither a row nor a spooled record."""
        return self.handled - self.rows - self.spooled


@dataclass
class Run:
    server: str
    payload: str
    middleware: bool
    index: int
    warmup: WrkResult
    measured: WrkResult
    load_before: float
    #: Cores busy outside the server and wrk while measuring: PostgreSQL and Redis (the
    #: middleware's writes) and whatever else runs on the machine.
    outside_cores: float
    #: Server CPU per measured request (µs): main threads (they serve requests), other threads
    #: (the middleware's background worker and price sync; the same GIL).
    main_cpu_us: float
    other_cpu_us: float
    handled: int
    stopped_cleanly: bool
    integrity: Integrity | None = None
    notes: list[str] = field(default_factory=list)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        console.print("[red]wrk is not installed.[/] On Debian/Ubuntu: "
                      "apt-get update && apt-get install -y wrk")
        return 2
    pg, redis = sa.make_url(args.pg), urlsplit(args.redis)
    for host, port, what in ((pg.host or "127.0.0.1", pg.port or 5432, "PostgreSQL"),
                             (redis.hostname or "127.0.0.1", redis.port or 6379, "Redis")):
        if not _reachable(host, port):
            console.print(f"[red]{what} is not reachable on {host}:{port}.[/]")
            return 2
    runs: list[Run] = []
    sink = StatsdSink()
    try:
        with _database(args.pg) as db_url:
            for server in args.servers:
                for payload in args.payloads:
                    for index in range(args.runs):
                        # Alternate which variant goes first, so drift hits both equally.
                        for middleware in (index % 2 == 1, index % 2 == 0):
                            run = _one_run(args, wrk, server, payload, middleware, index,
                                           db_url, sink)
                            runs.append(run)
                            _print_progress(run)
    finally:
        sink.close()
    summary = _summarize(runs, args.payloads, args.servers)
    _print_tables(summary, runs, args)
    _write_json(runs, summary, args)
    return 0 if all(_verdict(s) for s in summary) else 1


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--runs", type=int, default=3, help="runs per server, payload and variant")
    p.add_argument("--duration", type=int, default=10, help="measured seconds per run")
    p.add_argument("--warmup", type=int, default=2, help="warm-up seconds per run")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--servers", default=",".join(SERVERS))
    p.add_argument("--payloads", default=",".join(PAYLOADS))
    p.add_argument("--pg", default=os.environ.get(
        "COST_MIDDLEWARE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
        help="an admin URL; a database is created next to it and dropped at the end")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    p.add_argument("--set", action="append", default=[], metavar="VARIABLE=VALUE",
                   help="an extra setting for the 'with' servers, e.g. COST_MIDDLEWARE_STATSD=off "
                        "(repeatable; to find what costs what)")
    p.add_argument("--output", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    try:
        args.set = dict(item.split("=", 1) for item in args.set)
    except ValueError:
        p.error("--set takes VARIABLE=VALUE")
    args.servers = [s for s in args.servers.split(",") if s]
    args.payloads = [s for s in args.payloads.split(",") if s]
    for name, allowed in ((args.servers, SERVERS), (args.payloads, PAYLOADS)):
        unknown = set(name) - set(allowed)
        if unknown:
            p.error(f"unknown: {', '.join(sorted(unknown))} (choose from {', '.join(allowed)})")
    return args


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _database(admin_url: str) -> Iterator[str]:
    name = f"cm_loadtest_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _server_command(server: str, port: int, work: Path) -> list[str]:
    bind = ["--host", "127.0.0.1", "--port", str(port)]
    options = ["--lifespan", "on", "--no-access-log", "--log-level", "warning"]
    if server == "uvicorn-1":
        return [PYTHON, "-m", "uvicorn", "load.asgi_gateway:app", *bind, *options]
    if server == "uvicorn-2":
        return [PYTHON, str(BENCH / "load" / "uvicorn_workers.py"), "load.asgi_gateway:app",
                *bind, "--workers", "2", *options]
    return [PYTHON, "-m", "gunicorn", "load.wsgi_gateway:app", "-b", f"127.0.0.1:{port}",
            "-w", "2", "-k", "sync", "--log-level", "warning",
            "--control-socket", str(work / "gunicorn.ctl")]


def _server_env(middleware: bool, work: Path, db_url: str, redis_url: str, statsd_port: int,
                extra: dict[str, str], upstream: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in config.ALL_VARIABLES and k != config.STANDARD_STATSD_HOST}
    env["PYTHONPATH"] = str(BENCH)
    env[MIDDLEWARE] = "1" if middleware else "0"
    env[COUNT_DIR] = str(work / "counts")
    if upstream is not None:
        env[UPSTREAM] = upstream
    env.update({
        config.DATABASE_URL: db_url,
        config.REDIS_URL: redis_url,
        config.STATSD_HOST: "127.0.0.1",
        config.STATSD_PORT: str(statsd_port),
        config.SPOOL_DIR: str(work / "spool"),
    })
    if middleware:
        env.update(extra)
    return env


def _one_run(args: argparse.Namespace, wrk: str, server: str, payload: str, middleware: bool,
             index: int, db_url: str, sink: StatsdSink) -> Run:
    work = Path(tempfile.mkdtemp(prefix="cm_loadtest_"))
    (work / "counts").mkdir()
    body_file = work / "body.json"
    body_file.write_bytes(request_body(stream=_streams(payload)))
    engine = sa.create_engine(db_url)
    upstream = _start_upstream(work) if payload.startswith(PROXIED) else None
    try:
        if middleware:
            _empty_records(engine)
        sink.reset()
        port = _free_port()
        log_path = work / "server.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                _server_command(server, port, work), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                env=_server_env(middleware, work, db_url, args.redis, sink.port, args.set,
                                upstream[1] if upstream else None),
                start_new_session=True,
            )
            try:
                _wait_listening(proc, port, log_path)
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                load_before = os.getloadavg()[0]
                warmup = _wrk(wrk, url, args.warmup, args.connections, body_file)
                cpu_before, busy_before, own_before = tree_cpu(proc.pid), machine_busy_s(), _own()
                measured = _wrk(wrk, url, args.duration, args.connections, body_file)
                cpu = tree_cpu(proc.pid) - cpu_before
                outside = (machine_busy_s() - busy_before - (_own() - own_before)
                           - cpu.main_s - cpu.other_s) / (measured.duration_us / 1e6)
            finally:
                stopped = _stop(proc)
        time.sleep(0.3)  # the last StatsD packets of the exiting workers
        handled = sum(int(p.read_text()) for p in (work / "counts").glob("*.count"))
        per_request = 1e6 / max(1, measured.requests)
        run = Run(server, payload, middleware, index, warmup, measured, load_before, outside,
                  cpu.main_s * per_request, cpu.other_s * per_request, handled, stopped)
        problems = _log_problems(log_path)
        # A diagnostic --set that moves or disables the records leaves nothing here to check.
        if middleware and not {config.DATABASE_URL, config.ENABLED} & args.set.keys():
            run.integrity = _integrity(engine, work, warmup.ok + measured.ok, handled, sink,
                                       problems, payload)
        elif problems:
            run.notes.extend(problems)
        return run
    finally:
        if upstream is not None:
            _stop(upstream[0])
        engine.dispose()
        shutil.rmtree(work, ignore_errors=True)


def _streams(payload: str) -> bool:
    return payload.endswith("sse")


def _start_upstream(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The fake provider the proxy payloads forward to: the bare gateway, uvicorn with 2
    workers, on its own port (its CPU counts as "outside")."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in config.ALL_VARIABLES}
    env.update({"PYTHONPATH": str(BENCH), MIDDLEWARE: "0"})
    log_path = work / "upstream.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [PYTHON, str(BENCH / "load" / "uvicorn_workers.py"), "load.asgi_gateway:app",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "2", "--no-access-log",
             "--log-level", "warning"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    _wait_listening(proc, port, log_path)
    return proc, f"http://127.0.0.1:{port}"


def _own() -> float:
    """CPU seconds of this process and its finished children (wrk)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _empty_records(engine: sa.Engine) -> None:
    # Created here too, so a server that fails every request still leaves a table to count.
    ensure_schema(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE cost_records"))


def _wait_listening(proc: subprocess.Popen[bytes], port: int, log_path: Path,
                    timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited at start:\n{log_path.read_text()[-2000:]}")
        if _reachable("127.0.0.1", port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server did not start listening within {timeout:.0f} s")


def _wrk(wrk: str, url: str, seconds: int, connections: int, body_file: Path) -> WrkResult:
    cmd = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s", str(LUA),
           url]
    env = {**os.environ, "LOADTEST_BODY_FILE": str(body_file)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 60,
                         check=True).stdout
    for line in out.splitlines():
        if line.startswith("LOADTEST_RESULT "):
            return WrkResult(**json.loads(line.removeprefix("LOADTEST_RESULT ")))
    raise RuntimeError(f"no summary in wrk's output:\n{out}")


def _stop(proc: subprocess.Popen[bytes]) -> bool:
    """SIGTERM (a graceful shutdown that flushes the middleware); True if it exited in time."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT)
        return True
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return False


def _log_problems(log_path: Path) -> list[str]:
    """Warnings, errors and tracebacks the servers wrote (the log level is ``warning``).

    asyncio's "socket.send() raised exception." comes from writes to the connections wrk
    drops when it stops, with or without the middleware: it is left out.
    """
    lines = log_path.read_text(errors="replace").splitlines()
    return [line[:300] for line in lines if line.strip() and line != _ASYNCIO_SEND_NOISE][:50]


def _expected_tokens(payload: str) -> tuple[int, int, int]:
    body = orjson.loads(request_body(stream=_streams(payload)))
    usage = orjson.loads(openai_chat(MODEL, body))["usage"]
    return (usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"],
            usage["completion_tokens"])


def _integrity(engine: sa.Engine, work: Path, wrk_ok: int, handled: int, sink: StatsdSink,
               problems: list[str], payload: str) -> Integrity:
    inp, cached, out = _expected_tokens(payload)
    with engine.connect() as conn:
        row = conn.execute(sa.text(
            "SELECT count(*), count(DISTINCT record_id), count(*) FILTER (WHERE partial),"
            " count(*) FILTER (WHERE cost_usd IS NULL),"
            " count(*) FILTER (WHERE input_tokens = :inp AND cached_input_tokens = :cached"
            "                  AND output_tokens = :out AND model = :model),"
            " count(DISTINCT cost_usd) FILTER (WHERE NOT partial),"
            " coalesce(sum(input_tokens), 0), coalesce(sum(cost_usd), 0)"
            " FROM cost_records"), {"inp": inp, "cached": cached, "out": out, "model": MODEL},
        ).one()
    spooled = Spool(str(work / "spool")).status().records if (work / "spool").exists() else 0
    prefix = "cost_middleware."
    counters = {k.removeprefix(prefix): v for k, v in sink.counters.items()
                if k.startswith(prefix)}
    samples = sorted(sink.timings.get(prefix + "request.overhead", []))
    return Integrity(
        wrk_ok=wrk_ok, handled=handled, rows=row[0], distinct_ids=row[1], partial=row[2],
        unpriced=row[3], exact_tokens=row[4], distinct_costs=row[5], spooled=spooled,
        sql_input_tokens=int(row[6]), sql_cost_usd=str(row[7]),
        statsd_input_tokens=_total(counters, "tokens.input."),
        statsd_cost_usd=str(Decimal(int(_total(counters, "cost."))) / 1_000_000),
        statsd={k: v for k, v in sorted(counters.items())
                if not k.startswith(("cost.", "tokens."))},
        gauges_max={k.removeprefix(prefix): v for k, v in sink.gauge_max.items()},
        overhead_p50_us=_percentile(samples, 50) * 1000 if samples else None,
        overhead_p99_us=_percentile(samples, 99) * 1000 if samples else None,
        log_problems=problems,
    )


def _total(counters: dict[str, float], start: str) -> int:
    return int(sum(v for k, v in counters.items() if k.startswith(start)))


def _percentile(ordered: list[float], pct: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def _print_progress(run: Run) -> None:
    m = run.measured
    line = (f"{run.server:10} {run.payload:10} {'with' if run.middleware else 'without':7} "
            f"run {run.index + 1}: {m.rps:8.0f} req/s  p50 {m.p50_us / 1000:6.2f} ms  "
            f"p99 {m.p99_us / 1000:6.2f} ms  cpu/req main {run.main_cpu_us:4.0f} µs "
            f"other {run.other_cpu_us:4.0f} µs  outside {run.outside_cores:.2f} cores")
    if run.integrity is not None:
        i = run.integrity
        line += f"  rows {i.rows}/{i.handled} handled (wrk ok {i.wrk_ok})"
    console.print(line, highlight=False)


def _summarize(runs: list[Run], payloads: list[str], servers: list[str]) -> list[dict[str, Any]]:
    out = []
    for server in servers:
        for payload in payloads:
            case = [r for r in runs if r.server == server and r.payload == payload]
            without = [r.measured for r in case if not r.middleware]
            with_ = [r.measured for r in case if r.middleware]
            if not without or not with_:
                continue
            row: dict[str, Any] = {"server": server, "payload": payload}
            for label, results in (("without", without), ("with", with_)):
                row[f"{label}_rps"] = statistics.median(r.rps for r in results)
                row[f"{label}_p50_ms"] = statistics.median(r.p50_us for r in results) / 1000
                row[f"{label}_p99_ms"] = statistics.median(r.p99_us for r in results) / 1000
                cpu_runs = [r for r in case if r.middleware == (label == "with")]
                row[f"{label}_main_cpu_us"] = statistics.median(r.main_cpu_us for r in cpu_runs)
                row[f"{label}_other_cpu_us"] = statistics.median(
                    r.other_cpu_us for r in cpu_runs)
                row[f"{label}_outside_cores"] = statistics.median(
                    r.outside_cores for r in cpu_runs)
                row[f"{label}_errors"] = sum(
                    r.status_errors + r.connect_errors + r.read_errors + r.write_errors
                    + r.timeouts for r in results)
            row["throughput_ratio"] = row["with_rps"] / row["without_rps"]
            # Server CPU per request is steadier than req/s on a shared machine: at saturation
            # throughput scales with its inverse.
            row["cpu_ratio"] = ((row["without_main_cpu_us"] + row["without_other_cpu_us"])
                                / (row["with_main_cpu_us"] + row["with_other_cpu_us"]))
            row["p50_ratio"] = row["with_p50_ms"] / row["without_p50_ms"]
            row["p99_ratio"] = row["with_p99_ms"] / row["without_p99_ms"]
            checks = [r.integrity for r in case if r.integrity is not None]
            row["rows"] = sum(i.rows for i in checks)
            row["handled"] = sum(i.handled for i in checks)
            row["wrk_ok"] = sum(i.wrk_ok for i in checks)
            row["missing"] = sum(i.missing for i in checks)
            row["records_exact"] = all(
                i.rows == i.handled == i.distinct_ids and i.spooled == 0 for i in checks)
            out.append(row)
    return out


def _verdict(row: dict[str, Any]) -> bool:
    return bool(row["throughput_ratio"] >= MIN_THROUGHPUT_RATIO
                and row["p99_ratio"] <= MAX_P99_RATIO and row["records_exact"])


def _print_tables(summary: list[dict[str, Any]], runs: list[Run],
                  args: argparse.Namespace) -> None:
    t = Table(title=f"Load test: wrk -t1 -c{args.connections} -d{args.duration}s after "
                    f"{args.warmup}s warm-up, median of {args.runs} run(s); 2 cores shared "
                    "with wrk")
    for col in ("server", "payload", "req/s w/o", "req/s with", "ratio", "CPU ratio", "p50 ms w/o",
                "p50 ms with", "p99 ms w/o", "p99 ms with", "p99 ratio", "CPU µs/req w/o",
                "CPU µs/req with (bg)", "outside cores w/o, with", "rows/handled", "target"):
        t.add_column(col, justify="left" if col in ("server", "payload") else "right")
    for r in summary:
        t.add_row(
            r["server"], r["payload"], f"{r['without_rps']:.0f}", f"{r['with_rps']:.0f}",
            f"{r['throughput_ratio']:.1%}", f"{r['cpu_ratio']:.1%}", f"{r['without_p50_ms']:.2f}",
            f"{r['with_p50_ms']:.2f}", f"{r['without_p99_ms']:.2f}", f"{r['with_p99_ms']:.2f}",
            f"{r['p99_ratio']:.2f}",
            f"{r['without_main_cpu_us'] + r['without_other_cpu_us']:.0f}",
            f"{r['with_main_cpu_us'] + r['with_other_cpu_us']:.0f} "
            f"({r['with_other_cpu_us']:.0f})",
            f"{r['without_outside_cores']:.2f}, {r['with_outside_cores']:.2f}",
            f"{r['rows']}/{r['handled']}",
            "[green]met[/]" if _verdict(r) else "[red]missed[/]",
        )
    console.print(t)
    it = Table(title="Records per 'with' run (warm-up included): every handled request must "
                     "be one row")
    for col in ("server", "payload", "run", "wrk ok", "handled", "rows", "no row", "spooled",
                "partial", "unpriced", "exact tokens", "written (statsd)", "skipped",
                "overhead p50/p99 µs", "log lines"):
        it.add_column(col, justify="left" if col in ("server", "payload") else "right")
    for run in runs:
        i = run.integrity
        if i is None:
            continue
        skipped = sum(v for k, v in i.statsd.items() if k.startswith("skipped."))
        overhead = ("-" if i.overhead_p50_us is None or i.overhead_p99_us is None
                    else f"{i.overhead_p50_us:.0f}/{i.overhead_p99_us:.0f}")
        it.add_row(
            run.server, run.payload, str(run.index + 1), str(i.wrk_ok), str(i.handled),
            str(i.rows), str(i.missing), str(i.spooled), str(i.partial), str(i.unpriced),
            str(i.exact_tokens), f"{i.statsd.get('records.written', 0):.0f}", f"{skipped:.0f}",
            overhead, str(len(i.log_problems)),
        )
    console.print(it)


def _write_json(runs: list[Run], summary: list[dict[str, Any]],
                args: argparse.Namespace) -> None:
    def run_dict(run: Run) -> dict[str, Any]:
        d = asdict(run)
        for key in ("warmup", "measured"):
            result = getattr(run, key)
            d[key]["rps"] = result.rps
            d[key]["ok"] = result.ok
        if run.integrity is not None:
            d["integrity"]["missing"] = run.integrity.missing
        return d

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(orjson.dumps({
        "config": {"runs": args.runs, "duration_s": args.duration, "warmup_s": args.warmup,
                   "extra_settings": args.set,
                   "wrk": f"-t1 -c{args.connections} --timeout 5s",
                   "servers": args.servers, "payloads": args.payloads,
                   "cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "targets": {"min_throughput_ratio": MIN_THROUGHPUT_RATIO,
                    "max_p99_ratio": MAX_P99_RATIO},
        "summary": summary,
        "runs": [run_dict(r) for r in runs],
    }, option=orjson.OPT_INDENT_2))
    console.print(f"written: {args.output}")


if __name__ == "__main__":
    sys.exit(main())
