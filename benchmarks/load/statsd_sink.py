"""A StatsD listener on loopback that sums what the servers under test send.

It only parses the plain line protocol (``name:value|type``, lines joined by newlines as
pipelined packets are), which is all the middleware sends.
"""

from __future__ import annotations

import socket
import threading
from collections import defaultdict


class StatsdSink:
    """Receives on 127.0.0.1 (a free port) in a daemon thread until :meth:`close`."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.counters: defaultdict[str, float] = defaultdict(float)
        #: The highest value each gauge reached (several processes send the same name).
        self.gauge_max: dict[str, float] = {}
        self.timings: defaultdict[str, list[float]] = defaultdict(list)
        self.packets = 0
        self._thread = threading.Thread(target=self._run, name="statsd-sink", daemon=True)
        self._thread.start()

    def reset(self) -> None:
        with self._lock:
            self.counters.clear()
            self.gauge_max.clear()
            self.timings.clear()
            self.packets = 0

    def close(self) -> None:
        self._closed.set()
        self._thread.join()
        self._sock.close()

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            with self._lock:
                self.packets += 1
                for line in data.decode("utf-8", "replace").splitlines():
                    self._add(line)

    def _add(self, line: str) -> None:
        name, _, rest = line.partition(":")
        value, _, kind = rest.partition("|")
        kind = kind.split("|", 1)[0]
        try:
            number = float(value)
        except ValueError:
            return
        if kind == "c":
            self.counters[name] += number
        elif kind == "ms":
            self.timings[name].append(number)
        elif kind == "g":
            self.gauge_max[name] = max(number, self.gauge_max.get(name, number))
