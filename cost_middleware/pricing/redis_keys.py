"""Our Redis keys and how to reach them: key names, clients, and the notice of a price change.

A change commits to the database, then :func:`notify_change` bumps the version key and deletes
the model's key; the shared price tier (``redis_tier``) fills model keys, and every process's
listener (``listener``) hears of both. See docs/CACHING.md.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol, TypeAlias

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry

from cost_middleware.config import Settings

log = logging.getLogger("cost_middleware")

#: Every key of ours starts with this (the version key too); tracking watches exactly this prefix.
PREFIX = "cost_middleware:price"
#: ``cost_middleware:price:{provider}/{model}``: one model's rows in the shared price tier.
MODEL_KEY_PREFIX = PREFIX + ":"
#: Bumped by every change; polling it is the backstop for lost notifications.
VERSION_KEY = "cost_middleware:prices:version"
#: Keys that prove a channel works end to end: under PREFIX, never a model key.
PROBE_KEY_PREFIX = "cost_middleware:prices:probe:"

#: Connect and command timeout: a hung server must not hold a thread for long.
TIMEOUT = 2.0

Client: TypeAlias = "redis.Redis | RedisCluster"

_MODEL_KEY_PREFIX_B = MODEL_KEY_PREFIX.encode()


class ClusterClient(Protocol):
    """The part of redis-py's (untyped) cluster client used here."""

    def get_primaries(self) -> list[ClusterNode]: ...

    def get_node_from_key(self, key: str) -> ClusterNode: ...

    def get_nodes(self) -> list[ClusterNode]: ...


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
    options: dict[str, Any] = {"socket_timeout": TIMEOUT, "socket_connect_timeout": TIMEOUT,
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
        cluster: ClusterClient = client
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
