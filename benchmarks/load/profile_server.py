"""Where the in-server cost goes: the uvicorn-1 json case with each part switched off in turn.

    .venv/bin/python benchmarks/load/profile_server.py                  # every variant, 2 runs
    .venv/bin/python benchmarks/load/profile_server.py --variants bare,full --runs 3
    .venv/bin/python benchmarks/load/profile_server.py --variants full --py-spy

Each variant is a real uvicorn (1 worker) serving ``load.asgi_gateway`` under wrk, exactly as
``benchmarks/loadtest.py --servers uvicorn-1 --payloads json`` runs it. A variant switches one
part off without editing the package: by a setting, or by replacing one function with a no-op
when this module is imported as the app (``load.profile_server:app``) in the server process:

* ``bare``         no middleware;
* ``disabled``     the middleware with ``COST_MIDDLEWARE_ENABLED=0`` (its wrapper call only);
* ``pass-through`` detection always misses: context variable and ``perf_counter`` only;
* ``no-reader``    a ``Capture`` and the send wrapper, but no reader and no record;
* ``no-queue``     the whole request path, the record built and then dropped (no writer work);
* ``no-write``     records queued and taken by the writer, which neither prices nor writes;
* ``no-pricing``   the writer writes and counts, but does not price;
* ``no-statsd``    ``COST_MIDDLEWARE_STATSD=off``;
* ``full``         the middleware as shipped;
* ``switch-<s>``   ``full`` with ``sys.setswitchinterval(<s>)`` in the server (e.g. switch-0.001);
* ``gc-off``       ``full`` with the cyclic garbage collector disabled (``gc.disable()``);
* ``gc-freeze``    ``full`` after ``gc.freeze()`` of the imported app (SQLAlchemy and the
  writer's imports come later, in the writer).

``--py-spy`` also samples the server in two more wrk runs after the measured one (``py-spy record
--native``, which pauses the process per sample, then ``--gil --nonblocking``: only samples of
the thread holding the GIL) and prints each
thread's share of samples and its top frames. Results go to ``benchmarks/results/profile.json``.
The "no-…" variants drop records on purpose: rows are not checked here (loadtest.py does).
"""

from __future__ import annotations

import os
import sys
from typing import Any

VARIANT = "LOADTEST_PROFILE_VARIANT"
#: Variants that are ``full`` with a setting for the server.
_SETTINGS = {"disabled": {"COST_MIDDLEWARE_ENABLED": "0"},
             "no-statsd": {"COST_MIDDLEWARE_STATSD": "off"}}
VARIANTS = ("bare", "disabled", "pass-through", "no-reader", "no-queue", "no-write",
            "no-pricing", "no-statsd", "full")


# -- in the server: ``load.profile_server:app`` ------------------------------------------------

def _patch(variant: str) -> None:
    """Replace the one part ``variant`` switches off (runs before the gateway is imported)."""
    if variant.startswith("switch-"):
        sys.setswitchinterval(float(variant.removeprefix("switch-")))
    elif variant == "gc-off":
        import gc

        gc.disable()
    elif variant == "gc-freeze":
        import gc

        import load.asgi_gateway  # noqa: F401  (everything imported so far: never scanned)

        gc.freeze()
    elif variant == "pass-through":
        from cost_middleware.usage.detect import Detector

        Detector.match = lambda self, method, path: None  # type: ignore[method-assign]
    elif variant == "no-reader":
        from cost_middleware.capture import Capture

        def finish(self: Capture, complete: bool, route: str | None = None, *,
                   stopped: bool = False) -> None:
            return None

        Capture.response_body = lambda self, chunk: None  # type: ignore[method-assign]
        Capture.finish = finish  # type: ignore[method-assign]
    elif variant == "no-queue":
        from cost_middleware.engine.tracker import CostTracker

        CostTracker.record = lambda self, record: None  # type: ignore[method-assign]
    elif variant == "no-write":
        from cost_middleware.engine.batcher import Batcher

        def deliver(self: Batcher, batch: list[Any]) -> None:
            self._inflight = []

        Batcher._deliver = deliver  # type: ignore[method-assign]
    elif variant == "no-pricing":
        from cost_middleware.engine.tracker import CostTracker

        CostTracker.price_batch = lambda self, records: None  # type: ignore[method-assign]


