"""Price changes made anywhere reach every process's cache within milliseconds, over Redis.

A change commits to the database, then :func:`notify_change` bumps the version key and deletes
the model's key. Every process runs a :class:`PriceSync` that hears of it on the best channel the
server allows and evicts the entry from its price book:

``keyspace``   keyspace notifications of our keys (missing flags are merged in with CONFIG SET);
``tracking``   client-side-caching invalidations (``CLIENT TRACKING ... BCAST``): no CONFIG needed;
``poll-only``  neither is available: only the version key, polled every ``poll_interval`` seconds.

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
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from itertools import count
from typing import Any, Protocol, TypeAlias

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import ConnectionPool
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry

from cost_middleware.config import Settings
from cost_middleware.metrics import Metrics

log = logging.getLogger("cost_middleware")

#: Every key of ours starts with this (the version key too); tracking watches exactly this prefix.
PREFIX = "cost_middleware:price"
#: ``cost_middleware:price:{provider}/{model}``: one model's rows in the shared price tier.
MODEL_KEY_PREFIX = PREFIX + ":"
#: Bumped by every change; polling it is the backstop for lost notifications.
VERSION_KEY = "cost_middleware:prices:version"
#: Keys that prove a channel works end to end: under PREFIX, never a model key.
PROBE_KEY_PREFIX = "cost_middleware:prices:probe:"

KEYSPACE = "keyspace"
TRACKING = "tracking"
POLL_ONLY = "poll-only"
DOWN = "down"
#: Best first; a cluster reports its weakest primary.
CHANNELS = (KEYSPACE, TRACKING, POLL_ONLY, DOWN)

#: K: keyspace channel; $: string commands (SET, INCR); g: generic ones (DEL, EXPIRE, RENAME).
NEEDED_FLAGS = "K$g"

Client: TypeAlias = "redis.Redis | RedisCluster"

_MODEL_KEY_PREFIX_B = MODEL_KEY_PREFIX.encode()
_VERSION_KEY_B = VERSION_KEY.encode()
_INVALIDATE_CHANNEL = b"__redis__:invalidate"
#: Connect and command timeout: a hung server must not hold a thread for long.
_TIMEOUT = 2.0
#: How long a reader blocks before looking at its stop flag (data wakes it at once).
_READ_WAIT = 0.1
#: A probe event normally arrives in well under a millisecond.
_PROBE_WAIT = 0.5
_FIRST_BACKOFF = 0.1
_MAX_BACKOFF = 5.0

_ENABLE_HINT = (
    "run `CONFIG SET notify-keyspace-events K$g` (and put `notify-keyspace-events K$g` in "
    "redis.conf so it survives restarts); on managed Redis, where CONFIG is blocked, set the "
    "notify-keyspace-events parameter to include K$g: ElastiCache: the cluster's parameter group; "
    "Memorystore: `gcloud redis instances update --update-redis-config "
    "notify-keyspace-events=K$g`; Azure Cache for Redis: Advanced settings, keyspace notifications"
)


class _Connection(Protocol):
    """The part of redis-py's (untyped) connection classes used here."""

    def connect(self) -> None: ...

    def disconnect(self) -> None: ...

    def send_command(self, *args: str | bytes | int) -> None: ...

    def can_read(self, timeout: float) -> bool: ...

    def read_response(self) -> Any: ...


class _Cluster(Protocol):
    """The part of redis-py's (untyped) cluster client used here."""

    def get_primaries(self) -> list[ClusterNode]: ...

    def get_node_from_key(self, key: str) -> ClusterNode: ...

    def get_nodes(self) -> list[ClusterNode]: ...


class Invalidatable(Protocol):
    """What the sync needs from a price book; both methods must be thread-safe."""

    def invalidate(self, provider: str, model: str) -> None: ...

    def invalidate_all(self) -> None: ...


