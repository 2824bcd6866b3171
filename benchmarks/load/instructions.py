"""Instructions per request, in process and in a real uvicorn, counted by valgrind's callgrind.

    .venv/bin/python benchmarks/load/instructions.py                     # bare, no-queue
    .venv/bin/python benchmarks/load/instructions.py --variants bare,no-queue,full --cache-sim

Instruction counts do not move with the machine's load, where CPU times here move by up to
1.5x between runs, so they tell whether the server runs more of our code per request than the
in-process benchmark, or the same code more slowly. Both sides serve the load test's json case
(``load.asgi_gateway``, the 2 KB chat completion), with the variants of ``profile_server.py``:

* **in process:** the gateway app called straight through ASGI (a scope with the headers wrk
  sends), under callgrind for ``--small`` and then ``--large`` requests; the difference of the
  two totals over the difference of the counts is per request (start-up cancels out);
* **in server:** uvicorn (1 worker, PostgreSQL ledger, Redis price sync, StatsD to a local sink)
  under callgrind with counting off, switched on (``callgrind_control -i on``) around one wrk
  run after a warm-up, so the count covers exactly the requests wrk reports.

In process, the request thread's CPU time per request is also measured, without valgrind
(best of 3 runs of ``--large`` requests); the server's is ``profile_server.py``'s.
``--cache-sim`` also counts simulated cache misses and branch mispredictions (several times
slower). A variant's cost is its count less bare's. Needs ``valgrind`` and ``wrk``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent.parent
#: What the table shows of callgrind's events (the misses: ``--cache-sim``).
SHOWN = {"cpu_us": "CPU µs (no valgrind)", "Ir": "instructions", "Ir_main": "request thread",
         "I1mr": "I1 misses", "D1mr": "D1 read misses", "Bcm": "cond. mispredicts",
         "Bim": "ind. mispredicts"}


def _drive(requests: int, timed: bool) -> None:
    """In the child (under callgrind, or ``timed``: printing the request thread's CPU time per
    request): serve ``requests`` json requests through the gateway."""
    import load.profile_server as profiled
    from load.payloads import request_body

    app = profiled.__getattr__("app")  # the variant's patch first, then the gateway
    body = request_body(stream=False)
    headers = [(b"host", b"127.0.0.1"), (b"content-length", str(len(body)).encode()),
               (b"content-type", b"application/json"), (b"x-tenant-id", b"loadtest")]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/chat/completions",
             "raw_path": b"/v1/chat/completions", "query_string": b"", "root_path": "",
             "headers": headers, "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 1)}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    async def serve(count: int) -> None:
        for _ in range(count):
            await app(dict(scope), receive, send)

    # No lifespan: the gateway's only starts an upstream client, and the middleware's
    # worker starts at its first record (its warning about it goes nowhere here).
    loop = asyncio.new_event_loop()
    loop.run_until_complete(serve(500))  # warm: imports, the price cache, the connection
    started = time.thread_time()
    loop.run_until_complete(serve(requests))
    if timed:
        print(f"{(time.thread_time() - started) / requests * 1e6:.2f}")
    tracker = _tracker(app)
    if tracker is not None:
        tracker.close()  # the writer's share of what was served, counted too


def _tracker(app: Any) -> Any:
    """The tracker of the gateway's middleware (None: bare)."""
    layer = getattr(app, "middleware_stack", None)
    while layer is not None:
        if hasattr(layer, "tracker"):
            return layer.tracker
        layer = getattr(layer, "app", None)
    return None


def _totals(out: Path) -> dict[str, int]:
    """The counts of callgrind's output files for ``out`` (one per thread and dump), summed
    over threads, each thread's from its largest dump (the toggled window's); and the first
    thread's instructions (the request thread: the event loop's) as ``Ir_main``."""
    threads: dict[str, dict[str, int]] = {}
    for path in out.parent.glob(out.name + "*"):
        thread = path.name.rpartition("-")[2]
        events: list[str] = []
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("totals:"):
                values = dict(zip(events, map(int, line.split()[1:]), strict=False))
                if values.get("Ir", 0) > threads.get(thread, {}).get("Ir", 0):
                    threads[thread] = values
    summed: dict[str, int] = {}
    for values in threads.values():
        for event, value in values.items():
            summed[event] = summed.get(event, 0) + value
    summed["Ir_main"] = threads.get("01", {}).get("Ir", 0)
    return summed


def _callgrind(out: Path, cache_sim: bool, extra: list[str]) -> list[str]:
    sim = ["--cache-sim=yes", "--branch-sim=yes"] if cache_sim else []
    return ["valgrind", "--tool=callgrind", "--separate-threads=yes", *sim,
            f"--callgrind-out-file={out}", *extra]


def _own_spool(env: dict[str, str], work: Path, run: str) -> dict[str, str]:
    """``env`` with a spool folder of the run's own: records one run leaves spooled (a
    variant's writer that writes nothing) would otherwise be replayed, and counted, by the
    next."""
    from cost_middleware import config

    return {**env, config.SPOOL_DIR: str(work / run / "spool")}