def __getattr__(name: str) -> Any:
    # uvicorn reads ``app`` from this module: patch first, then import the gateway.
    if name != "app":
        raise AttributeError(name)
    _patch(os.environ.get(VARIANT, "full"))
    from load.asgi_gateway import app

    return app


# -- the driver --------------------------------------------------------------------------------

def main() -> int:
    import argparse
    import statistics
    import subprocess
    import tempfile
    import time
    from pathlib import Path

    import orjson

    bench = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(bench))
    import loadtest as lt

    from load.payloads import request_body
    from load.proc_cpu import tree_cpu
    from load.statsd_sink import StatsdSink

    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--duration", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--py-spy", action="store_true", help="sample the server with py-spy")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    p.add_argument("--output", type=Path, default=bench / "results" / "profile.json")
    args = p.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    wrk = lt.shutil.which("wrk")
    spy = Path(sys.executable).parent / "py-spy"
    if wrk is None:
        print("wrk is not installed (apt-get install -y wrk)")
        return 2
    results: list[dict[str, Any]] = []
    sink = StatsdSink()
    try:
        with lt._database(args.pg) as db_url:
            engine = lt.sa.create_engine(db_url)
            lt._empty_records(engine)
            for index in range(args.runs):
                order = variants if index % 2 == 0 else variants[::-1]
                for variant in order:
                    row = _one(lt, wrk, spy, args, variant, index, db_url, sink,
                               request_body(stream=False), tree_cpu, subprocess, tempfile,
                               time, Path)
                    results.append(row)
                    print(f"{variant:14} run {index + 1}: {row['rps']:7.0f} req/s  "
                          f"p99 {row['p99_ms']:6.2f} ms  cpu/req main {row['main_us']:5.1f} µs "
                          f"other {row['other_us']:5.1f} µs", flush=True)
                    for label in ("spy", "spy_gil"):
                        if label in row:
                            _print_spy(label, row[label])
            engine.dispose()
    finally:
        sink.close()
    base = [r for r in results if r["variant"] == "bare"]
    base_us = statistics.median(r["main_us"] + r["other_us"] for r in base) if base else None
    base_rps = statistics.median(r["rps"] for r in base) if base else None
    print("\nvariant         req/s  ratio  CPU µs/req (main + other)  added vs bare")
    for variant in variants:
        rows = [r for r in results if r["variant"] == variant]
        rps = statistics.median(r["rps"] for r in rows)
        main_us = statistics.median(r["main_us"] for r in rows)
        other_us = statistics.median(r["other_us"] for r in rows)
        p99 = statistics.median(r["p99_ms"] for r in rows)
        added = "" if base_us is None else f"{main_us + other_us - base_us:+6.1f}"
        ratio = "" if base_rps is None else f"{rps / base_rps:5.0%}"
        print(f"{variant:14} {rps:6.0f}  {ratio}  {main_us:6.1f} + {other_us:5.1f}"
              f"  (runs {', '.join(str(round(r['main_us'] + r['other_us'])) for r in rows)})"
              f"  {added}  p99 {p99:.2f} ms")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return 0