def model_key(provider: str, model: str) -> str:
    """The Redis key of one model's prices. Both are untrusted: they only ever become a key."""
    if not provider or "/" in provider:
        raise ValueError(f"a provider name must be non-empty and contain no '/': {provider!r}")
    if not model:
        raise ValueError("a model name must be non-empty")
    return f"{MODEL_KEY_PREFIX}{provider}/{model}"


def parse_model_key(key: bytes) -> tuple[str, str] | None:
    """``(provider, model)`` of a model key; None for any other key."""
    if not key.startswith(_MODEL_KEY_PREFIX_B):
        return None
    # Undecodable bytes cannot name an entry (keys are encoded from str): replacing them is safe.
    name = key[len(_MODEL_KEY_PREFIX_B):].decode("utf-8", "replace")
    provider, slash, model = name.partition("/")
    return (provider, model) if slash and provider and model else None


def merged_flags(current: str) -> str | None:
    """``current`` plus the flags we need, or None when it has them ('A' means every class)."""
    missing = "".join(
        f for f in NEEDED_FLAGS if f not in current and not (f in "$g" and "A" in current)
    )
    return current + missing if missing else None


class OutageLog:
    """Logs the first failure of an outage and the recovery, not every retry in between."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._down = False

    def failed(self, exc: BaseException) -> None:
        if not self._down:
            self._down = True
            log.warning(
                "cost_middleware: %s: Redis failed (%s: %s); pricing continues from the "
                "process cache and the database", self._what, type(exc).__name__, exc,
            )

    def recovered(self) -> None:
        if self._down:
            self._down = False
            log.info("cost_middleware: %s: Redis is back", self._what)


def open_client(url: str) -> Client:
    """A client for ``url``, a cluster client when the server runs in cluster mode (does I/O)."""
    # One retry replaces a pooled connection that died with a server restart.
    options: dict[str, Any] = {"socket_timeout": _TIMEOUT, "socket_connect_timeout": _TIMEOUT,
                               "retry": Retry(NoBackoff(), 1)}
    client = redis.Redis.from_url(url, **options)
    try:
        clustered = client.info("cluster").get("cluster_enabled") == 1
    except ResponseError:  # INFO refused to this user: a cluster would answer MOVED anyway
        clustered = False
    except BaseException:
        client.close()
        raise
    if not clustered:
        return client
    client.close()
    return RedisCluster.from_url(url, **options)


def close_client(client: Client) -> None:
    """Close ``client`` and all its connections."""
    client.close()
    if isinstance(client, RedisCluster):
        # A cluster client made by from_url gives each node its own pool, which close()
        # leaves connected (redis-py 8.1): disconnect them here.
        cluster: _Cluster = client
        for node in cluster.get_nodes():
            if node.redis_connection is not None:
                node.redis_connection.connection_pool.disconnect()


class SharedClient:
    """The client for a URL, opened at first use (nothing touches the network at start)."""

    def __init__(self, client_or_url: Client | str) -> None:
        self._owned = isinstance(client_or_url, str)
        self._url = client_or_url if isinstance(client_or_url, str) else ""
        self._client = None if isinstance(client_or_url, str) else client_or_url
        self._lock = threading.Lock()

    def get(self) -> Client:
        with self._lock:
            if self._client is None:
                self._client = open_client(self._url)
            return self._client

    def close(self) -> None:
        """Close the client if this object opened it (a client passed in stays the caller's)."""
        with self._lock:
            if self._owned and self._client is not None:
                close_client(self._client)
                self._client = None


_notify_outage = OutageLog("price change notification")


def notify_change(client_or_url: Client | str, provider: str, model: str) -> None:
    """Tell every process that ``(provider, model)`` changed; call it after the database commit.

    Redis trouble never raises: it is logged once per outage, and the version poll and the cache
    TTL bound what is missed. A provider containing '/' is a programming error (ValueError).
    """
    shared = SharedClient(client_or_url)
    try:
        _notify(shared, provider, model)
    finally:
        shared.close()


def make_notifier(settings: Settings) -> Callable[[str, str], None] | None:
    """The admin's ``on_change(provider, model)`` callback; None when no Redis is configured."""
    if settings.redis_url is None:
        return None
    return partial(_notify, SharedClient(settings.redis_url))


def _notify(shared: SharedClient, provider: str, model: str) -> None:
    key = model_key(provider, model)
    try:
        client = shared.get()
        # Version first: a process that read the old row before the commit and is now filling
        # the model key (redis_tier) either sees the new version and drops its fill, or wrote
        # before this DELETE removes it.
        client.incr(VERSION_KEY)
        client.delete(key)
    except (RedisError, OSError) as exc:
        _notify_outage.failed(exc)
        return
    _notify_outage.recovered()


@dataclass(frozen=True, slots=True)
class _Node:
    """How to open a dedicated connection to one server: the URL's own, or a cluster primary."""

    connection_class: Callable[..., _Connection]
    kwargs: dict[str, Any]

    @classmethod
    def from_url(cls, url: str) -> _Node:
        # RESP2: pub/sub messages and redirected invalidations arrive as plain replies.
        pool = ConnectionPool.from_url(url, protocol=2, socket_timeout=_TIMEOUT,
                                       socket_connect_timeout=_TIMEOUT)
        return cls(pool.connection_class, dict(pool.connection_kwargs))

    def at(self, node: ClusterNode) -> _Node:
        return _Node(self.connection_class, {**self.kwargs, "host": node.host, "port": node.port})

    @property
    def keyspace_pattern(self) -> str:
        return f"__keyspace@{self.kwargs.get('db', 0)}__:{PREFIX}*"

    def connect(self) -> _Connection:
        # A bare connection never reconnects by itself, so a lost subscription or tracking
        # registration always surfaces as an error we handle, not as silence.
        conn = self.connection_class(**self.kwargs)
        conn.connect()
        return conn


def _call(conn: _Connection, *args: str | bytes | int) -> Any:
    conn.send_command(*args)
    return conn.read_response()


def _nodes(url: str, client: Client) -> list[tuple[_Node, str]]:
    """Each server to listen on (events are per node: every primary of a cluster), with a probe
    key that server owns."""
    base = _Node.from_url(url)
    if not isinstance(client, RedisCluster):
        return [(base, PROBE_KEY_PREFIX + uuid.uuid4().hex)]
    cluster: _Cluster = client
    return [(base.at(p), _probe_key_on(cluster, p)) for p in cluster.get_primaries()]


def _primaries(client: Client) -> frozenset[str]:
    """The primaries a cluster client currently knows of (it learns from MOVED replies)."""
    if not isinstance(client, RedisCluster):
        return frozenset()
    cluster: _Cluster = client
    return frozenset(node.name for node in cluster.get_primaries())


def _probe_key_on(client: _Cluster, node: ClusterNode) -> str:
    token = uuid.uuid4().hex
    keys = (f"{PROBE_KEY_PREFIX}{{{tag}}}{token}" for tag in count())
    return next(k for k in keys if client.get_node_from_key(k).name == node.name)


@dataclass(slots=True)
class _Listener:
    """One node's channel: ``sub`` receives invalidations; ``ctl`` owns the tracking state."""

    channel: str
    ctl: _Connection | None
    sub: _Connection | None
    #: notify-keyspace-events as read before any merge; None when CONFIG GET is refused.
    flags: str | None
    #: CONFIG could read (and where needed, write) notify-keyspace-events.
    config_allowed: bool

    def close(self) -> None:
        for conn in (self.sub, self.ctl):
            if conn is not None:
                conn.disconnect()


def _open_listener(node: _Node, probe_key: str) -> _Listener:
    """Subscribe on ``node`` through the best channel it allows, merging keyspace flags in."""
    ctl = node.connect()
    sub: _Connection | None = None
    try:
        sub = node.connect()
        flags, config_allowed = _enable_keyspace(ctl)
        if config_allowed or flags is None:
            _call(sub, "PSUBSCRIBE", node.keyspace_pattern)
            # With CONFIG refused, only an event can tell whether someone set the flags.
            if config_allowed or _probe(ctl, sub, probe_key) is not None:
                return _Listener(KEYSPACE, ctl, sub, flags, config_allowed)
            sub.disconnect()
            sub = node.connect()
        if _enable_tracking(ctl, sub):
            return _Listener(TRACKING, ctl, sub, flags, config_allowed)
        ctl.disconnect()
        sub.disconnect()
        return _Listener(POLL_ONLY, None, None, flags, config_allowed)
    except BaseException:
        ctl.disconnect()
        if sub is not None:
            sub.disconnect()
        raise


def _enable_keyspace(ctl: _Connection) -> tuple[str | None, bool]:
    """(notify-keyspace-events as read, None if CONFIG is refused; whether our events now fire)."""
    try:
        reply = _call(ctl, "CONFIG", "GET", "notify-keyspace-events")
    except ResponseError:  # NOPERM, or CONFIG renamed away (ElastiCache)
        return None, False
    flags = reply[1].decode() if len(reply) == 2 else ""
    merged = merged_flags(flags)
    if merged is None:
        return flags, True
    try:
        # Merged, never replaced: flags others rely on stay set.
        _call(ctl, "CONFIG", "SET", "notify-keyspace-events", merged)
    except ResponseError:
        return flags, False
    log.info("cost_middleware: notify-keyspace-events %r -> %r", flags, merged)
    return flags, True


def _enable_tracking(ctl: _Connection, sub: _Connection) -> bool:
    """Redirect invalidations of our prefix to ``sub``; False where refused (Redis < 6, an ACL)."""
    try:
        sub_id = _call(sub, "CLIENT", "ID")
        _call(sub, "SUBSCRIBE", _INVALIDATE_CHANNEL)
        _call(ctl, "CLIENT", "TRACKING", "on", "REDIRECT", sub_id, "BCAST", "PREFIX", PREFIX)
    except ResponseError:
        return False
    return True


def _probe(ctl: _Connection, sub: _Connection, key: str) -> float | None:
    """Seconds from writing ``key`` to ``sub`` hearing of it; None if it did not in time."""
    wanted = key.encode()
    started = time.perf_counter()
    _call(ctl, "SET", key, "1", "PX", 60_000)
    while (left := started + _PROBE_WAIT - time.perf_counter()) > 0:
        if sub.can_read(left):
            keys = _changed_keys(sub.read_response())
            if keys is not None and wanted in keys:
                return time.perf_counter() - started
    return None


def _changed_keys(message: Any) -> list[bytes] | None:
    """The keys a pub/sub message says changed (none for other messages); None means all."""
    kind = message[0]
    if kind == b"pmessage":  # [pmessage, pattern, "__keyspace@<db>__:<key>", event]
        return [message[2].partition(b":")[2]]
    if kind == b"message" and message[1] == _INVALIDATE_CHANNEL:
        keys: list[bytes] | None = message[2]  # None: the server flushed everything
        return keys
    return []


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
        listeners: list[_Listener] = []
        done = threading.Event()
        readers: list[threading.Thread] = []
        try:
            topology = _primaries(client)
            for node, probe_key in _nodes(self._url, client):
                listeners.append(_open_listener(node, probe_key))
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
                if _primaries(client) != topology:  # a new primary is not subscribed yet
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

    def _listen(self, sub: _Connection, ctl: _Connection,
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
                        self._apply(_changed_keys(message))
                if time.monotonic() >= next_check:
                    # A half-open socket never errors, and a server `timeout` may close the idle
                    # tracking client, which silently ends invalidations: check both.
                    if awaiting_pong:
                        raise redis.TimeoutError("the subscriber connection stopped answering")
                    _call(ctl, "PING")
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


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """What ``cost-middleware doctor`` reports about price sync."""

    reachable: bool
    #: The channel a PriceSync would have live here (a cluster: its weakest primary).
    channel: str
    #: What to do about it, for a human.
    hint: str
    cluster: bool = False
    #: As read before any merge; None when unreachable or CONFIG GET is refused.
    notify_keyspace_events: str | None = None
    config_allowed: bool = False
    #: Write of a probe key to its invalidation arriving (worst primary); None if none arrived.
    probe_latency_ms: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """A notification channel is live and a probe change came through it."""
        return self.channel in (KEYSPACE, TRACKING) and self.probe_latency_ms is not None

    @property
    def summary(self) -> str:
        """One line for a human: what is live, what was found, what to do."""
        if not self.reachable:
            return f"{self.error}: {self.hint}"
        found = ("CONFIG refused" if self.notify_keyspace_events is None
                 else f"notify-keyspace-events was {self.notify_keyspace_events!r}")
        probe = ("" if self.probe_latency_ms is None
                 else f", a probe change arrived in {self.probe_latency_ms:.2f} ms")
        where = " (cluster: every primary)" if self.cluster else ""
        return f"{self.channel} channel{where}, {found}{probe}; {self.hint}"


def diagnose(redis_url: str) -> Diagnosis:
    """Set up the channel a :class:`PriceSync` would use here, then time a probe through it.

    Like PriceSync at start, this merges the keyspace flags it needs where CONFIG allows.
    """
    listeners: list[_Listener] = []
    client: Client | None = None
    try:
        client = open_client(redis_url)
        latencies: list[float | None] = []
        for node, probe_key in _nodes(redis_url, client):
            listener = _open_listener(node, probe_key)
            listeners.append(listener)
            if listener.sub is not None and listener.ctl is not None:
                latencies.append(_probe(listener.ctl, listener.sub, probe_key))
    except (RedisError, OSError) as exc:
        return Diagnosis(False, DOWN, "Redis is unreachable: pricing continues from each "
                         "process's cache and the database, without cross-process sync",
                         error=f"{type(exc).__name__}: {exc}")
    finally:
        for listener in listeners:
            listener.close()
        if client is not None:
            close_client(client)
    worst = max(listeners, key=lambda lst: CHANNELS.index(lst.channel))
    latency = None if not latencies or None in latencies else max(
        x for x in latencies if x is not None)
    return Diagnosis(
        True, worst.channel, _hint(worst, latencies, latency),
        cluster=isinstance(client, RedisCluster), notify_keyspace_events=worst.flags,
        config_allowed=worst.config_allowed,
        probe_latency_ms=None if latency is None else latency * 1000,
    )


def _hint(listener: _Listener, latencies: list[float | None], latency: float | None) -> str:
    if listener.channel != POLL_ONLY and latency is None:
        return (f"the {listener.channel} channel was set up but a probe change did not arrive "
                f"within {_PROBE_WAIT * 1000:.0f} ms on {latencies.count(None)} node(s): "
                "look for a proxy that drops pub/sub; meanwhile the version poll bounds staleness")
    if listener.channel == KEYSPACE:
        if listener.flags is not None and merged_flags(listener.flags) is not None:
            return (f"keyspace notifications are live: {NEEDED_FLAGS} was merged in with CONFIG "
                    "SET, which a restart forgets (processes merge again when they reconnect); "
                    f"put `notify-keyspace-events {NEEDED_FLAGS}` in redis.conf to keep it")
        return "keyspace notifications are live"
    if listener.channel == TRACKING:
        return ("CONFIG is refused and keyspace notifications are off, so client-side-caching "
                "invalidation (CLIENT TRACKING BCAST) is live, which is as fast. To use keyspace "
                "notifications instead, " + _ENABLE_HINT)
    return ("no notification channel: other processes see price changes only through the "
            "version poll, every few seconds. To fix, " + _ENABLE_HINT
            + "; or grant the ACL user CLIENT TRACKING (Redis 6 or later)")
