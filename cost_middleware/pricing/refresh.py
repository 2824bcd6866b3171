"""The optional price refresh of a running app (``COST_MIDDLEWARE_PRICES_REFRESH``).

A background thread imports a price source (a file, or an http(s) URL: our catalog, LiteLLM's
map or genai-prices' data) every ``COST_MIDDLEWARE_PRICES_REFRESH_INTERVAL`` seconds, jittered
by a tenth; the first time at a random moment shortly after the tracker's worker starts, never
at import or on the request path. A round:

1. **claims the interval** when Redis is configured (``SET NX`` with an expiry of most of the
   interval): of all the processes sharing that Redis, one refreshes per interval;
2. **takes the database's refresh guard** (PostgreSQL: a transaction-level advisory lock;
   SQLite: an exclusive ``flock`` on a file beside the database), so two rounds never plan and
   write at the same time: the second plans after the first wrote, finds the rows unchanged and
   writes nothing (without the guard both would write the same rates, one row after the other);
3. reads the source unless it is unchanged (``fetch``: ETag / If-Modified-Since, file size and
   mtime), then **plans and applies it exactly as** ``cost-middleware prices import`` does
   (``imports.plan``: the same conversions, guards, new versions, ``source`` labels, never an
   older row over a newer one), notifying each changed model to this process's price book and,
   through Redis (``redis_keys.notify_change``), to every other process.

A round that fails (the source unreachable or unreadable, not JSON, not a known format, the
database down) or that the import guards refuse (a shrunken or corrupt map, absurd rates)
writes nothing, so the last good prices stay in use; it is counted (``prices.refresh.failed`` /
``.refused``) and logged once per outage, with one more line when refreshing works again.
Nothing here ever raises into the app.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.engine import Engine

from cost_middleware import forks
from cost_middleware.config import Settings
from cost_middleware.metrics import Metrics
from cost_middleware.pricing.admin import OnChange
from cost_middleware.pricing.fetch import FetchError, Validators, fetch, file_name, is_url, shown
from cost_middleware.pricing.imports.plan import ImportPlan, apply_plan, plan_import
from cost_middleware.pricing.imports.sources import SourceError
from cost_middleware.pricing.redis_keys import SharedClient, notify_change

log = logging.getLogger("cost_middleware")

#: Outside ``redis_keys.PREFIX``: the price listeners never hear of these keys.
KEY_PREFIX = "cost_middleware:refresh:"
#: The first round runs at a random moment within this many seconds of the start (or within
#: the interval, if shorter), so the processes of a deployment do not all fetch at once.
FIRST_WINDOW = 300.0
JITTER = 0.1
#: Share of the interval a Redis claim lasts: less than one interval, so the next round finds
#: it expired even when its jitter makes it early.
CLAIM_SHARE = 0.8
#: The status key (what ``doctor`` reports) outlives this many intervals.
STATUS_INTERVALS = 3
STOP_TIMEOUT = 2.0
THREAD_NAME = "cost-middleware-prices-refresh"
#: PostgreSQL advisory lock id of the refresh guard (the bytes "cm_price").
PG_LOCK_ID = 0x636D5F7072696365
_DETAIL_LENGTH = 300

#: A round's outcomes.
APPLIED = "applied"
UNCHANGED = "unchanged"
SKIPPED = "skipped"
REFUSED = "refused"
FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one round did: its kind, one line saying why, the rows written."""

    kind: str
    detail: str
    rows: int = 0


