"""The shared price tier between each process's cache and the database: one Redis key per model.

``RedisPriceTier`` wraps another :class:`~cost_middleware.pricing.sources.PriceSource`. A model's
rows live at :func:`~cost_middleware.pricing.redis_keys.model_key` as a JSON list of catalog entries
(``[]`` for a model the source does not have, so unknown names cost no query either); a miss
reads the inner source and fills the key for ``ttl`` seconds. Only model rows are shared:
aliases and model names go to the inner source, whose answers the book caches.

A price change deletes the model's key after bumping the version key (``notify_change``). A fill
that read the database before such a commit could land after the delete, so it reads the version
before the database and again after writing, and deletes its own write when the two differ.

Redis trouble never fails a lookup: it falls through to the inner source, and Redis is left
alone for a few seconds before being tried again, so a dead server costs no timeout per lookup.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

import orjson
from redis.exceptions import RedisError

from cost_middleware.pricing.price import Price
from cost_middleware.pricing.redis_keys import VERSION_KEY, OutageLog, SharedClient, model_key
from cost_middleware.pricing.sources import Key, PriceSource

#: Seconds Redis is bypassed after an error.
RETRY_AFTER = 5.0


class RedisPriceTier:
    """A :class:`PriceSource` that shares model rows between processes through Redis."""

    def __init__(self, inner: PriceSource, redis_url: str, ttl: float) -> None:
        if not ttl > 0:
            raise ValueError(f"ttl must be greater than zero: {ttl!r}")
        self.inner = inner
        self._client = SharedClient(redis_url)  # connects on first use, not at start
        self._ttl_ms = max(1, round(ttl * 1000))
        self._outage = OutageLog("shared price tier")
        self._bypass_until = 0.0

    def load_models(self, keys: Collection[Key]) -> list[Price]:
        wanted = list(dict.fromkeys(keys))
        named = {key: name for key in wanted if (name := _redis_key(key)) is not None}
        if not named or time.monotonic() < self._bypass_until:
            return self.inner.load_models(wanted)
        try:
            pipe = self._client.get().pipeline(transaction=False)
            pipe.get(VERSION_KEY)  # before the database read: see the module doc
            for name in named.values():
                pipe.get(name)
            version, *values = pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return self.inner.load_models(wanted)
        self._outage.recovered()
        prices: list[Price] = []
        missing = [key for key in wanted if key not in named]
        for key, raw in zip(named, values, strict=True):
            rows = None if raw is None else _decode(raw, key)
            if rows is None:
                missing.append(key)
            else:
                prices.extend(rows)
        if missing:
            fresh = self.inner.load_models(missing)
            prices.extend(fresh)
            self._fill({key: named[key] for key in missing if key in named}, fresh, version)
        return prices

    def _fill(self, names: dict[Key, str], fresh: list[Price], version: Any) -> None:
        if not names:
            return
        rows: dict[Key, list[dict[str, Any]]] = {key: [] for key in names}
        for price in fresh:
            entries = rows.get((price.provider, price.model))
            if entries is not None:
                entries.append(price.to_catalog())
        try:
            client = self._client.get()
            pipe = client.pipeline(transaction=False)
            for key, name in names.items():
                # NX: of processes racing to fill, only the first writes (and notifies); a value
                # this version cannot read (a newer one may have written it) is left alone.
                pipe.set(name, orjson.dumps(rows[key]), px=self._ttl_ms, nx=True)
            pipe.execute()
            if client.get(VERSION_KEY) != version:  # a change committed meanwhile
                pipe = client.pipeline(transaction=False)
                for name in names.values():
                    pipe.delete(name)
                pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        self._bypass_until = time.monotonic() + RETRY_AFTER
        self._outage.failed(exc)

    def aliases(self, provider: str) -> dict[str, str]:
        return self.inner.aliases(provider)

    def models(self, provider: str) -> set[str]:
        return self.inner.models(provider)

    def close(self) -> None:
        self._client.close()
        self.inner.close()


def _redis_key(key: Key) -> str | None:
    """The model's key, or None for a name no key can hold unambiguously (read from the source)."""
    try:
        return model_key(*key)
    except ValueError:
        return None


def _decode(raw: bytes, key: Key) -> list[Price] | None:
    """The rows stored for ``key``; None when the value is not what we write (then refilled)."""
    try:
        entries = orjson.loads(raw)
        if not isinstance(entries, list):
            return None
        prices = [Price.from_catalog(entry) for entry in entries]
    except ValueError:  # orjson.JSONDecodeError and PriceError are ValueErrors
        return None
    if any((p.provider, p.model) != key for p in prices):
        return None
    return prices
