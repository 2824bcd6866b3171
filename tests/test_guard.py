"""The guard: skips and our own errors are counted, logged once per kind, never raised."""

from __future__ import annotations

import logging
import threading

import pytest

from cost_middleware.config import Settings
from cost_middleware.guard import Guard
from cost_middleware.metrics import MAX_LABEL_VALUES, Metrics


@pytest.fixture
def metrics() -> Metrics:
    # Counters only aggregate with StatsD on; nothing is sent unless flushed.
    return Metrics(Settings(statsd_host="127.0.0.1", statsd_port=9))


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="cost_middleware")
    return caplog


def counters(metrics: Metrics) -> dict[str, float]:
    return metrics.snapshot()["counters"]


def logged(logs: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in logs.records]


def skipped(reason: str) -> tuple[int, str]:
    return logging.INFO, (f"cost_middleware: skipped a response ({reason}); further ones are "
                          "only counted")


def failed(where: str, kind: str) -> tuple[int, str]:
    return logging.ERROR, (f"cost_middleware: internal error in {where} ({kind}); the response "
                           "was not affected; further ones are only counted")


def test_every_skip_is_counted_under_its_reason(metrics: Metrics) -> None:
    guard = Guard(metrics)
    for _ in range(3):
        guard.skip("error_status")
    guard.skip("body_too_large")
    assert counters(metrics) == {"skipped.error_status": 3, "skipped.body_too_large": 1}


def test_a_skip_is_logged_once_per_reason(metrics: Metrics,
                                          logs: pytest.LogCaptureFixture) -> None:
    guard = Guard(metrics)
    for _ in range(5):
        guard.skip("error_status")
    guard.skip("body_too_large")
    guard.skip("error_status")
    assert logged(logs) == [skipped("error_status"), skipped("body_too_large")]


def test_each_guard_logs_for_itself(metrics: Metrics, logs: pytest.LogCaptureFixture) -> None:
    Guard(metrics).skip("error_status")
    Guard(metrics).skip("error_status")
    assert len(logs.records) == 2


@pytest.mark.parametrize("hostile", ["a:1|c\nb", "x.y", "reason with spaces", "é"])
def test_untrusted_reasons_cannot_forge_a_metric_name(metrics: Metrics, hostile: str) -> None:
    Guard(metrics).skip(hostile)
    [name] = counters(metrics)
    label = name.removeprefix("skipped.")
    assert label and all(c.isalnum() or c in "_-" for c in label) and label.isascii()


def test_skip_reasons_have_bounded_cardinality(metrics: Metrics) -> None:
    guard = Guard(metrics)
    for i in range(MAX_LABEL_VALUES + 50):
        guard.skip(f"reason_{i}")
    names = counters(metrics)
    assert len(names) == MAX_LABEL_VALUES + 1
    assert names["skipped.other"] == 50


def test_errors_are_counted_as_internal_errors(metrics: Metrics) -> None:
    guard = Guard(metrics)
    guard.error("finish", ValueError("x"))
    guard.error("response_body", KeyError("y"))
    guard.error("finish", ValueError("z"))
    assert counters(metrics) == {"skipped.internal_error": 3}


def test_an_error_is_logged_once_per_place_and_type(metrics: Metrics,
                                                    logs: pytest.LogCaptureFixture) -> None:
    guard = Guard(metrics)
    guard.error("finish", ValueError("first"))
    guard.error("finish", ValueError("second"))
    guard.error("finish", KeyError("another type"))
    guard.error("response_body", ValueError("another place"))
    assert logged(logs) == [failed("finish", "ValueError"), failed("finish", "KeyError"),
                            failed("response_body", "ValueError")]


def test_error_logs_never_quote_the_exception(metrics: Metrics,
                                              logs: pytest.LogCaptureFixture) -> None:
    # Messages may quote response text (keys, prompts): only the type is logged.
    Guard(metrics).error("finish", ValueError("sk-secret prompt text"))
    [record] = logs.records
    assert "sk-secret" not in record.getMessage() and record.exc_info is None


def test_call_returns_the_result(metrics: Metrics) -> None:
    def add(a: int, b: int = 0) -> int:
        return a + b

    guard = Guard(metrics)
    assert guard.call("add", add, 2, b=3) == 5
    assert counters(metrics) == {}


def test_call_swallows_an_exception_counts_and_returns_none(
        metrics: Metrics, logs: pytest.LogCaptureFixture) -> None:
    def broken(value: int) -> int:
        raise RuntimeError(f"bug {value}")

    guard = Guard(metrics)
    assert guard.call("capture", broken, 1) is None
    assert guard.call("capture", broken, 2) is None
    assert counters(metrics) == {"skipped.internal_error": 2}
    assert logged(logs) == [failed("capture", "RuntimeError")]


def test_call_lets_base_exceptions_through(metrics: Metrics) -> None:
    # KeyboardInterrupt and SystemExit belong to the host, not to us.
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Guard(metrics).call("capture", interrupted)


def test_disabled_metrics_still_never_raise(logs: pytest.LogCaptureFixture) -> None:
    metrics = Metrics(Settings(statsd_enabled=False))
    guard = Guard(metrics)
    guard.skip("error_status")
    guard.error("finish", ValueError("x"))
    assert counters(metrics) == {}
    assert logged(logs) == [skipped("error_status"), failed("finish", "ValueError")]


def test_concurrent_first_errors_log_once(metrics: Metrics,
                                          logs: pytest.LogCaptureFixture) -> None:
    guard = Guard(metrics)
    start = threading.Barrier(8)

    def hammer() -> None:
        start.wait()
        for _ in range(200):
            guard.error("finish", ValueError("x"))
            guard.skip("error_status")

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counters(metrics) == {"skipped.internal_error": 1600, "skipped.error_status": 1600}
    assert sorted(logged(logs)) == sorted([failed("finish", "ValueError"),
                                           skipped("error_status")])