class PriceRefresher:
    """Refreshes prices from ``settings.prices_refresh`` in one background thread."""

    def __init__(self, settings: Settings, engine: Engine, metrics: Metrics, *,
                 invalidate: OnChange | None = None) -> None:
        if settings.prices_refresh is None:
            raise ValueError("settings.prices_refresh names no source")
        self.source = settings.prices_refresh
        self.interval = settings.prices_refresh_interval
        self._engine = engine
        self._metrics = metrics
        #: This process's price book hears of each change directly (with or without Redis).
        self._invalidate = invalidate
        self._redis_url = settings.redis_url
        self._keys = status_keys(self.source)
        self._validators: Validators | None = None
        self._failures = 0
        self._stopped = False
        self.last: Outcome | None = None
        self._reset_runtime()
        forks.reset_in_child(self, PriceRefresher._after_fork)

    def _reset_runtime(self) -> None:
        self._redis = SharedClient(self._redis_url) if self._redis_url else None
        self._wake = threading.Event()
        self._start_lock = threading.Lock()
        self._round_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _after_fork(self) -> None:
        # The parent's Redis connection and thread are the parent's; a child refreshes too.
        running = self._thread is not None
        if self._redis is not None:
            forks.abandon(self._redis)
        self._reset_runtime()
        if running and not self._stopped:
            self.start()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread (idempotent); its first round comes after a random delay."""
        with self._start_lock:
            if self._thread is not None or self._stopped:
                return
            thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:  # interpreter shutting down, or out of threads
                log.warning("cost_middleware: cannot start the prices refresh thread (%s)", exc)
                return
            self._thread = thread

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the thread (a round in progress finishes on its own: it is a daemon)."""
        with self._start_lock:
            self._stopped = True
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if self._redis is not None:
            self._redis.close()

    def _run(self) -> None:
        delay = random.uniform(0.1, 1.0) * min(self.interval, FIRST_WINDOW)
        while not self._wake.wait(delay):
            self.refresh_once()
            delay = self.interval * random.uniform(1 - JITTER, 1 + JITTER)

    # -- one round -------------------------------------------------------------------------

    def refresh_once(self) -> Outcome:
        """Run one round now; never raises."""
        with self._round_lock:
            try:
                outcome = self._round()
            except Exception as exc:  # a database failure, or a bug: never into the app
                outcome = Outcome(FAILED, f"{type(exc).__name__}: {exc}")
            self.last = outcome
            self._report(outcome)
            return outcome

    def _round(self) -> Outcome:
        claimed = self._claim()
        if claimed is False:
            return Outcome(SKIPPED, "another process refreshed within the interval")
        with refresh_guard(self._engine) as ours:
            if not ours:
                return Outcome(SKIPPED, "another process is refreshing now")
            outcome = self._import(notify=bool(claimed))
        if claimed:
            self._record_status(outcome)
        return outcome

    def _import(self, *, notify: bool) -> Outcome:
        try:
            fetched = fetch(self.source, self._validators)
        except FetchError as exc:
            return Outcome(FAILED, str(exc))
        if fetched.body is None:
            return Outcome(UNCHANGED, "the source is unchanged since the last refresh")
        try:
            plan = self._plan(fetched.body)
        except SourceError as exc:
            return Outcome(FAILED, str(exc))
        if plan.refusals:
            return Outcome(REFUSED, "; ".join(r.reason for r in plan.refusals))
        written = apply_plan(self._engine, plan, on_change=self._notifier(notify))
        self._validators = fetched.validators
        if not written:
            return Outcome(UNCHANGED, "no price changed")
        return Outcome(APPLIED, f"{len(plan.added):,} added, {len(plan.changed):,} changed",
                       written)

    def _plan(self, body: bytes) -> ImportPlan:
        # The import reads a file and labels rows with its name: the source's own name.
        with tempfile.TemporaryDirectory(prefix="cost-middleware-refresh-") as folder:
            path = Path(folder) / file_name(self.source)
            path.write_bytes(body)
            return plan_import(self._engine, path)

    def _notifier(self, redis_up: bool) -> OnChange:
        invalidate = self._invalidate
        # Only when the claim just reached Redis: a server that is down would cost a
        # timeout per changed model (the cache TTL bounds what other processes miss).
        shared = self._redis if redis_up else None

        def changed(provider: str, model: str) -> None:
            if invalidate is not None:
                invalidate(provider, model)
            if shared is not None:
                notify_change(shared.get(), provider, model)

        return changed

    def _claim(self) -> bool | None:
        """True: this process refreshes this interval; False: another does; None: no Redis
        (or it is down: the database guard alone keeps rounds apart)."""
        if self._redis is None:
            return None
        token = f"{socket.gethostname()}:{os.getpid()}"
        try:
            return bool(self._redis.get().set(self._keys[0], token, nx=True,
                                              px=max(1, round(self.interval * CLAIM_SHARE * 1000))))
        except (RedisError, OSError) as exc:
            log.debug("cost_middleware: prices refresh: no Redis claim (%s)", exc)
            return None

    def _record_status(self, outcome: Outcome) -> None:
        """What ``doctor`` shows: the last round any process ran, and the last success."""
        if self._redis is None:
            return
        now = datetime.now(UTC).isoformat(timespec="seconds")
        fields: dict[Any, str] = {"at": now, "outcome": outcome.kind,
                                  "detail": _line(outcome.detail)}
        if outcome.kind in (APPLIED, UNCHANGED):
            fields["succeeded_at"] = now
        try:
            client = self._redis.get()
            client.hset(self._keys[1], mapping=fields)
            client.pexpire(self._keys[1], round(self.interval * STATUS_INTERVALS * 1000))
        except (RedisError, OSError) as exc:
            log.debug("cost_middleware: prices refresh: status not recorded (%s)", exc)

    def _report(self, outcome: Outcome) -> None:
        kind = outcome.kind
        if kind == APPLIED:
            self._metrics.incr("prices.refresh.applied")
            self._metrics.incr("prices.refresh.rows", outcome.rows)
        elif kind == UNCHANGED:
            self._metrics.incr("prices.refresh.unchanged")
        elif kind == SKIPPED:
            self._metrics.incr("prices.refresh.skipped")
        elif kind == REFUSED:
            self._metrics.incr("prices.refresh.refused")
        else:
            self._metrics.incr("prices.refresh.failed")
        where = shown(self.source)
        if kind in (REFUSED, FAILED):
            self._failures += 1
            if self._failures > 1:
                log.debug("cost_middleware: prices refresh from %s %s again: %s", where, kind,
                          _line(outcome.detail))
                return
            what = ("was refused by the import guards" if kind == REFUSED else "failed")
            log.warning(
                "cost_middleware: prices refresh from %s %s (%s); the last good prices stay "
                "in use; retrying every %g s without logging again until it works (counted "
                "as prices.refresh.%s)%s", where, what, _line(outcome.detail), self.interval,
                kind, f"; review it with `{review_command(self.source)}`"
                if kind == REFUSED else "")
        elif kind in (APPLIED, UNCHANGED):
            if self._failures:
                log.info("cost_middleware: prices refresh from %s works again (after %d "
                         "failed attempts)", where, self._failures)
                self._failures = 0
            if kind == APPLIED:
                log.info("cost_middleware: prices refresh from %s: %d price rows written (%s)",
                         where, outcome.rows, outcome.detail)


