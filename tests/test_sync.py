"""Price sync against real Redis servers: each channel, restarts, refused CONFIG, many processes."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from decimal import Decimal
from itertools import count
from pathlib import Path

import orjson
import pytest
import redis
from conftest import RedisServer, free_port
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from cost_middleware.config import Settings
from cost_middleware.metrics import Metrics
from cost_middleware.pricing.book import PriceBook
from cost_middleware.pricing.channels import DOWN, KEYSPACE, POLL_ONLY, TRACKING, merged_flags
from cost_middleware.pricing.diagnosis import diagnose
from cost_middleware.pricing.listener import PriceSync
from cost_middleware.pricing.price import Price
from cost_middleware.pricing.redis_keys import (
    PROBE_KEY_PREFIX,
    VERSION_KEY,
    close_client,
    make_notifier,
    model_key,
    notify_change,
    parse_model_key,
)
from cost_middleware.pricing.redis_tier import RedisPriceTier
from cost_middleware.pricing.sources import MemoryPriceSource

# The multi-process harness is the benchmark's, so the test and the figures measure one thing.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_sync

Call = tuple[str, str] | None  # None: invalidate_all


class RecordingBook:
    """An Invalidatable that records every call (None for invalidate_all)."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._cond = threading.Condition()

    def invalidate(self, provider: str, model: str) -> None:
        with self._cond:
            self.calls.append((provider, model))
            self._cond.notify_all()

    def invalidate_all(self) -> None:
        with self._cond:
            self.calls.append(None)
            self._cond.notify_all()

    def wait_for(self, call: Call, after: int = 0, timeout: float = 5.0) -> bool:
        """Whether ``call`` happens (at index ``after`` or later) within ``timeout``."""
        with self._cond:
            return self._cond.wait_for(lambda: call in self.calls[after:], timeout)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@contextmanager
def running(book: RecordingBook, url: str, **kwargs: object) -> Iterator[PriceSync]:
    sync = PriceSync(book, url, **kwargs)  # type: ignore[arg-type]
    sync.start()
    try:
        assert wait_until(lambda: sync.channel != DOWN), "price sync never connected"
        yield sync
    finally:
        sync.stop()


def limited_url(server: RedisServer, *denied: str) -> str:
    return bench_sync.acl_user_url(server.url, *denied)


def flags_of(url: str) -> str:
    client = redis.Redis.from_url(url)
    try:
        return str(client.config_get("notify-keyspace-events")["notify-keyspace-events"])
    finally:
        client.close()


def report(name: str, result: bench_sync.Propagation) -> None:
    print()
    print(bench_sync.describe(name, result))


