"""Run the benchmarks and print one table: every figure against a baseline from the same run.

    python benchmarks/run.py [--quick] [--only middleware,pricing,...]
    cost-middleware bench -- [--quick] [--only ...]     (the same, from a source checkout)

Every ``benchmarks/bench_<name>.py`` is a benchmark called ``<name>``. Each runs in a fresh
interpreter of its own, so one's imports, threads and memory never weigh on the next. A module
that defines ``run(quick)`` returning ``common.Result`` rows has them collected into the table;
any other is run as a script (``python bench_<name>.py [--quick]``) and its output is printed
verbatim under its own heading. Everything also goes to ``benchmarks/results/latest.json``.

Exit status 0, also when targets are missed (the table says which); 1 when a benchmark failed
to run at all.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # run through runpy by ``cost-middleware bench``
    sys.path.insert(0, str(HERE))

from common import Result, console, load_note, results_table  # noqa: E402

RESULTS_FILE = HERE / "results" / "latest.json"
#: A benchmark still running after this long is stopped and reported as failed.
TIMEOUT_S = {False: 900.0, True: 300.0}


@dataclass(slots=True)
class Outcome:
    """What running one benchmark module gave."""

    name: str
    file: str
    #: "run": its rows are in ``results``; "script": its printed output is in ``output``.
    mode: str
    seconds: float = 0.0
    results: list[Result] = field(default_factory=list)
    output: str = ""
    error: str | None = None
    load_before: str = ""
    load_after: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.file, "mode": self.mode,
                "seconds": round(self.seconds, 2),
                "results": [r.to_json() for r in self.results], "output": self.output,
                "error": self.error, "load_before": self.load_before,
                "load_after": self.load_after}


def discover() -> dict[str, Path]:
    return {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}


def defines_run(path: Path) -> bool:
    """Whether the module defines a top-level ``run`` taking an argument (``run(quick)``),
    found without importing it."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return any(isinstance(node, ast.FunctionDef) and node.name == "run" and node.args.args
               for node in tree.body)


def run_module(name: str, path: Path, quick: bool) -> Outcome:
    flags = ["--quick"] if quick else []
    outcome = Outcome(name, path.name, "run" if defines_run(path) else "script",
                      load_before=load_note())
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results.json"
        command = ([sys.executable, __file__, "--child", name, "--out", str(out), *flags]
                   if outcome.mode == "run" else [sys.executable, str(path), *flags])
        started = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, cwd=HERE.parent,
                                  timeout=TIMEOUT_S[quick])
        except subprocess.TimeoutExpired as expired:
            outcome.error = f"stopped after {expired.timeout:.0f} s"
            done = None
        outcome.seconds = time.perf_counter() - started
        outcome.load_after = load_note()
        if done is not None:
            outcome.output = done.stdout
            if done.returncode != 0:
                outcome.error = f"exit status {done.returncode}:\n" + done.stderr[-4000:]
            elif outcome.mode == "run":
                outcome.results = [Result.from_json(r) for r in json.loads(out.read_text())]
    return outcome


def child(name: str, out: str, quick: bool) -> None:
    """Inside the fresh interpreter: import ``bench_<name>``, run it, write its rows."""
    module = importlib.import_module(f"bench_{name}")
    results = module.run(quick)
    for result in results:
        if not isinstance(result, Result):
            raise TypeError(f"bench_{name}.run() returned {type(result).__name__}, not Result")
    Path(out).write_text(json.dumps([r.to_json() for r in results], indent=1))


def report(outcomes: list[Outcome], quick: bool, started: datetime, seconds: float) -> None:
    out = console()
    rows = [r for o in outcomes for r in o.results]
    if rows:
        title = (f"cost-middleware benchmarks{' (quick)' if quick else ''}: "
                 f"ratio = value / baseline, both measured in this run")
        out.print(results_table([o.results for o in outcomes if o.results], title))
    for o in outcomes:
        if o.mode == "script" and o.error is None:
            out.rule(f"{o.file} (no run(quick) yet: its own output)")
            out.out(o.output.rstrip(), highlight=False)
    for o in outcomes:
        if o.error is not None:
            out.rule(f"[red]{o.file} failed[/]")
            out.out(o.error, highlight=False)
    missed = [r.benchmark for r in rows if r.met is False]
    out.print(f"{len(rows)} results, {len(missed)} target(s) missed, in {seconds:.0f} s; "
              f"{load_note()}")
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(json.dumps({
        "started_at": started.isoformat(), "seconds": round(seconds, 1), "quick": quick,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "benchmarks": [o.to_json() for o in outcomes],
    }, indent=1, ensure_ascii=False))
    out.print(f"written to {RESULTS_FILE}")


def main() -> int:
    available = discover()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer rounds and smaller data (about 2 minutes instead of 10)")
    parser.add_argument("--only", metavar="NAMES",
                        help=f"comma-separated, from: {', '.join(available)}")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    if argv[:1] == ["--"]:  # ``cost-middleware bench -- --quick`` passes the separator on
        argv = argv[1:]
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args.child, args.out, args.quick)
        return 0
    names = list(available)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in available]
        if unknown:
            parser.error(f"unknown benchmark(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(available)}")
    out = console()
    out.print(f"{len(names)} benchmark(s){' (quick)' if args.quick else ''}; {load_note()}")
    started, clock = datetime.now(UTC), time.perf_counter()
    outcomes = []
    for name in names:
        with out.status(f"{name}…"):
            outcome = run_module(name, available[name], args.quick)
        state = "[red]failed[/]" if outcome.error else (
            f"{len(outcome.results)} results" if outcome.mode == "run" else "ran as a script")
        out.print(f"  {name}: {state} in {outcome.seconds:.0f} s ({outcome.load_after})")
        outcomes.append(outcome)
    report(outcomes, args.quick, started, time.perf_counter() - clock)
    return 1 if any(o.error for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
