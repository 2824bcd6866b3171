"""Every fixture (shared corpus and ours) through detect → open → feed → finish.

Each body is fed whole, cut in every two-piece split (a stride for big ones), as recorded
network reads where the fixture has them, and in random chunkings; the result must match
EXPECTED.json exactly: provider, api, model, every usage key listed, partial, deployment,
upstream provider and service tier.
"""

from __future__ import annotations

from decimal import Decimal
from itertools import pairwise
from typing import Any
from urllib.parse import unquote

import orjson
import pytest
from conftest import fixture_bytes, fixture_chunks, load_expected
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cost_middleware.usage.base import Exchange, Reader
from cost_middleware.usage.detect import Detector
from cost_middleware.usage.model import Extraction

ENTRIES = load_expected()
IDS = [entry["file"] for entry in ENTRIES]
DETECTOR = Detector()
#: Bodies up to this size are cut at every byte; bigger ones at a stride.
EVERY_SPLIT_MAX = 2048


def open_reader(entry: dict[str, Any]) -> Reader:
    """What the capture layer does at ``http.response.start`` for this fixture."""
    raw_path, _, query = entry["path"].partition("?")
    path = unquote(raw_path)
    target = DETECTOR.match(entry["method"], path)
    assert target is not None, entry["path"]
    headers = {k.lower(): v for k, v in (entry.get("response_headers") or {}).items()}
    headers["content-type"] = entry["content_type"]
    body = entry.get("request_body")
    exchange = Exchange(
        method=entry["method"],
        path=path,
        query=query,
        request_body=orjson.dumps(body) if body is not None and target.needs_request_body
        else None,
        status=entry["status"],
        response_headers=headers,
        raw_path=raw_path,
    )
    reader = target.open(exchange)
    assert reader is not None, entry["file"]
    return reader


def run(entry: dict[str, Any], chunks: list[bytes], complete: bool = True) -> Extraction | None:
    reader = open_reader(entry)
    for chunk in chunks:
        reader.feed(chunk)
    return reader.finish(complete)


def assert_matches(entry: dict[str, Any], result: Extraction | None,
                   partial: bool | None = None) -> None:
    name = entry["file"]
    assert result is not None, name
    assert result.provider == entry["provider"], name
    assert result.api == entry["api"], name
    assert result.model == entry["model"], name
    assert result.streamed == entry["stream"], name
    expected_partial = entry.get("partial", False) if partial is None else partial
    assert result.partial == expected_partial, name
    for key in ("deployment", "upstream_provider", "service_tier"):
        if key in entry:
            assert getattr(result, key) == entry[key], (name, key)
    if entry["usage"] is None:
        assert result.usage is None, name
        return
    assert result.usage is not None, name
    for key, value in entry["usage"].items():
        got = getattr(result.usage, key)
        if key == "reported_cost_usd":
            assert got == Decimal(str(value)), (name, key)
        else:
            assert got == value and type(got) is type(value), (name, key, got, value)


def splits(size: int) -> range:
    return range(1, size) if size <= EVERY_SPLIT_MAX else range(1, size, 7)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_whole_body(entry: dict[str, Any]) -> None:
    assert_matches(entry, run(entry, [fixture_bytes(entry)]))


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_every_two_way_split(entry: dict[str, Any]) -> None:
    body = fixture_bytes(entry)
    for cut in splits(len(body)):
        assert_matches(entry, run(entry, [body[:cut], body[cut:]]))


@pytest.mark.parametrize("entry", [e for e in ENTRIES if fixture_chunks(e) is not None],
                         ids=lambda e: e["file"])
def test_recorded_network_reads(entry: dict[str, Any]) -> None:
    chunks = fixture_chunks(entry)
    assert chunks is not None and len(chunks) > 1
    assert_matches(entry, run(entry, chunks))


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_cut_short_by_the_transport_is_partial(entry: dict[str, Any]) -> None:
    """``finish(complete=False)``: same values, flagged partial (error replies excepted)."""
    result = run(entry, [fixture_bytes(entry)], complete=False)
    assert_matches(entry, result, partial=entry["status"] < 400)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_chunkings(entry: dict[str, Any], data: st.DataObject) -> None:
    body = fixture_bytes(entry)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(body)), max_size=40)))
    bounds = [0, *cuts, len(body)]
    assert_matches(entry, run(entry, [body[a:b] for a, b in pairwise(bounds)]))


STREAMS = [e for e in ENTRIES if e["stream"] and e["status"] < 400]


@pytest.mark.parametrize("entry", STREAMS, ids=lambda e: e["file"])
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_stream_cut_anywhere_reports_last_values_seen(
    entry: dict[str, Any], data: st.DataObject
) -> None:
    """A stream cut at any byte never raises; what it reports never exceeds the final
    totals (snapshots are cumulative) and is flagged partial."""
    body = fixture_bytes(entry)
    cut = data.draw(st.integers(0, len(body) - 1))
    result = run(entry, [body[:cut]], complete=False)
    if result is None:
        return
    assert result.partial
    assert result.provider in (entry["provider"], "openai", "openai_compatible")
    if result.usage is not None and entry["usage"] is not None:
        final = entry["usage"]
        assert result.usage.output_tokens <= final["output_tokens"]
        assert result.usage.input_tokens <= final["input_tokens"]
