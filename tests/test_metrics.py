from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cost_middleware.config import Settings
from cost_middleware.metrics import MAX_LABEL_VALUES, Metrics, sanitize


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    yield sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    lines: list[str] = []
    sock.settimeout(0.5)
    try:
        while True:
            lines += sock.recv(65535).decode().splitlines()
    except TimeoutError:
        return lines


def test_lines_arrive_at_a_real_udp_socket(udp: socket.socket) -> None:
    port = udp.getsockname()[1]
    m = Metrics(Settings(statsd_host="127.0.0.1", statsd_port=port, statsd_prefix="cm"))
    m.incr("records.written", 3)
    m.incr("records.written", 2)
    m.gauge("queue.depth", 7)
    m.timing("request.overhead", 0.012)
    m.close()
    lines = received(udp)
    assert "cm.records.written:5|c" in lines
    assert "cm.queue.depth:7|g" in lines
    assert any(line.startswith("cm.request.overhead:0.012") and line.endswith("|ms")
               for line in lines)


def test_nothing_is_sent_until_flush(udp: socket.socket) -> None:
    m = Metrics(Settings(statsd_host="127.0.0.1", statsd_port=udp.getsockname()[1]))
    m.incr("x")
    assert received(udp) == []


def test_disabled_sends_nothing(udp: socket.socket) -> None:
    m = Metrics(Settings(statsd_enabled=False, statsd_host="127.0.0.1",
                         statsd_port=udp.getsockname()[1]))
    m.incr("x")
    m.flush()
    assert received(udp) == []
    assert m.snapshot()["counters"] == {}


def test_a_dead_statsd_never_raises() -> None:
    m = Metrics(Settings(statsd_host="no-such-host.invalid", statsd_port=1))
    m.incr("x")
    m.flush()
    m.incr("x")
    m.close()


@pytest.mark.parametrize("hostile", ["a:1|c\nb", "x.y", "tenant|@0.1", "é", "", "a b/c"])
def test_untrusted_values_cannot_forge_a_metric(hostile: str) -> None:
    m = Metrics(Settings())
    label = m.label("tenant", hostile)
    assert label and all(c.isalnum() or c in "_-" for c in label)
    assert label.isascii()


@given(st.text())
def test_sanitize_keeps_only_safe_characters(value: str) -> None:
    out = sanitize(value)
    assert 0 < len(out) <= 64
    assert all(c.isascii() and (c.isalnum() or c in "_-") for c in out)


def test_label_cardinality_is_capped() -> None:
    m = Metrics(Settings())
    labels = {m.label("tenant", f"t{i}") for i in range(MAX_LABEL_VALUES + 50)}
    assert len(labels) == MAX_LABEL_VALUES + 1
    assert "other" in labels
    assert m.label("tenant", "t3") == "t3"


def test_timing_samples_are_bounded_and_counted(udp: socket.socket) -> None:
    m = Metrics(Settings(statsd_host="127.0.0.1", statsd_port=udp.getsockname()[1],
                         statsd_prefix="cm"))
    for _ in range(2000):
        m.timing("t", 1.0)
    assert len(m.snapshot()["timings"]["t"]) < 2000
    m.close()
    time.sleep(0.05)
    lines = received(udp)
    assert "cm.t.count:2000|c" in lines
