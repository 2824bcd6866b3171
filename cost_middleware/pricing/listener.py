"""Price changes made anywhere reach every process's cache within milliseconds, over Redis.

Every process runs a :class:`PriceSync` that hears of a change (``redis_keys.notify_change``)
on the best channel the server allows (``channels``) and evicts the entry from its price book.

Pub/sub delivers at most once and nothing while disconnected, so every (re)subscription drops the
whole cache, and the version poll runs on every channel as a backstop; the cache TTL bounds the
rest. Redis down never stops pricing: the book keeps its cache and its database source.
See docs/CACHING.md.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Protocol

import redis
from redis.exceptions import RedisError

from cost_middleware.metrics import Metrics
from cost_middleware.pricing.channels import (
    CHANNELS,
    DOWN,
    Connection,
    Listener,
    call,
    changed_keys,
    nodes_of,
    open_listener,
    primaries,
)
from cost_middleware.pricing.redis_keys import (
    VERSION_KEY,
    OutageLog,
    close_client,
    open_client,
    parse_model_key,
)

log = logging.getLogger("cost_middleware")

_VERSION_KEY_B = VERSION_KEY.encode()
#: How long a reader blocks before looking at its stop flag (data wakes it at once).
_READ_WAIT = 0.1
_FIRST_BACKOFF = 0.1
_MAX_BACKOFF = 5.0


class Invalidatable(Protocol):
    """What the sync needs from a price book; both methods must be thread-safe."""

    def invalidate(self, provider: str, model: str) -> None: ...

    def invalidate_all(self) -> None: ...


class PriceSync:
    """Keeps one process's price book in step with price changes made anywhere.

    ``start()`` launches a daemon thread that connects, subscribes and polls; it never waits on
    the network itself. ``channel`` says what is live: one of :data:`CHANNELS`.
    """

    def __init__(self, book: Invalidatable, redis_url: str, metrics: Metrics | None = None, *,
                 poll_interval: float = 2.0) -> None:
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be greater than zero: {poll_interval!r}")
        self._book = book
        self._url = redis_url
        self._metrics = metrics
        self._poll_interval = poll_interval
        self._channel = DOWN
        self._stop = threading.Event()
        #: Set by stop() or by a reader whose connection failed (then ``_failure`` says why).
        self._wake = threading.Event()
        self._failure: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._outage = OutageLog("price sync")
        self._connected_once = False

    @property
    def channel(self) -> str:
        return self._channel

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="cost_middleware-price-sync",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._session()
            except (RedisError, OSError) as exc:
                self._set_channel(DOWN)
                self._outage.failed(exc)
            if time.monotonic() - started > _MAX_BACKOFF:
                attempt = 0
            # Jitter spreads the reconnects of many processes after a Redis restart.
            delay = min(_MAX_BACKOFF, _FIRST_BACKOFF * 2 ** min(attempt, 16))
            attempt += 1
            self._stop.wait(delay * random.uniform(0.5, 1.0))
        self._set_channel(DOWN)

    def _session(self) -> None:
        """Connect, subscribe on every node, then poll until stopped or a connection fails."""
        self._wake.clear()
        self._failure = None
        client = open_client(self._url)
        listeners: list[Listener] = []
        done = threading.Event()
        readers: list[threading.Thread] = []
        try:
            topology = primaries(client)
            for node, probe_key in nodes_of(self._url, client):
                listeners.append(open_listener(node, probe_key))
            baseline = client.get(VERSION_KEY)
            if self._connected_once:
                self._incr("sync.reconnects")
            self._connected_once = True
            self._outage.recovered()
            # Anything published while we were not subscribed is lost: start from an empty cache.
            self._apply(None)
            for listener in listeners:
                if listener.sub is not None and listener.ctl is not None:
                    reader = threading.Thread(
                        target=self._listen, args=(listener.sub, listener.ctl, done),
                        name="cost_middleware-price-sync-reader", daemon=True)
                    reader.start()
                    readers.append(reader)
            self._set_channel(max((lst.channel for lst in listeners), key=CHANNELS.index))
            while not self._stop.is_set() and not self._wake.wait(self._poll_interval):
                version = client.get(VERSION_KEY)
                if version != baseline:
                    baseline = version
                    self._apply(None)
                if primaries(client) != topology:  # a new primary is not subscribed yet
                    log.info("cost_middleware: the Redis cluster's primaries changed")
                    return
            if self._failure is not None and not self._stop.is_set():
                raise self._failure
        finally:
            done.set()
            for reader in readers:
                reader.join()
            for listener in listeners:
                listener.close()
            close_client(client)

    def _listen(self, sub: Connection, ctl: Connection,
                done: threading.Event) -> None:
        """One node's reader: apply invalidations until the session ends or a connection fails."""
        next_check = time.monotonic() + self._poll_interval
        awaiting_pong = False
        try:
            while not done.is_set():
                if sub.can_read(_READ_WAIT):
                    message = sub.read_response()
                    if message[0] == b"pong":
                        awaiting_pong = False
                    else:
                        self._apply(changed_keys(message))
                if time.monotonic() >= next_check:
                    # A half-open socket never errors, and a server `timeout` may close the idle
                    # tracking client, which silently ends invalidations: check both.
                    if awaiting_pong:
                        raise redis.TimeoutError("the subscriber connection stopped answering")
                    call(ctl, "PING")
                    sub.send_command("PING")
                    awaiting_pong = True
                    next_check = time.monotonic() + self._poll_interval
        except (RedisError, OSError) as exc:
            if not done.is_set():
                self._failure = exc
                self._wake.set()

    def _apply(self, keys: list[bytes] | None) -> None:
        """Evict what ``keys`` name from the book; None or the version key drops everything."""
        try:
            if keys is None or _VERSION_KEY_B in keys:
                self._book.invalidate_all()
                self._incr("sync.invalidations")
                return
            for key in keys:
                parsed = parse_model_key(key)
                if parsed is not None:
                    self._book.invalidate(*parsed)
                    self._incr("sync.invalidations")
        except Exception:  # a bug in the book must not end invalidation for good
            log.exception("cost_middleware: price book invalidation failed")

    def _incr(self, name: str) -> None:
        if self._metrics is not None:
            self._metrics.incr(name)

    def _set_channel(self, channel: str) -> None:
        if channel != self._channel:
            self._channel = channel
            log.info("cost_middleware: price sync channel: %s", channel)
