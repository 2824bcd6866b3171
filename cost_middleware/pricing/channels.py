"""The channels that carry price-change events, set up on dedicated connections to each node.

``keyspace``   keyspace notifications of our keys (missing flags are merged in with CONFIG SET);
``tracking``   client-side-caching invalidations (``CLIENT TRACKING ... BCAST``): no CONFIG needed;
``poll-only``  neither is available: only the version key, polled by the listener.

Events are per node, so a cluster is listened to on every primary. Both the listener and
``doctor``'s diagnosis open channels here.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from typing import Any, Protocol

from redis.cluster import ClusterNode, RedisCluster
from redis.connection import ConnectionPool
from redis.exceptions import ResponseError

from cost_middleware.pricing.redis_keys import (
    PREFIX,
    PROBE_KEY_PREFIX,
    TIMEOUT,
    Client,
    ClusterClient,
)

log = logging.getLogger("cost_middleware")

KEYSPACE = "keyspace"
TRACKING = "tracking"
POLL_ONLY = "poll-only"
DOWN = "down"
#: Best first; a cluster reports its weakest primary.
CHANNELS = (KEYSPACE, TRACKING, POLL_ONLY, DOWN)

#: K: keyspace channel; $: string commands (SET, INCR); g: generic ones (DEL, EXPIRE, RENAME).
NEEDED_FLAGS = "K$g"
#: A probe event normally arrives in well under a millisecond.
PROBE_WAIT = 0.5

_INVALIDATE_CHANNEL = b"__redis__:invalidate"


class Connection(Protocol):
    """The part of redis-py's (untyped) connection classes used here."""

    def connect(self) -> None: ...

    def disconnect(self) -> None: ...

    def send_command(self, *args: str | bytes | int) -> None: ...

    def can_read(self, timeout: float) -> bool: ...

    def read_response(self) -> Any: ...


def merged_flags(current: str) -> str | None:
    """``current`` plus the flags we need, or None when it has them ('A' means every class)."""
    missing = "".join(
        f for f in NEEDED_FLAGS if f not in current and not (f in "$g" and "A" in current)
    )
    return current + missing if missing else None


@dataclass(frozen=True, slots=True)
class Node:
    """How to open a dedicated connection to one server: the URL's own, or a cluster primary."""

    connection_class: Callable[..., Connection]
    kwargs: dict[str, Any]

    @classmethod
    def from_url(cls, url: str) -> Node:
        # RESP2: pub/sub messages and redirected invalidations arrive as plain replies.
        pool = ConnectionPool.from_url(url, protocol=2, socket_timeout=TIMEOUT,
                                       socket_connect_timeout=TIMEOUT)
        return cls(pool.connection_class, dict(pool.connection_kwargs))

    def at(self, node: ClusterNode) -> Node:
        return Node(self.connection_class, {**self.kwargs, "host": node.host, "port": node.port})

    @property
    def keyspace_pattern(self) -> str:
        return f"__keyspace@{self.kwargs.get('db', 0)}__:{PREFIX}*"

    def connect(self) -> Connection:
        # A bare connection never reconnects by itself, so a lost subscription or tracking
        # registration always surfaces as an error we handle, not as silence.
        conn = self.connection_class(**self.kwargs)
        conn.connect()
        return conn


def call(conn: Connection, *args: str | bytes | int) -> Any:
    """Send one command on ``conn`` and return its reply."""
    conn.send_command(*args)
    return conn.read_response()


def nodes_of(url: str, client: Client) -> list[tuple[Node, str]]:
    """Each server to listen on (events are per node: every primary of a cluster), with a probe
    key that server owns."""
    base = Node.from_url(url)
    if not isinstance(client, RedisCluster):
        return [(base, PROBE_KEY_PREFIX + uuid.uuid4().hex)]
    cluster: ClusterClient = client
    return [(base.at(p), _probe_key_on(cluster, p)) for p in cluster.get_primaries()]


def primaries(client: Client) -> frozenset[str]:
    """The primaries a cluster client currently knows of (it learns from MOVED replies)."""
    if not isinstance(client, RedisCluster):
        return frozenset()
    cluster: ClusterClient = client
    return frozenset(node.name for node in cluster.get_primaries())