@pytest.fixture
def admin(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


# --- keys and flags ---------------------------------------------------------------------------

@pytest.mark.parametrize(("provider", "model"), [
    ("openai", "gpt-4o"),
    ("openrouter", "anthropic/claude-3.5-sonnet"),
    ("bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
    ("vertex", "claude-sonnet-4-5@20250929"),
    ("x", "*?[a-z]\\ {tag} \"quoted\" \r\nDEL everything; ünïcødé 模型"),
])
def test_model_key_round_trips_any_model_name(provider: str, model: str) -> None:
    assert parse_model_key(model_key(provider, model).encode()) == (provider, model)


@settings(max_examples=150, deadline=None)
@given(st.text(st.characters(exclude_categories=["Cs"], exclude_characters="/"), min_size=1),
       st.text(st.characters(exclude_categories=["Cs"]), min_size=1))
def test_model_key_round_trip_property(provider: str, model: str) -> None:
    assert parse_model_key(model_key(provider, model).encode()) == (provider, model)


@pytest.mark.parametrize(("provider", "model"), [("open/ai", "m"), ("", "m"), ("openai", "")])
def test_model_key_rejects_ambiguous_names(provider: str, model: str) -> None:
    with pytest.raises(ValueError):
        model_key(provider, model)


@pytest.mark.parametrize("key", [
    VERSION_KEY.encode(), (PROBE_KEY_PREFIX + "abc").encode(), b"cost_middleware:price:nomodel",
    b"cost_middleware:price:/m", b"cost_middleware:price:p/", b"cost_middleware:pricex:p/m",
    b"other:cost_middleware:price:p/m", b"",
])
def test_other_keys_are_not_model_keys(key: bytes) -> None:
    assert parse_model_key(key) is None


def test_undecodable_model_key_never_raises() -> None:
    assert parse_model_key(b"cost_middleware:price:p/\xff\xfe") == ("p", "\ufffd\ufffd")


@pytest.mark.parametrize(("current", "merged"), [
    ("", "K$g"), ("K", "K$g"), ("Ex", "ExK$g"), ("g$K", None), ("AK", None), ("AE", "AEK"),
    ("$K", "$Kg"), ("KEA", None), ("gK", "gK$"),
])
def test_merged_flags_add_only_what_is_missing(current: str, merged: str | None) -> None:
    assert merged_flags(current) == merged


# --- channels -----------------------------------------------------------------------------------

def test_change_reaches_every_process_within_100ms(redis_server: RedisServer) -> None:
    result = bench_sync.measure(redis_server.url, processes=4, changes=30)
    report("keyspace", result)
    assert result.channels == [KEYSPACE] * 4
    assert max(result.all()) < 0.1
    assert set("K$g") <= set(flags_of(redis_server.url))


def test_tracking_takes_over_where_config_is_refused(redis_server: RedisServer) -> None:
    url = limited_url(redis_server)
    result = bench_sync.measure(url, processes=4, changes=30, notify_url=redis_server.url)
    report("tracking", result)
    assert result.channels == [TRACKING] * 4
    assert max(result.all()) < 0.1
    assert flags_of(redis_server.url) == ""  # nothing could be merged, nothing was


@pytest.mark.parametrize("channel", [KEYSPACE, TRACKING])
def test_each_event_evicts_its_own_model(redis_server: RedisServer, admin: redis.Redis,
                                         channel: str) -> None:
    url = redis_server.url if channel == KEYSPACE else limited_url(redis_server)
    book = RecordingBook()
    with running(book, url) as sync:
        assert sync.channel == channel
        start = len(book.calls)
        hostile = "anthropic/claude *?[x] \r\n ünï"
        admin.set("unrelated:key", "1")
        admin.set(PROBE_KEY_PREFIX + "someone-else", "1")
        admin.set("cost_middleware:price:no-slash", "1")
        admin.set(model_key("openrouter", hostile), "rows")  # as the shared tier fills it
        assert book.wait_for(("openrouter", hostile), start)
        admin.delete(model_key("openai", "gpt-4o"))  # absent: no event
        admin.set(model_key("openai", "gpt-4o"), "rows", px=1)
        admin.delete(model_key("openai", "gpt-4o"))
        assert book.wait_for(("openai", "gpt-4o"), start)
        time.sleep(0.05)
        assert None not in book.calls[start:]  # nothing dropped the whole cache
        assert set(book.calls[start:]) == {("openrouter", hostile), ("openai", "gpt-4o")}
        admin.incr(VERSION_KEY)
        assert book.wait_for(None, start)


def test_flush_all_drops_everything_under_tracking(redis_server: RedisServer,
                                                   admin: redis.Redis) -> None:
    book = RecordingBook()
    with running(book, limited_url(redis_server)):
        start = len(book.calls)
        admin.flushall()
        assert book.wait_for(None, start)


@pytest.mark.parametrize("initial", ["Elx", "AKE", "KA"])
def test_flags_set_by_others_are_preserved(redis_server: RedisServer, initial: str) -> None:
    redis_server.stop()
    redis_server.start("--notify-keyspace-events", initial)
    before = flags_of(redis_server.url)
    book = RecordingBook()
    with running(book, redis_server.url) as sync:
        assert sync.channel == KEYSPACE
        after = flags_of(redis_server.url)
    assert set(before) <= set(after)
    if "A" in before and "K" in before:
        assert after == before  # nothing was missing: no write at all
    else:
        assert set("K$g") <= set(after)


def test_keyspace_is_used_where_config_is_refused_but_the_flags_are_set(
        redis_server: RedisServer) -> None:
    redis_server.stop()
    redis_server.start("--notify-keyspace-events", "K$g")
    book = RecordingBook()
    with running(book, limited_url(redis_server)) as sync:
        assert sync.channel == KEYSPACE  # found out by a probe event
        start = len(book.calls)
        notify_change(redis_server.url, "openai", "gpt-4o")
        assert book.wait_for(None, start)


def test_poll_only_where_neither_config_nor_tracking_is_allowed(redis_server: RedisServer) -> None:
    book = RecordingBook()
    with running(book, limited_url(redis_server, "config", "client"), poll_interval=0.1) as sync:
        assert sync.channel == POLL_ONLY
        start = len(book.calls)
        began = time.monotonic()
        notify_change(redis_server.url, "openai", "gpt-4o")
        assert book.wait_for(None, start)
        assert time.monotonic() - began < 0.1 + 0.2  # one poll interval, plus a loaded machine


# --- failures -----------------------------------------------------------------------------------

def test_restart_reconnects_drops_the_cache_once_and_propagates_again(
        redis_server: RedisServer) -> None:
    book = RecordingBook()
    metrics = Metrics(Settings())
    with running(book, redis_server.url, metrics=metrics, poll_interval=0.2) as sync:
        assert book.calls == [None]  # subscribing dropped whatever was cached before
        redis_server.stop()
        assert wait_until(lambda: sync.channel == DOWN)
        before = len(book.calls)
        redis_server.start()  # same port; notifications are off again (CONFIG SET is not saved)
        assert wait_until(lambda: sync.channel == KEYSPACE)
        time.sleep(0.5)  # more than two polls: any extra drop would show by now
        assert book.calls[before:] == [None]
        assert metrics.snapshot()["counters"]["sync.reconnects"] == 1
        assert set("K$g") <= set(flags_of(redis_server.url))
        notify_change(redis_server.url, "openai", "gpt-4o")
        assert book.wait_for(None, before + 1)


def test_redis_down_at_start_never_blocks_and_connects_later(redis_server: RedisServer) -> None:
    redis_server.stop()
    book = RecordingBook()
    metrics = Metrics(Settings())
    sync = PriceSync(book, redis_server.url, metrics)
    began = time.monotonic()
    sync.start()
    try:
        assert time.monotonic() - began < 0.05
        time.sleep(0.3)
        assert sync.channel == DOWN and book.calls == []
        redis_server.start()
        assert wait_until(lambda: sync.channel == KEYSPACE)
        assert "sync.reconnects" not in metrics.snapshot()["counters"]  # a first connection
    finally:
        sync.stop()
    assert sync.channel == DOWN


def test_a_change_made_while_the_subscriber_was_cut_off_is_seen(
        redis_server: RedisServer, admin: redis.Redis) -> None:
    book = RecordingBook()
    with running(book, redis_server.url) as sync:
        start = len(book.calls)
        admin.client_kill_filter(_type="pubsub")
        notify_change(admin, "openai", "gpt-4o")  # while the subscription is gone
        assert book.wait_for(None, start)  # the resubscription drops everything
        assert wait_until(lambda: sync.channel == KEYSPACE)


def test_version_poll_catches_a_change_no_event_announced(redis_server: RedisServer,
                                                          admin: redis.Redis) -> None:
    book = RecordingBook()
    with running(book, redis_server.url, poll_interval=0.1) as sync:
        assert sync.channel == KEYSPACE
        admin.config_set("notify-keyspace-events", "")  # switched off under us: events stop
        start = len(book.calls)
        began = time.monotonic()
        notify_change(admin, "openai", "gpt-4o")
        assert book.wait_for(None, start)
        assert time.monotonic() - began < 0.1 + 0.2
        assert ("openai", "gpt-4o") not in book.calls[start:]  # no event carried it


def test_a_tracking_connection_closed_by_the_server_is_noticed(redis_server: RedisServer,
                                                               admin: redis.Redis) -> None:
    book = RecordingBook()
    with running(book, limited_url(redis_server), poll_interval=0.1) as sync:
        assert sync.channel == TRACKING
        start = len(book.calls)
        # Kills our tracking (normal) connection, as a server `timeout` would when idle.
        admin.client_kill_filter(_type="normal", skipme=True)
        assert book.wait_for(None, start, timeout=2.0)  # re-established: everything dropped
        assert wait_until(lambda: sync.channel == TRACKING)
        after = len(book.calls)
        admin.set(model_key("openai", "gpt-4o"), "rows")
        assert book.wait_for(("openai", "gpt-4o"), after)


def test_a_failing_book_does_not_stop_invalidation(redis_server: RedisServer,
                                                   admin: redis.Redis,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    class Flaky(RecordingBook):
        def invalidate(self, provider: str, model: str) -> None:
            if model == "boom":
                raise RuntimeError("book bug")
            super().invalidate(provider, model)

    book = Flaky()
    with caplog.at_level(logging.ERROR, "cost_middleware"), running(book, redis_server.url):
        admin.set(model_key("openai", "boom"), "rows")
        admin.set(model_key("openai", "gpt-4o"), "rows")
        assert book.wait_for(("openai", "gpt-4o"))
    assert "invalidation failed" in caplog.text


def test_notify_with_redis_down_logs_once_and_returns(caplog: pytest.LogCaptureFixture,
                                                      redis_server: RedisServer) -> None:
    notify_change(redis_server.url, "openai", "gpt-4o")  # up: clears any earlier outage
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with caplog.at_level(logging.INFO, "cost_middleware"):
        notify_change(dead, "openai", "gpt-4o")
        notify_change(dead, "openai", "gpt-4o")
        notify_change(redis_server.url, "openai", "gpt-4o")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Redis failed" in warnings[0].getMessage()
    assert "Redis is back" in caplog.text


def test_notify_bumps_the_version_and_deletes_the_model_key(admin: redis.Redis,
                                                           redis_server: RedisServer) -> None:
    admin.set(model_key("openai", "gpt-4o"), "stale rows")
    notify = make_notifier(Settings(redis_url=redis_server.url))
    assert notify is not None
    notify("openai", "gpt-4o")
    notify("openai", "gpt-4o-mini")
    assert admin.get(VERSION_KEY) == b"2"
    assert admin.exists(model_key("openai", "gpt-4o")) == 0
    assert make_notifier(Settings()) is None
    with pytest.raises(ValueError):
        notify("open/ai", "gpt-4o")


def test_poll_interval_must_be_positive() -> None:
    with pytest.raises(ValueError):
        PriceSync(RecordingBook(), "redis://127.0.0.1:6379/0", poll_interval=0)


# --- doctor -------------------------------------------------------------------------------------

def test_diagnose_each_channel(redis_server: RedisServer) -> None:
    tracking = diagnose(limited_url(redis_server))
    assert tracking.reachable and tracking.channel == TRACKING and not tracking.config_allowed
    assert tracking.notify_keyspace_events is None
    assert tracking.probe_latency_ms is not None and tracking.probe_latency_ms < 100
    assert "parameter group" in tracking.hint
    poll = diagnose(limited_url(redis_server, "config", "client"))
    assert poll.channel == POLL_ONLY and poll.probe_latency_ms is None
    assert "CONFIG SET notify-keyspace-events K$g" in poll.hint
    keyspace = diagnose(redis_server.url)
    assert (keyspace.channel, keyspace.config_allowed, keyspace.notify_keyspace_events) == (
        KEYSPACE, True, "")  # as found; the merge made the channel live
    assert keyspace.probe_latency_ms is not None and keyspace.probe_latency_ms < 100
    assert not keyspace.cluster and "redis.conf" in keyspace.hint
    assert keyspace.ok and tracking.ok and not poll.ok
    assert keyspace.summary.startswith("keyspace channel, notify-keyspace-events was ''")
    again = diagnose(redis_server.url)  # the flags are in place now
    assert again.hint == "keyspace notifications are live" and again.notify_keyspace_events


def test_diagnose_unreachable() -> None:
    result = diagnose(f"redis://127.0.0.1:{free_port()}/0")
    assert (result.reachable, result.channel) == (False, DOWN)
    assert result.error and "unreachable" in result.hint
    assert not result.ok and result.summary.startswith("ConnectionError")


def test_machine_redis(machine_redis_url: str) -> None:
    result = diagnose(machine_redis_url)
    assert result.reachable and result.channel in (KEYSPACE, TRACKING)
    book = RecordingBook()
    with running(book, machine_redis_url) as sync:
        assert sync.channel in (KEYSPACE, TRACKING)
        model = f"test-{time.monotonic_ns()}"
        start = len(book.calls)
        client = redis.Redis.from_url(machine_redis_url)
        client.set(model_key("openai", model), "rows", px=1000)
        client.close()
        assert book.wait_for(("openai", model), start)


# --- cluster ------------------------------------------------------------------------------------

def start_cluster_node(server: RedisServer) -> int:
    """Start ``server`` in cluster mode; returns its cluster bus port."""
    # The bus port defaults to port + 10000, which a free port may push past 65535.
    bus = free_port()
    server.start("--cluster-enabled", "yes", "--cluster-port", str(bus),
                 "--cluster-config-file", f"nodes-{server.port}.conf",
                 "--cluster-node-timeout", "2000")
    return bus


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[RedisServer]]:
    """Three primaries in cluster mode on free ports."""
    import shutil
    import subprocess

    cli = shutil.which("redis-cli")
    servers = [RedisServer(tmp_path) for _ in range(3)]
    try:
        for server in servers:
            start_cluster_node(server)
        if cli is None:
            pytest.skip("redis-cli is not available")
        subprocess.run([cli, "--cluster", "create",
                        *(f"127.0.0.1:{s.port}" for s in servers), "--cluster-yes"],
                       check=True, capture_output=True, timeout=30)
        for server in servers:
            client = redis.Redis(port=server.port)
            assert wait_until(lambda: client.cluster("info")["cluster_state"] == "ok")  # noqa: B023
            client.close()
        yield servers
    finally:
        for server in servers:
            server.stop()


def test_cluster_subscribes_on_every_primary(cluster: list[RedisServer]) -> None:
    url = cluster[0].url
    book = RecordingBook()
    with running(book, url) as sync:
        assert sync.channel == KEYSPACE
        for server in cluster:
            assert set("K$g") <= set(flags_of(server.url))
        client = redis.cluster.RedisCluster.from_url(url)
        models = [f"model-{i}" for i in range(12)]  # spread over the slots of all three nodes
        assert len({client.get_node_from_key(model_key("openai", m)).name  # type: ignore[no-untyped-call]
                    for m in models}) == 3
        start = len(book.calls)
        for m in models:
            client.set(model_key("openai", m), "rows")
        for m in models:
            assert book.wait_for(("openai", m), start)
        notify_change(client, "openai", "model-0")  # the version key lives on one of them
        assert book.wait_for(None, start)
        close_client(client)
    report_cluster = diagnose(url)
    assert report_cluster.cluster and report_cluster.channel == KEYSPACE
    assert report_cluster.probe_latency_ms is not None


def test_cluster_new_primary_gets_subscribed(cluster: list[RedisServer], tmp_path: Path) -> None:
    book = RecordingBook()
    new = RedisServer(tmp_path)
    bus = start_cluster_node(new)
    nodes = [redis.Redis(port=s.port) for s in [*cluster, new]]
    try:
        with running(book, cluster[0].url, poll_interval=0.1) as sync:
            nodes[0].cluster("meet", "127.0.0.1", new.port, bus)
            new_id = nodes[-1].cluster("myid").decode()
            assert wait_until(lambda: all(new_id in str(n.cluster("nodes")) for n in nodes)
                              and nodes[-1].cluster("info")["cluster_state"] == "ok")
            # A clean migration of the version key's slot: the poll meets a MOVED, no error.
            slot = key_slot(VERSION_KEY.encode())
            old_id = next(primary[2].decode() for start, end, primary, *_
                          in nodes[0].cluster("slots") if start <= slot <= end)
            owner = next(n for n in nodes if n.cluster("myid").decode() == old_id)
            nodes[-1].cluster("setslot", slot, "importing", old_id)
            owner.cluster("setslot", slot, "migrating", new_id)
            for node in [nodes[-1], owner, *nodes]:
                node.cluster("setslot", slot, "node", new_id)
            assert wait_until(lambda: set("K$g") <= set(flags_of(new.url)))
            assert wait_until(lambda: sync.channel == KEYSPACE)
            tag = next(t for t in count() if key_slot(f"{{{t}}}".encode()) == slot)
            model = f"model-{{{tag}}}"
            start = len(book.calls)
            nodes[-1].set(model_key("openai", model), "rows")  # an event only the new node emits
            assert book.wait_for(("openai", model), start)
    finally:
        for node in nodes:
            node.close()
        new.stop()


# --- the shared tier ----------------------------------------------------------------------------

def price(model: str, output: str = "10.00", version: int = 1,
          provider: str = "openai") -> Price:
    return Price.from_catalog({
        "provider": provider, "model": model, "input": "2.50", "cached_input": "1.25",
        "output": output, "aliases": [f"{model}-latest"], "version": version,
        "tiers": [{"above_input_tokens": 200000, "input": "5.000000001", "output": "20"}],
        "effective_from": "2024-05-13T00:00:00Z"})


def test_tier_fills_once_and_serves_every_process_exactly(redis_server: RedisServer,
                                                          admin: redis.Redis) -> None:
    later = Price.from_catalog({**price("gpt-4o").to_catalog(), "output": "9.00", "version": 2,
                                "effective_from": "2025-01-01T00:00:00Z"})
    source = MemoryPriceSource([price("gpt-4o"), later])
    first = RedisPriceTier(source, redis_server.url, ttl=300)
    keys = [("openai", "gpt-4o"), ("openai", "gpt-4o-2024-08-06")]
    rows = first.load_models(keys)
    assert sorted(p.version for p in rows) == [1, 2] and source.queries == 1
    assert 299_000 < admin.pttl(model_key("openai", "gpt-4o")) <= 300_000
    assert admin.get(model_key("openai", "gpt-4o-2024-08-06")) == b"[]"  # unknown: cached too
    other = RedisPriceTier(source, redis_server.url, ttl=300)  # as another process would
    assert sorted(other.load_models(keys), key=lambda p: p.version) == sorted(
        rows, key=lambda p: p.version)
    assert source.queries == 1  # answered from Redis, exact to the last digit
    first.close()
    other.close()


def test_tier_rereads_after_a_change(redis_server: RedisServer) -> None:
    source = MemoryPriceSource([price("gpt-4o")])
    tier = RedisPriceTier(source, redis_server.url, ttl=300)
    assert tier.load_models([("openai", "gpt-4o")])[0].output == Decimal("10.00")
    source.replace([price("gpt-4o", "12.00", 2)])
    notify_change(redis_server.url, "openai", "gpt-4o")
    assert tier.load_models([("openai", "gpt-4o")])[0].output == Decimal("12.00")
    tier.close()


def test_tier_drops_a_fill_that_raced_with_a_change(redis_server: RedisServer,
                                                    admin: redis.Redis) -> None:
    class CommitDuringRead(MemoryPriceSource):
        """The read sees the old row; the change commits and notifies before the fill lands."""

        def load_models(self, keys: Collection[tuple[str, str]]) -> list[Price]:
            rows = super().load_models(keys)
            self.replace([price("gpt-4o", "12.00", 2)])
            notify_change(redis_server.url, "openai", "gpt-4o")
            return rows

    tier = RedisPriceTier(CommitDuringRead([price("gpt-4o")]), redis_server.url, ttl=300)
    assert tier.load_models([("openai", "gpt-4o")])[0].output == Decimal("10.00")
    assert admin.exists(model_key("openai", "gpt-4o")) == 0  # the stale fill was taken back
    tier.close()


def test_tier_falls_through_on_redis_trouble(caplog: pytest.LogCaptureFixture,
                                             redis_server: RedisServer,
                                             admin: redis.Redis) -> None:
    source = MemoryPriceSource([price("gpt-4o")])
    dead = RedisPriceTier(source, f"redis://127.0.0.1:{free_port()}/0", ttl=300)
    with caplog.at_level(logging.WARNING, "cost_middleware"):
        assert dead.load_models([("openai", "gpt-4o")]) == [price("gpt-4o")]
        began = time.monotonic()
        assert dead.load_models([("openai", "gpt-4o")]) == [price("gpt-4o")]
        assert time.monotonic() - began < 0.01  # Redis is left alone for a while
    assert len(caplog.records) == 1
    admin.set(model_key("openai", "gpt-4o"), b"{not json")
    admin.set(model_key("openai", "gpt-4o-mini"), orjson.dumps([price("gpt-4o").to_catalog()]))
    live = RedisPriceTier(MemoryPriceSource([price("gpt-4o"), price("gpt-4o-mini")]),
                          redis_server.url, ttl=300)
    got = live.load_models([("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("a/b", "m")])
    assert sorted(p.model for p in got) == ["gpt-4o", "gpt-4o-mini"]  # bad values: from source
    assert admin.get(model_key("openai", "gpt-4o")) == b"{not json"  # left to whoever wrote it
    live.close()
    dead.close()


def test_price_book_sees_a_change_in_time_through_tier_and_sync(redis_server: RedisServer) -> None:
    source = MemoryPriceSource([price("gpt-4o")])
    book = PriceBook(RedisPriceTier(source, redis_server.url, ttl=300), ttl=300)
    sync = PriceSync(book, redis_server.url)
    sync.start()
    try:
        assert wait_until(lambda: sync.channel == KEYSPACE)
        assert book.lookup("openai", "gpt-4o-2024-08-06") == price("gpt-4o")  # suffix-matched
        assert book.lookup("openai", "gpt-4o-latest") == price("gpt-4o")  # alias
        # Another process changes the price: database first, then the notification.
        source.replace([price("gpt-4o", "12.00", 2)])
        changed = time.monotonic()
        notify_change(redis_server.url, "openai", "gpt-4o")
        # Both names, together: a delayed event of the first fills may already have evicted
        # one of them, so seeing one new price does not mean the change was applied.
        new = price("gpt-4o", "12.00", 2)
        assert wait_until(lambda: book.lookup("openai", "gpt-4o-2024-08-06") == new
                          and book.lookup("openai", "gpt-4o-latest") == new, timeout=1.0)
        assert time.monotonic() - changed < 0.1
    finally:
        sync.stop()
        book.close()


def test_tier_on_a_cluster(cluster: list[RedisServer]) -> None:
    source = MemoryPriceSource([price(f"model-{i}") for i in range(12)])
    tier = RedisPriceTier(source, cluster[0].url, ttl=300)
    keys = [("openai", f"model-{i}") for i in range(12)]
    assert len(tier.load_models(keys)) == 12 and source.queries == 1
    assert len(tier.load_models(keys)) == 12 and source.queries == 1
    notify_change(cluster[0].url, "openai", "model-3")
    assert len(tier.load_models(keys)) == 12 and source.queries == 2
    tier.close()