def review_command(source: str) -> str:
    """The dry run an operator runs to see what a refused refresh would change."""
    if is_url(source):
        return f"curl -s {shown(source)} | cost-middleware prices import - --dry-run"
    return f"cost-middleware prices import {source} --dry-run"


def status_keys(source: str) -> tuple[str, str]:
    """The Redis claim and status keys of a source (apps refreshing from different sources
    through one Redis do not share them)."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    return f"{KEY_PREFIX}{digest}:claim", f"{KEY_PREFIX}{digest}:status"


@contextmanager
def refresh_guard(engine: Engine) -> Iterator[bool]:
    """Whether this round may plan and write: no other round on this database holds the guard
    (held until the block ends; released if the process dies)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:  # the lock ends with this transaction
            yield bool(conn.execute(text("SELECT pg_try_advisory_xact_lock(:id)"),
                                    {"id": PG_LOCK_ID}).scalar())
        return
    database = engine.url.database
    if (engine.dialect.name != "sqlite" or sys.platform == "win32" or not database
            or database == ":memory:" or engine.url.query.get("uri")):
        # Memory and URI databases are one process's; without flock, two rounds that overlap
        # write the same rates twice (a spare version), which prices nothing differently.
        yield True
        return
    import fcntl

    with open(f"{database}-refresh.lock", "ab") as lock:  # closing it releases the lock
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            got = False
        else:
            got = True
        yield got


def describe_status(settings: Settings) -> tuple[bool, str]:
    """``doctor``'s line: the configured refresh and, through Redis, its last round."""
    source = settings.prices_refresh
    if source is None:
        return True, "off"
    head = f"from {shown(source)} every {settings.prices_refresh_interval:g} s"
    if settings.redis_url is None:
        return True, (f"{head}; each app process counts its rounds in StatsD "
                      "(prices.refresh.*); set COST_MIDDLEWARE_REDIS_URL to see the last one here")
    try:
        shared = SharedClient(settings.redis_url)
        try:
            raw = shared.get().hgetall(status_keys(source)[1])
        finally:
            shared.close()
    except (RedisError, OSError) as exc:
        return False, f"{head}; its status is unknown: Redis failed ({type(exc).__name__})"
    status = {_text(k): _text(v) for k, v in raw.items()}
    if not status:
        return True, f"{head}; no round recorded in the last {STATUS_INTERVALS} intervals"
    last = f"last round {status.get('at', '?')}: {status.get('outcome', '?')}"
    if status.get("outcome") in (REFUSED, FAILED):
        since = status.get("succeeded_at")
        return False, (f"{head}; {last} ({status.get('detail', '')}); last success "
                       f"{since or 'not in the recorded window'}; the last good prices stay in use")
    return True, f"{head}; {last}"


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _line(detail: str) -> str:
    """A detail for one log line: no control characters, bounded."""
    line = _CONTROL.sub(" ", detail).strip()
    return line if len(line) <= _DETAIL_LENGTH else line[:_DETAIL_LENGTH - 1] + "…"