def _probe_key_on(client: ClusterClient, node: ClusterNode) -> str:
    token = uuid.uuid4().hex
    keys = (f"{PROBE_KEY_PREFIX}{{{tag}}}{token}" for tag in count())
    return next(k for k in keys if client.get_node_from_key(k).name == node.name)


@dataclass(slots=True)
class Listener:
    """One node's channel: ``sub`` receives invalidations; ``ctl`` owns the tracking state."""

    channel: str
    ctl: Connection | None
    sub: Connection | None
    #: notify-keyspace-events as read before any merge; None when CONFIG GET is refused.
    flags: str | None
    #: CONFIG could read (and where needed, write) notify-keyspace-events.
    config_allowed: bool

    def close(self) -> None:
        for conn in (self.sub, self.ctl):
            if conn is not None:
                conn.disconnect()


def open_listener(node: Node, probe_key: str) -> Listener:
    """Subscribe on ``node`` through the best channel it allows, merging keyspace flags in."""
    ctl = node.connect()
    sub: Connection | None = None
    try:
        sub = node.connect()
        flags, config_allowed = _enable_keyspace(ctl)
        if config_allowed or flags is None:
            call(sub, "PSUBSCRIBE", node.keyspace_pattern)
            # With CONFIG refused, only an event can tell whether someone set the flags.
            if config_allowed or time_probe(ctl, sub, probe_key) is not None:
                return Listener(KEYSPACE, ctl, sub, flags, config_allowed)
            sub.disconnect()
            sub = node.connect()
        if _enable_tracking(ctl, sub):
            return Listener(TRACKING, ctl, sub, flags, config_allowed)
        ctl.disconnect()
        sub.disconnect()
        return Listener(POLL_ONLY, None, None, flags, config_allowed)
    except BaseException:
        ctl.disconnect()
        if sub is not None:
            sub.disconnect()
        raise


def _enable_keyspace(ctl: Connection) -> tuple[str | None, bool]:
    """(notify-keyspace-events as read, None if CONFIG is refused; whether our events now fire)."""
    try:
        reply = call(ctl, "CONFIG", "GET", "notify-keyspace-events")
    except ResponseError:  # NOPERM, or CONFIG renamed away (ElastiCache)
        return None, False
    flags = reply[1].decode() if len(reply) == 2 else ""
    merged = merged_flags(flags)
    if merged is None:
        return flags, True
    try:
        # Merged, never replaced: flags others rely on stay set.
        call(ctl, "CONFIG", "SET", "notify-keyspace-events", merged)
    except ResponseError:
        return flags, False
    log.info("cost_middleware: notify-keyspace-events %r -> %r", flags, merged)
    return flags, True


def _enable_tracking(ctl: Connection, sub: Connection) -> bool:
    """Redirect invalidations of our prefix to ``sub``; False where refused (Redis < 6, an ACL)."""
    try:
        sub_id = call(sub, "CLIENT", "ID")
        call(sub, "SUBSCRIBE", _INVALIDATE_CHANNEL)
        call(ctl, "CLIENT", "TRACKING", "on", "REDIRECT", sub_id, "BCAST", "PREFIX", PREFIX)
    except ResponseError:
        return False
    return True


def time_probe(ctl: Connection, sub: Connection, key: str) -> float | None:
    """Seconds from writing ``key`` to ``sub`` hearing of it; None if it did not in time."""
    wanted = key.encode()
    started = time.perf_counter()
    call(ctl, "SET", key, "1", "PX", 60_000)
    while (left := started + PROBE_WAIT - time.perf_counter()) > 0:
        if sub.can_read(left):
            keys = changed_keys(sub.read_response())
            if keys is not None and wanted in keys:
                return time.perf_counter() - started
    return None


def changed_keys(message: Any) -> list[bytes] | None:
    """The keys a pub/sub message says changed (none for other messages); None means all."""
    kind = message[0]
    if kind == b"pmessage":  # [pmessage, pattern, "__keyspace@<db>__:<key>", event]
        return [message[2].partition(b":")[2]]
    if kind == b"message" and message[1] == _INVALIDATE_CHANNEL:
        keys: list[bytes] | None = message[2]  # None: the server flushed everything
        return keys
    return []
