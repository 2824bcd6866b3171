"""The process's price cache: matching done once, exact costs, invalidation by price row.

L1 is a ``cachetools.TTLCache`` under one lock, keyed by what the extractor reported
(``(provider, model)``). An entry holds the whole history of the price row the name resolved to
(so every ``created_at`` is priced from the same entry), or nothing for an unknown model
(negative caching: a repeated unknown model costs no source query). Reads use ``cache[key]`` in
a try: it is about three times faster than ``.get`` and, like every TTLCache read, it updates
the LRU order, so it needs the lock too.

Invalidation: each entry records which ``(price provider, name)`` pairs its resolution looked at
(every candidate name, the row it found, and whether it consulted a provider's aliases: those
its rows declare and the undated names of its dated rows); a reverse index maps those pairs to
cache keys, so ``invalidate(provider, model)`` evicts exactly the entries a change of that row
can affect: exact, alias and suffix-stripped lookups, and unknown-model entries the new row may
now price. A resolution that raced with an invalidation
is returned but not cached.

The first sighting in a process of each model no row prices is logged once, as a WARNING naming
the ``prices set`` command that prices it (the names sanitized; at most
:data:`SIGHTINGS_LOGGED` models, then only the ``price.unknown_model`` count grows).

A source that fails (database down) leaves the records unpriced, is counted
(``price.source_error``) and is retried on the next lookup: failures are never cached.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from cachetools import TTLCache

from cost_middleware.pricing.commands import loggable, set_command
from cost_middleware.pricing.matching import candidates, dated_aliases
from cost_middleware.pricing.price import Price, in_effect
from cost_middleware.pricing.sources import CatalogFilePriceSource, Key, PriceSource
from cost_middleware.records import CostRecord
from cost_middleware.usage.model import Usage
from cost_middleware.usage.service_tier import KNOWN as KNOWN_TIERS
from cost_middleware.usage.service_tier import first_unknown
from cost_middleware.utc import as_utc, utcnow

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from cost_middleware.config import Settings
    from cost_middleware.metrics import Metrics

log = logging.getLogger("cost_middleware")

#: Stands for "the aliases of this provider" in an entry's dependencies (no model is named so).
_ALIASES = "\x00aliases"
#: Reverse-index entries per cache slot before the index is rebuilt from the live entries.
_DEPENDENTS_PER_SLOT = 16
#: Distinct unknown models a process logs; later ones are only counted.
SIGHTINGS_LOGGED = 1000

_sighted: set[Key] = set()
_sighted_lock = threading.Lock()


class _Entry:
    """What one ``(provider, model)`` resolved to: a price history, or nothing (unknown)."""

    __slots__ = ("deps", "history", "latest", "latest_ts")

    def __init__(self, history: tuple[Price, ...], deps: frozenset[Key]) -> None:
        self.history = history
        self.deps = deps
        self.latest = history[-1] if history else None
        self.latest_ts = history[-1].effective_from.timestamp() if history else 0.0

    def price_at(self, at: datetime) -> Price | None:
        """The row in effect at ``at``: the latest ``effective_from`` not after it."""
        latest = self.latest
        if latest is not None and latest.effective_from <= at:  # the usual case
            return latest
        return in_effect(self.history, at)



class PriceBook:
    """Prices usage exactly from a :class:`PriceSource`, through the process cache."""

    def __init__(
        self,
        source: PriceSource,
        *,
        ttl: float = 300.0,
        maxsize: int = 4096,
        metrics: Metrics | None = None,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.metrics = metrics
        self._lock = threading.Lock()
        self._cache: TTLCache[Key, _Entry] = TTLCache(maxsize, ttl, timer=timer)
        self._aliases: TTLCache[str, dict[str, str]] = TTLCache(
            max(64, maxsize // 16), ttl, timer=timer)
        self._dependents: dict[Key, set[Key]] = {}
        self._max_dependents = maxsize * _DEPENDENTS_PER_SLOT
        #: Bumped by every invalidation; a resolution only caches if it saw no bump.
        self._epoch = 0
        self._source_failing = False
        #: Log the first sighting of each unknown model (a command that reports them says so).
        self.log_unknown_models = True

    @classmethod
    def from_settings(
        cls, settings: Settings, engine: Engine | None, metrics: Metrics | None = None,
    ) -> PriceBook:
        """The book the settings describe.

        With a prices file: that file (re-read when it changes, which drops this cache). Else
        the SQL table, behind the shared Redis tier when a Redis URL is set. A file is never
        shared through Redis: its changes reach no other process's notifications.
        """
        if settings.prices_file is not None:
            file_source = CatalogFilePriceSource(settings.prices_file)
            book = cls(file_source, ttl=settings.cache_ttl, maxsize=settings.cache_size,
                       metrics=metrics)
            file_source.on_reload = book.invalidate_all
            return book
        if engine is None:
            raise ValueError("PriceBook needs a database engine or a prices file")
        from cost_middleware.pricing.sql_source import SQLPriceSource

        source: PriceSource = SQLPriceSource(engine)
        if settings.redis_url is not None:
            from cost_middleware.pricing.redis_tier import RedisPriceTier

            source = RedisPriceTier(source, settings.redis_url, ttl=settings.cache_ttl)
        return cls(source, ttl=settings.cache_ttl, maxsize=settings.cache_size, metrics=metrics)

    # -- lookups ---------------------------------------------------------------------------

    def lookup(self, provider: str, model: str, at: datetime | None = None) -> Price | None:
        """The price of ``model`` in effect at ``at`` (default now), or None when unknown."""
        key = (provider, model)
        with self._lock:
            try:
                entry: _Entry | None = self._cache[key]
            except KeyError:
                entry = None
        if entry is None:
            if self.metrics is not None:
                self.metrics.incr("price.cache.miss")
            entry = self._resolve(key)
            if entry is None:
                return None
        elif self.metrics is not None:
            self.metrics.incr("price.cache.hit")
        if at is None:
            # Wall-clock seconds suffice unless the newest row starts in the future.
            latest = entry.latest
            price = latest if latest is not None and time.time() >= entry.latest_ts \
                else entry.price_at(utcnow())
        else:
            price = entry.price_at(as_utc(at))
        if price is None and self.metrics is not None:
            self.metrics.incr("price.unknown_model")
        return price

    def cost(
        self, usage: Usage, model: str, provider: str, at: datetime | None = None,
        service_tier: str | None = None,
    ) -> Decimal | None:
        """Exact USD cost of ``usage`` (billed at ``service_tier``), or None when the model
        has no price."""
        price = self.lookup(provider, model, at)
        return None if price is None else price.cost(usage, service_tier)

    def price_many(self, records: Sequence[CostRecord]) -> None:
        """Fill ``cost_usd`` and ``price_version`` of each record, at its ``created_at``.

        A record without usage, or whose model has no price (then counted as
        ``price.unknown_model``), gets ``cost_usd = None``; so does one whose usage holds
        non-integer, negative or inconsistent counts (usage no reader would have passed,
        handed to ``CostTracker.record``; counted as ``price.bad_usage``). A service tier we
        do not know is priced at standard rates, counted as ``price.unknown_service_tier`` and
        logged the first time. Never raises for a record's content.
        """
        start = time.perf_counter()
        memo: dict[Key, _Entry | None] = {}
        lookups = misses = unknown = bad = odd_tiers = 0
        for record in records:
            record.cost_usd = None
            record.price_version = None
            usage, model = record.usage, record.model
            if usage is None:
                continue
            if not model:
                unknown += 1
                continue
            lookups += 1
            key = (record.provider, model)
            try:
                entry = memo[key]
            except KeyError:
                with self._lock:
                    try:
                        entry = self._cache[key]
                    except KeyError:
                        entry = None
                if entry is None:
                    misses += 1
                    entry = self._resolve(key)
                memo[key] = entry
            if entry is None:  # the source failed: leave it for a later reprice
                continue
            at = record.created_at
            if at.tzinfo is None:  # as_utc inlined: this runs once per record
                at = at.replace(tzinfo=UTC)
            price = entry.price_at(at)
            if price is None:
                unknown += 1
                continue
            try:
                # Usage the readers would have refused (a record built by hand and handed to
                # CostTracker.record): negative counts, or cache subsets above all input.
                tokens, cached = usage.input_tokens, usage.cached_input_tokens
                writes = usage.cache_write_input_tokens
                if (tokens | cached | writes | usage.output_tokens) < 0 or cached + writes > tokens:
                    raise ValueError("impossible usage")
                tier = record.service_tier
                if tier is not None and tier not in KNOWN_TIERS:
                    odd_tiers += 1
                    name = loggable(str(tier))
                    if first_unknown(name):
                        log.warning("cost_middleware: unknown service tier %r (first seen on "
                                    "%s/%s): priced at standard rates", name,
                                    loggable(record.provider), loggable(model))
                record.cost_usd = price.cost(usage, tier)
            except (TypeError, ValueError, ArithmeticError):
                bad += 1
                continue
            record.price_version = price.version
        metrics = self.metrics
        if metrics is not None:
            if lookups > misses:
                metrics.incr("price.cache.hit", lookups - misses)
            if misses:
                metrics.incr("price.cache.miss", misses)
            if unknown:
                metrics.incr("price.unknown_model", unknown)
            if bad:
                metrics.incr("price.bad_usage", bad)
            if odd_tiers:
                metrics.incr("price.unknown_service_tier", odd_tiers)
            metrics.timing("price.duration", (time.perf_counter() - start) * 1000.0)

    # -- invalidation (called from the sync thread too) --------------------------------------

    def invalidate(self, provider: str, model: str) -> None:
        """Evict every entry that a change of the ``(provider, model)`` price row may affect.

        ``provider`` is the row's (price) provider, e.g. ``anthropic`` for a Vertex lookup.
        """
        with self._lock:
            self._epoch += 1
            keys = self._dependents.pop((provider, model), set())
            keys |= self._dependents.pop((provider, _ALIASES), set())
            for key in keys:
                self._cache.pop(key, None)
            self._aliases.pop(provider, None)

    def invalidate_all(self) -> None:
        """Drop the whole cache (e.g. after a missed notification)."""
        with self._lock:
            self._epoch += 1
            self._cache.clear()
            self._aliases.clear()
            self._dependents.clear()

    def close(self) -> None:
        self.source.close()

    # -- internals -------------------------------------------------------------------------

    def _resolve(self, key: Key) -> _Entry | None:
        """Match ``key`` against the source and cache the outcome; None if the source failed."""
        epoch = self._epoch
        try:
            entry = self._match(key, epoch)
        except Exception as exc:  # a failing source must never break pricing for good
            self._source_failed(exc)
            return None
        if self._source_failing:
            self._source_failing = False
            log.info("cost_middleware: the price source answers again")
        with self._lock:
            if self._epoch == epoch:
                self._cache[key] = entry
                self._index(key, entry)
        if entry.latest is None and key[1] and self.log_unknown_models:
            _first_sighting(key)
        return entry

    def _match(self, key: Key, epoch: int) -> _Entry:
        pairs = candidates(*key)
        found = _histories(self.source.load_models(pairs))
        deps: set[Key] = set(pairs)
        for provider, name in pairs:
            history = found.get((provider, name))
            if history:
                return _Entry(history, frozenset(deps))
            deps.add((provider, _ALIASES))
            target = self._provider_aliases(provider, epoch).get(name)
            if target is not None:
                history = found.get((provider, target)) or _histories(
                    self.source.load_models([(provider, target)])).get((provider, target))
                if history:
                    deps.add((provider, target))
                    return _Entry(history, frozenset(deps))
        return _Entry((), frozenset(deps))

    def _provider_aliases(self, provider: str, epoch: int) -> dict[str, str]:
        with self._lock:
            try:
                return self._aliases[provider]
            except KeyError:
                pass
        # An alias a row declares wins over an undated name of a dated row.
        aliases = {**dated_aliases(self.source.models(provider)), **self.source.aliases(provider)}
        with self._lock:
            if self._epoch == epoch:
                self._aliases[provider] = aliases
        return aliases

    def _index(self, key: Key, entry: _Entry) -> None:
        """Record ``entry``'s dependencies (lock held); drop the ones of evicted entries."""
        dependents = self._dependents
        for dep in entry.deps:
            dependents.setdefault(dep, set()).add(key)
        if len(dependents) > self._max_dependents:
            dependents.clear()
            for live_key in list(self._cache):
                try:
                    live = self._cache[live_key]
                except KeyError:
                    continue
                for dep in live.deps:
                    dependents.setdefault(dep, set()).add(live_key)

    def _source_failed(self, exc: Exception) -> None:
        if self.metrics is not None:
            self.metrics.incr("price.source_error")
        if not self._source_failing:
            self._source_failing = True
            log.warning("cost_middleware: price source failed (%s); records stay unpriced "
                        "until it answers", type(exc).__name__)


def _first_sighting(key: Key) -> None:
    """Log the first time this process meets ``key`` without a price (a cache miss only)."""
    with _sighted_lock:
        if key in _sighted or len(_sighted) > SIGHTINGS_LOGGED:
            return
        _sighted.add(key)
        full = len(_sighted) > SIGHTINGS_LOGGED
    if full:
        log.warning("cost_middleware: %d unknown models logged; more are only counted "
                    "(price.unknown_model)", SIGHTINGS_LOGGED)
        return
    provider, model = loggable(key[0]), loggable(key[1])
    log.warning("cost_middleware: unknown model %s from provider %s: its records are stored "
                "unpriced; price them with `%s`, then `cost-middleware reprice --since 1h "
                "--only-unpriced`", model, provider, set_command(provider, model))


def _histories(prices: list[Price]) -> dict[Key, tuple[Price, ...]]:
    grouped: dict[Key, list[Price]] = {}
    for price in prices:
        grouped.setdefault((price.provider, price.model), []).append(price)
    return {k: tuple(sorted(v, key=lambda p: p.effective_from)) for k, v in grouped.items()}
