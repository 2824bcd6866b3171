"""Where prices come from: the :class:`PriceSource` protocol and its in-process sources.

The SQL source lives in :mod:`cost_middleware.pricing.sql_source` (it imports SQLAlchemy).
A source returns every row of a model (its whole history); choosing the row in effect at a
record's ``created_at`` is the book's job.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from cost_middleware.pricing.catalog import read_catalog
from cost_middleware.pricing.price import Price

log = logging.getLogger("cost_middleware")

Key = tuple[str, str]


class PriceSource(Protocol):
    """The price rows of record (SQL table, catalog file, memory), queried on cache misses."""

    def load_models(self, keys: Collection[Key]) -> list[Price]:
        """Every row (all effective dates) of each ``(provider, model)`` in ``keys``."""
        ...

    def aliases(self, provider: str) -> dict[str, str]:
        """Alias → model for the rows of ``provider`` (a later row wins a shared alias)."""
        ...

    def models(self, provider: str) -> set[str]:
        """The model names of ``provider``'s rows."""
        ...

    def close(self) -> None:
        """Release connections or handles."""
        ...


class PriceIndex:
    """Prices held in memory, indexed for the :class:`PriceSource` queries."""

    def __init__(self, prices: Iterable[Price]) -> None:
        self._by_key: defaultdict[Key, list[Price]] = defaultdict(list)
        self._aliases: defaultdict[str, dict[str, str]] = defaultdict(dict)
        self._models: defaultdict[str, set[str]] = defaultdict(set)
        # Oldest first, so a later row wins a shared alias (ties: in (provider, model) order).
        ordered = sorted(prices, key=lambda p: (p.effective_from, p.provider, p.model))
        for price in ordered:
            self._by_key[(price.provider, price.model)].append(price)
            self._models[price.provider].add(price.model)
            for alias in price.aliases:
                self._aliases[price.provider][alias] = price.model
        self.size = len(ordered)

    def load_models(self, keys: Collection[Key]) -> list[Price]:
        return [p for key in dict.fromkeys(keys) for p in self._by_key.get(key, ())]

    def aliases(self, provider: str) -> dict[str, str]:
        return dict(self._aliases.get(provider, {}))

    def models(self, provider: str) -> set[str]:
        return set(self._models.get(provider, ()))


class MemoryPriceSource:
    """Prices in memory (tests, embedding); ``queries`` counts the lookups it answered."""

    def __init__(self, prices: Iterable[Price] = ()) -> None:
        self._index = PriceIndex(prices)
        self._lock = threading.Lock()
        self.queries = 0

    def replace(self, prices: Iterable[Price]) -> None:
        """Swap in a new set of prices (the book must be invalidated, as after any change)."""
        index = PriceIndex(prices)
        with self._lock:
            self._index = index

    def _count(self) -> PriceIndex:
        with self._lock:
            self.queries += 1
            return self._index

    def load_models(self, keys: Collection[Key]) -> list[Price]:
        return self._count().load_models(keys)

    def aliases(self, provider: str) -> dict[str, str]:
        return self._count().aliases(provider)

    def models(self, provider: str) -> set[str]:
        return self._count().models(provider)

    def close(self) -> None:
        pass


class CatalogFilePriceSource:
    """A catalog file, re-read when its modification time or size changes.

    The file is checked at most once per ``check_interval`` seconds. A file that became invalid
    is logged and the last good prices are kept; a file that is invalid at start raises
    :class:`~cost_middleware.pricing.price.PriceError` (or ``OSError``). Rows without a
    ``version`` are numbered after the highest version the file states, in file order.
    ``on_reload`` (e.g. ``PriceBook.invalidate_all``) is called after a reload.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        check_interval: float = 1.0,
        timer: Callable[[], float] = time.monotonic,
        on_reload: Callable[[], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.on_reload = on_reload
        self._interval = check_interval
        self._timer = timer
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._index = self._read()
        self._checked = timer()

    def _stat(self) -> tuple[int, int]:
        st = self.path.stat()
        return (st.st_mtime_ns, st.st_size)

    def _read(self) -> PriceIndex:
        prices = read_catalog(self.path)
        top = max((p.version for p in prices), default=0)
        numbered = []
        for price in prices:
            if price.version == 0:
                top += 1
                price = replace(price, version=top)
            numbered.append(price)
        return PriceIndex(numbered)

    def _current(self) -> PriceIndex:
        now = self._timer()
        if now - self._checked < self._interval:
            return self._index
        reloaded = False
        with self._lock:
            if now - self._checked >= self._interval:
                self._checked = now
                reloaded = self._reload_if_changed()
        if reloaded and self.on_reload is not None:
            self.on_reload()
        return self._index

    def _reload_if_changed(self) -> bool:
        try:
            stamp = self._stat()
            if stamp == self._stamp:
                return False
            index = self._read()
        except (OSError, ValueError) as exc:  # PriceError is a ValueError
            log.warning("cost_middleware: keeping the last good prices; cannot reload %s: %s",
                        self.path, exc)
            return False
        self._stamp, self._index = stamp, index
        log.info("cost_middleware: reloaded %d prices from %s", index.size, self.path)
        return True

    def load_models(self, keys: Collection[Key]) -> list[Price]:
        return self._current().load_models(keys)

    def aliases(self, provider: str) -> dict[str, str]:
        return self._current().aliases(provider)

    def models(self, provider: str) -> set[str]:
        return self._current().models(provider)

    def close(self) -> None:
        pass
