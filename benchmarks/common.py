"""What every benchmark shares: the :class:`Result` row, interleaved timing, percentiles, a
throwaway PostgreSQL database, fresh-interpreter timing, and the table both the scripts and
``run.py`` print.

Every figure is a ratio against a baseline measured in the same run, on the same machine, in
alternating rounds (:func:`interleave`), so whatever else the machine is doing hits both alike.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import random
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table

#: Admin URL of the PostgreSQL server the benchmarks create their databases on (as the tests).
PG_ADMIN_URL = os.environ.get("COST_MIDDLEWARE_TEST_PG",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")
NO_POSTGRES = "PostgreSQL not reachable (COST_MIDDLEWARE_TEST_PG)"
#: Short timing windows: on a shared machine the fastest window is the one least disturbed by
#: other processes, and short windows often go undisturbed.
WINDOW_S = 0.002

S = TypeVar("S")


@dataclass(slots=True)
class Result:
    """One figure, its baseline from the same run, and the target it is held to.

    ``baseline_value`` is in ``unit`` too; ``ratio`` is always ``value / baseline_value``
    (so below 1 means less than the baseline: faster for times, slower for rates). ``value``
    None means the benchmark was skipped; ``notes`` says why.
    """

    benchmark: str
    value: float | None
    unit: str
    baseline: str = ""
    baseline_value: float | None = None
    target: str = ""
    #: None: no target, or skipped.
    met: bool | None = None
    notes: str = ""
    ratio: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.value is not None and self.baseline_value:
            self.ratio = self.value / self.baseline_value

    @classmethod
    def skipped(cls, benchmark: str, unit: str, reason: str) -> Result:
        return cls(benchmark, None, unit, notes=f"skipped: {reason}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Result:
        return cls(**{k: v for k, v in data.items() if k != "ratio"})


# -- timing --------------------------------------------------------------------------------


def interleave(samplers: Mapping[str, Callable[[], S]], rounds: int) -> dict[str, list[S]]:
    """Every sampler's samples over ``rounds`` rounds; each round runs each sampler once, in
    turn, so drift in the machine's load reaches all of them alike."""
    samples: dict[str, list[S]] = {name: [] for name in samplers}
    for _ in range(rounds):
        for name, sampler in samplers.items():
            samples[name].append(sampler())
    return samples


def calls_per_window(fn: Callable[[], object], window: float = WINDOW_S) -> int:
    """How many calls of ``fn`` fill about ``window`` seconds (``fn`` runs at least once)."""
    n = 1
    while True:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        spent = time.perf_counter() - start
        if spent > window / 4:
            return max(1, round(n * window / spent))
        n *= 2


def best_per_call(fns: Mapping[str, Callable[[], object]], rounds: int,
                  window: float = WINDOW_S) -> dict[str, float]:
    """Seconds per call of each function: the fastest of ``rounds`` interleaved windows.

    The garbage collector is off meanwhile (as in ``timeit``): otherwise the cycles one
    function leaves are collected in the next one's window, every round.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _best_per_call(fns, rounds, window)
    finally:
        if was_enabled:
            gc.enable()
        gc.collect()


def _best_per_call(fns: Mapping[str, Callable[[], object]], rounds: int,
                   window: float) -> dict[str, float]:
    numbers = {name: calls_per_window(fn, window) for name, fn in fns.items()}

    def sampler(fn: Callable[[], object], number: int) -> Callable[[], float]:
        def sample() -> float:
            start = time.perf_counter()
            for _ in range(number):
                fn()
            return (time.perf_counter() - start) / number
        return sample

    samples = interleave({name: sampler(fn, numbers[name]) for name, fn in fns.items()}, rounds)
    return {name: min(values) for name, values in samples.items()}


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU seconds of one call (wall minus CPU: preempted or waiting on I/O)."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank, in the values' unit."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def fresh_python(code: str, env: Mapping[str, str] | None = None) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of a fresh interpreter running ``code``.

    CPU time is what the work costs; wall time adds the wait for a core on a busy machine.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, **(env or {})},
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


# -- services ------------------------------------------------------------------------------


@contextmanager
def postgres_database(admin_url: str = PG_ADMIN_URL) -> Iterator[str | None]:
    """A new, empty PostgreSQL database, dropped on exit; None when the server is unreachable."""
    import sqlalchemy as sa

    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect():
            pass
    except (sa.exc.DBAPIError, OSError):
        admin.dispose()
        yield None
        return
    name = f"cm_bench_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def load_note() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} on {os.cpu_count()} CPUs"


# -- output --------------------------------------------------------------------------------


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "skipped"
    magnitude = abs(value)
    if magnitude >= 1000:
        text = f"{value:,.0f}"
    elif magnitude >= 100:
        text = f"{value:.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    elif magnitude >= 1 or magnitude == 0:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".rstrip()


def format_ratio(ratio: float | None) -> str:
    if ratio is None:
        return ""
    if ratio >= 0.1:
        return f"{ratio:.2f}x"
    return f"{ratio:.2g}x (1/{1 / ratio:,.0f})"


def format_met(met: bool | None) -> str:
    return {True: "[green]yes[/]", False: "[red]NO[/]", None: "-"}[met]


def results_table(groups: Sequence[Sequence[Result]], title: str) -> Table:
    """One row per result; a rule between groups (one group per benchmark module)."""
    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("benchmark", overflow="fold")
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("baseline (same run)", overflow="fold")
    table.add_column("ratio", justify="right", no_wrap=True)
    table.add_column("target", overflow="fold")
    table.add_column("met", justify="center", no_wrap=True)
    table.add_column("notes", overflow="fold")
    for results in groups:
        for i, r in enumerate(results):
            baseline = (f"{r.baseline}: {format_value(r.baseline_value, r.unit)}"
                        if r.baseline else "")
            table.add_row(r.benchmark, format_value(r.value, r.unit), baseline,
                          format_ratio(r.ratio), r.target, format_met(r.met), r.notes,
                          end_section=i == len(results) - 1)
    return table


def console() -> Console:
    """A console that stays wide when the output goes to a file or a pipe."""
    out = Console()
    return out if out.is_terminal else Console(width=200)


def standalone(run: Callable[[bool], list[Result]], description: str) -> None:
    """``python benchmarks/bench_x.py [--quick]``: run one module and print its table."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="fewer iterations, smaller data")
    args = parser.parse_args()
    out = console()
    out.print(load_note())
    results = run(args.quick)
    out.print(results_table([results], description))
    out.print(load_note())


def network_reads(body: bytes, low: int = 1024, high: int = 4096, seed: int = 7) -> list[bytes]:
    """``body`` cut into reads of random sizes in [low, high] (a proxy's or a client's reads)."""
    rng = random.Random(seed)
    reads = []
    i = 0
    while i < len(body):
        step = rng.randint(low, high)
        reads.append(body[i : i + step])
        i += step
    return reads
