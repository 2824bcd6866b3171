"""What ``cost-middleware doctor`` says about price sync: the live channel, timed by a probe."""

from __future__ import annotations

from dataclasses import dataclass

from redis.cluster import RedisCluster
from redis.exceptions import RedisError

from cost_middleware.pricing.channels import (
    CHANNELS,
    DOWN,
    KEYSPACE,
    NEEDED_FLAGS,
    POLL_ONLY,
    PROBE_WAIT,
    TRACKING,
    Listener,
    merged_flags,
    nodes_of,
    open_listener,
    time_probe,
)
from cost_middleware.pricing.redis_keys import Client, close_client, open_client

_ENABLE_HINT = (
    "run `CONFIG SET notify-keyspace-events K$g` (and put `notify-keyspace-events K$g` in "
    "redis.conf so it survives restarts); on managed Redis, where CONFIG is blocked, set the "
    "notify-keyspace-events parameter to include K$g: ElastiCache: the cluster's parameter group; "
    "Memorystore: `gcloud redis instances update --update-redis-config "
    "notify-keyspace-events=K$g`; Azure Cache for Redis: Advanced settings, keyspace notifications"
)


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
    listeners: list[Listener] = []
    client: Client | None = None
    try:
        client = open_client(redis_url)
        latencies: list[float | None] = []
        for node, probe_key in nodes_of(redis_url, client):
            listener = open_listener(node, probe_key)
            listeners.append(listener)
            if listener.sub is not None and listener.ctl is not None:
                latencies.append(time_probe(listener.ctl, listener.sub, probe_key))
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


def _hint(listener: Listener, latencies: list[float | None], latency: float | None) -> str:
    if listener.channel != POLL_ONLY and latency is None:
        return (f"the {listener.channel} channel was set up but a probe change did not arrive "
                f"within {PROBE_WAIT * 1000:.0f} ms on {latencies.count(None)} node(s): "
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