def in_process(variant: str, small: int, large: int, cache_sim: bool,
               env: dict[str, str], work: Path) -> dict[str, float]:
    counts = {}
    for requests in (small, large):
        out = work / f"process-{variant}-{requests}.out"
        subprocess.run([*_callgrind(out, cache_sim, []), sys.executable, __file__,
                        "--drive", str(requests)], cwd=BENCH,
                       env=_own_spool(env, work, out.name), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        counts[requests] = _totals(out)
    return {event: (counts[large].get(event, 0) - counts[small].get(event, 0)) / (large - small)
            for event in counts[large]}


def in_process_cpu(variant: str, requests: int, env: dict[str, str], work: Path) -> float:
    """The request thread's CPU µs per request in process, without valgrind: best of 3."""
    cmd = [sys.executable, __file__, "--drive", str(requests), "--timed"]
    runs = [float(subprocess.run(cmd, cwd=BENCH, env=_own_spool(env, work, f"cpu-{variant}-{i}"),
                                 check=True, capture_output=True, text=True).stdout.split()[-1])
            for i in range(3)]
    return min(runs)


def in_server(lt: Any, variant: str, seconds: int, cache_sim: bool, env: dict[str, str],
              work: Path) -> dict[str, float]:
    out = work / f"server-{variant}.out"
    body_file = work / "body.json"
    port = lt._free_port()
    cmd = [*_callgrind(out, cache_sim, ["--instr-atstart=no"]), sys.executable, "-m",
           "uvicorn", "load.profile_server:app", "--host", "127.0.0.1", "--port", str(port),
           "--lifespan", "on", "--no-access-log", "--log-level", "warning"]
    log_path = work / f"server-{variant}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=BENCH, stdout=log, stderr=subprocess.STDOUT,
                                env=_own_spool(env, work, out.name), start_new_session=True)
        try:
            # Start-up under valgrind takes a minute or more.
            lt._wait_listening(proc, port, log_path, timeout=600)
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            lt._wrk(shutil.which("wrk"), url, 10, 4, body_file)  # warm, not counted
            subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True,
                           capture_output=True)
            measured = lt._wrk(shutil.which("wrk"), url, seconds, 16, body_file)
            if variant == "full":
                time.sleep(3)  # the writer's share of the requests just served
            subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True,
                           capture_output=True)
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True,
                           capture_output=True)
        finally:
            proc.terminate()
            proc.wait(300)
    totals = _totals(out)
    return {event: value / max(1, measured.requests) for event, value in totals.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--variants", default="bare,no-queue")
    p.add_argument("--small", type=int, default=1000, help="in process: the first count")
    p.add_argument("--large", type=int, default=5000, help="in process: the second count")
    p.add_argument("--seconds", type=int, default=20, help="in server: the counted wrk run")
    p.add_argument("--cache-sim", action="store_true")
    p.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    p.add_argument("--drive", type=int, help=argparse.SUPPRESS)
    p.add_argument("--timed", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    sys.path.insert(0, str(BENCH))
    if args.drive is not None:
        _drive(args.drive, args.timed)
        return 0
    for tool in ("valgrind", "callgrind_control", "wrk"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (apt-get install -y valgrind wrk)")
            return 2
    import loadtest as lt

    from load.payloads import request_body
    from load.statsd_sink import StatsdSink

    results: dict[tuple[str, str], dict[str, float]] = {}
    sink = StatsdSink()
    try:
        with lt._database(args.pg) as db_url, tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            (work / "counts").mkdir()
            (work / "body.json").write_bytes(request_body(stream=False))
            for variant in [v for v in args.variants.split(",") if v]:
                env = lt._server_env(variant != "bare", work, db_url, "redis://127.0.0.1:6379/0",
                                     sink.port, {}, None)
                env["LOADTEST_PROFILE_VARIANT"] = variant
                env["PYTHONPATH"] = os.pathsep.join([str(BENCH), str(BENCH.parent)])
                results[("process", variant)] = in_process(variant, args.small, args.large,
                                                           args.cache_sim, env, work)
                results[("process", variant)]["cpu_us"] = in_process_cpu(variant, args.large,
                                                                         env, work)
                results[("server", variant)] = in_server(lt, variant, args.seconds,
                                                         args.cache_sim, env, work)
                print(f"{variant}: in process {results[('process', variant)]['Ir']:,.0f}, "
                      f"in server {results[('server', variant)]['Ir']:,.0f} instructions "
                      "per request", flush=True)
    finally:
        sink.close()
    _print(results)
    return 0


def _print(results: dict[tuple[str, str], dict[str, float]]) -> None:
    shown = [event for event in SHOWN if any(event in r for r in results.values())]
    print("\nper request; a variant's added cost is its count less bare's")
    print(f"{'where':8} {'variant':10} " + " ".join(f"{SHOWN[e]:>18}" for e in shown))
    for (where, variant), counts in results.items():
        bare = results.get((where, "bare"), {})
        cells = []
        for event in shown:
            if event not in counts:
                cells.append("".rjust(18))  # the server's CPU time: profile_server.py
                continue
            value = counts[event]
            digits = 1 if event == "cpu_us" else 0
            added = ("" if variant == "bare" or not bare
                     else f" ({value - bare.get(event, 0):+,.{digits}f})")
            cells.append(f"{value:,.{digits}f}{added}".rjust(18))
        print(f"{where:8} {variant:10} " + " ".join(cells))


if __name__ == "__main__":
    sys.exit(main())
