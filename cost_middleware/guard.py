"""Failures inside the middleware are counted and logged once per kind, never raised."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from cost_middleware.metrics import Metrics

P = ParamSpec("P")
T = TypeVar("T")

log = logging.getLogger("cost_middleware")


class Guard:
    """Counts skips and internal errors as ``skipped.<reason>``; logs each kind once."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def skip(self, reason: str) -> None:
        label = self._metrics.label("skip_reason", reason)
        self._metrics.incr(f"skipped.{label}")
        if self._first(label):
            log.info("cost_middleware: skipped a response (%s); further ones are only counted",
                     label)

    def error(self, where: str, exc: BaseException) -> None:
        """An exception inside our code: counted as ``skipped.internal_error``."""
        self._metrics.incr("skipped.internal_error")
        kind = f"{where}:{type(exc).__name__}"
        if self._first(kind):
            # Only the exception type and our own location: messages may quote response text.
            log.error("cost_middleware: internal error in %s (%s); the response was not "
                      "affected; further ones are only counted", where, type(exc).__name__)

    def call(self, where: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T | None:
        """``fn(*args, **kwargs)``, or None after an exception, counted as in :meth:`error`."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            self.error(where, exc)
            return None

    def _first(self, kind: str) -> bool:
        if kind in self._seen:
            return False
        with self._lock:
            if kind in self._seen:
                return False
            self._seen.add(kind)
            return True