def _one(lt: Any, wrk: str, spy: Any, args: Any, variant: str, index: int, db_url: str,
         sink: Any, body: bytes, tree_cpu: Any, subprocess: Any, tempfile: Any, time: Any,
         path: Any) -> dict[str, Any]:
    work = path(tempfile.mkdtemp(prefix="cm_profile_"))
    (work / "counts").mkdir()
    body_file = work / "body.json"
    body_file.write_bytes(body)
    port = lt._free_port()
    env = lt._server_env(variant != "bare", work, db_url, "redis://127.0.0.1:6379/0", sink.port,
                         _SETTINGS.get(variant, {}), None)
    env[VARIANT] = variant
    cmd = [lt.PYTHON, "-m", "uvicorn", "load.profile_server:app", "--host", "127.0.0.1",
           "--port", str(port), "--lifespan", "on", "--no-access-log", "--log-level", "warning"]
    row: dict[str, Any] = {"variant": variant, "run": index + 1}
    log_path = work / "server.log"
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, cwd=lt.ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)
            try:
                lt._wait_listening(proc, port, log_path)
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                lt._wrk(wrk, url, args.warmup, args.connections, body_file)
                before = tree_cpu(proc.pid)
                measured = lt._wrk(wrk, url, args.duration, args.connections, body_file)
                cpu = tree_cpu(proc.pid) - before
                if args.py_spy:
                    # After the measured run, one sampled wrk run each: native stacks need
                    # py-spy to pause the process per sample; --gil runs without pausing.
                    for label, extra in (("spy", ["--native"]), ("spy_gil", ["--gil",
                                                                             "--nonblocking"])):
                        out = work / f"{label}.txt"
                        spy_proc = subprocess.Popen(
                            [str(spy), "record", "-p", str(proc.pid), "--threads",
                             "--rate", str(args.rate), "--duration", str(args.duration),
                             "--format", "raw", "-o", str(out), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        lt._wrk(wrk, url, args.duration, args.connections, body_file)
                        spy_proc.wait(60)
                        if out.exists():
                            row[label] = _read_spy(out.read_text())
            finally:
                lt._stop(proc)
        per = 1e6 / max(1, measured.requests)
        row.update(rps=measured.rps, p50_ms=measured.p50_us / 1000,
                   p99_ms=measured.p99_us / 1000, main_us=cpu.main_s * per,
                   other_us=cpu.other_s * per, requests=measured.requests)
        problems = lt._log_problems(log_path)
        if problems:
            row["log"] = problems[:5]
        return row
    finally:
        lt.shutil.rmtree(work, ignore_errors=True)


def _read_spy(raw: str) -> dict[str, Any]:
    """Per thread: samples, top leaf frames (self), and samples by owner: the package (or the
    middleware's module) of the nearest Python frame to the leaf, so native calls such as
    ``orjson.loads`` count for the code that made them. From py-spy's ``raw`` output."""
    threads: dict[str, dict[str, Any]] = {}
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        t = threads.setdefault(_thread_name(frames[0]),
                               {"samples": 0, "self": {}, "owner": {}})
        n = int(count)
        t["samples"] += n
        leaf = _short(frames[-1])
        t["self"][leaf] = t["self"].get(leaf, 0) + n
        owner = next((o for o in map(_owner, reversed(frames[1:])) if o), "native")
        t["owner"][owner] = t["owner"].get(owner, 0) + n
    out: dict[str, Any] = {"total": sum(t["samples"] for t in threads.values()) or 1}
    for name, t in threads.items():
        out[name] = {"samples": t["samples"],
                     "self": sorted(t["self"].items(), key=lambda kv: -kv[1])[:15],
                     "owner": sorted(t["owner"].items(), key=lambda kv: -kv[1])}
    return out


def _owner(frame: str) -> str | None:
    """``cost_middleware/<module>``, the top-level package, or None for a native frame."""
    where = frame.partition(" (")[2].rsplit(":", 1)[0]
    if not where.endswith(".py"):
        return None
    parts = where.split("/")
    if "cost_middleware" in parts:
        return "/".join(parts[parts.index("cost_middleware"):])
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].removesuffix(".py")
    if "load" in parts:
        return "gateway (" + parts[-1] + ")"
    return "stdlib " + parts[-1]


def _thread_name(frame: str) -> str:
    # py-spy --threads puts ``thread (0x7f…)`` or ``process … thread (…)`` first.
    return frame.split(")")[0] + ")" if frame.startswith("thread") else frame[:60]


def _short(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py)"
    name, _, where = frame.partition(" (")
    file = where.rsplit("/", 1)[-1].split(":")[0].rstrip(")")
    return f"{name} ({file})" if file else name


def _print_spy(label: str, spy: dict[str, Any]) -> None:
    total = spy["total"]
    for name, t in spy.items():
        if name == "total" or t["samples"] < total / 50:
            continue
        print(f"  [{label}] {name}: {t['samples']} samples ({t['samples'] / total:.0%})")
        for frame, n in t["self"][:8]:
            print(f"      self  {n / total:6.1%}  {frame}")
        for owner, n in t["owner"][:14]:
            print(f"      owner {n / total:6.1%}  {owner}")


if __name__ == "__main__":
    sys.exit(main())
