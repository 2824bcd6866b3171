"""StatsD metrics, aggregated in process and sent from the background thread.

A UDP send costs microseconds, so nothing is sent on the request path: counters are summed,
gauges keep their last value, timings keep a bounded sample per interval, and :meth:`flush`
sends everything in pipelined packets. A dead or absent StatsD never matters.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import defaultdict
from typing import Any

from cost_middleware.config import Settings

log = logging.getLogger("cost_middleware")

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
#: Distinct values per label dimension (tenant, model, provider, reason...) before ``other``.
MAX_LABEL_VALUES = 200
#: Timing samples kept per metric between flushes; ``<name>.count`` carries the true number.
MAX_TIMING_SAMPLES = 512
MAX_LABEL_LENGTH = 64


def sanitize(value: str) -> str:
    """Make an untrusted value safe as one StatsD name segment."""
    cleaned = _UNSAFE.sub("_", value)[:MAX_LABEL_LENGTH]
    return cleaned or "_"


class Metrics:
    """Process-local aggregation of counters, gauges and timings, flushed to StatsD."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.statsd_enabled
        self._host = settings.statsd_host
        self._port = settings.statsd_port
        self._prefix = settings.statsd_prefix
        self._lock = threading.Lock()
        self._counters: defaultdict[str, float] = defaultdict(float)
        self._gauges: dict[str, float] = {}
        self._timings: defaultdict[str, list[float]] = defaultdict(list)
        self._timing_counts: defaultdict[str, int] = defaultdict(int)
        self._labels: defaultdict[str, set[str]] = defaultdict(set)
        self._label_cache: defaultdict[str, dict[str, str]] = defaultdict(dict)
        self._client: Any = None
        self._send_failed = False

    def label(self, dimension: str, value: str | None) -> str:
        """An untrusted value as a bounded-cardinality, sanitized name segment."""
        if not value:
            return "unknown"
        known = self._label_cache[dimension]
        try:
            return known[value]
        except KeyError:
            pass
        clean = sanitize(value)
        seen = self._labels[dimension]
        with self._lock:
            if clean not in seen:
                if len(seen) >= MAX_LABEL_VALUES:
                    clean = "other"
                else:
                    seen.add(clean)
            if len(known) < MAX_LABEL_VALUES * 4:  # raw spellings remembered, also bounded
                known[value] = clean
        return clean

    def incr(self, name: str, value: float = 1) -> None:
        if self.enabled:
            with self._lock:
                self._counters[name] += value

    def gauge(self, name: str, value: float) -> None:
        if self.enabled:
            with self._lock:
                self._gauges[name] = value

    def timing(self, name: str, ms: float) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._timing_counts[name] += 1
            samples = self._timings[name]
            if len(samples) < MAX_TIMING_SAMPLES:
                samples.append(ms)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Current unsent values (for tests and the demo)."""
        with self._lock:
            return {
                "counters": dict(self._counters),
                "gauges": dict(self._gauges),
                "timings": {k: list(v) for k, v in self._timings.items()},
            }

    def flush(self) -> None:
        """Send what was aggregated since the last flush. Never raises."""
        if not self.enabled:
            return
        with self._lock:
            counters, self._counters = self._counters, defaultdict(float)
            gauges, self._gauges = self._gauges, {}
            timings, self._timings = self._timings, defaultdict(list)
            counts, self._timing_counts = self._timing_counts, defaultdict(int)
        if not (counters or gauges or timings):
            return
        try:
            client = self._get_client()
            pipe = client.pipeline()
            for name, value in counters.items():
                pipe.incr(name, int(value) if float(value).is_integer() else value)
            for name, value in gauges.items():
                pipe.gauge(name, value)
            for name, samples in timings.items():
                # pystatsd drops packets at random for rate < 1, so samples go at rate 1
                # and the true number of observations as a counter beside them.
                for ms in samples:
                    pipe.timing(name, ms)
                pipe.incr(f"{name}.count", counts[name])
            pipe.send()
            self._send_failed = False
        except Exception as exc:  # a dead StatsD must never matter
            if not self._send_failed:
                log.warning("cost_middleware: StatsD send failed (%s); will keep trying", exc)
                self._send_failed = True

    def close(self) -> None:
        """Send what is left and release the socket."""
        self.flush()
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _get_client(self) -> Any:
        # Created on first flush, from the background thread: resolving the host may block.
        if self._client is None:
            from statsd import StatsClient

            self._client = StatsClient(self._host, self._port, prefix=self._prefix)
        return self._client
