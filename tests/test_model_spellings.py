"""One model under one name: what a record names, and which row prices each spelling.

Claude on Vertex is recorded as the response names it (``claude-sonnet-4-5-20250929``), the
URL's ``@`` spelling only when the body names none. The Vertex ``@``, Bedrock ``-v1:0`` and
profile spellings are priced from the dated Anthropic row when that is the row there is, and
never from another model's row. Fine-tunes are OpenAI's (or Mistral's), priced by ``ft:`` rows
only.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from cost_middleware import CostRecord, Settings
from cost_middleware.engine.tracker import CostTracker
from cost_middleware.ops.report import summarize
from cost_middleware.pricing.book import PriceBook
from cost_middleware.pricing.catalog import bundled_prices
from cost_middleware.pricing.price import Price
from cost_middleware.pricing.sources import MemoryPriceSource
from cost_middleware.usage.base import Exchange
from cost_middleware.usage.detect import Detector
from cost_middleware.usage.model import Extraction, Usage

USAGE = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
VERTEX_PATH = ("/v1/projects/p/locations/us-east5/publishers/anthropic/models/"
               "claude-sonnet-4-5@20250929:{verb}")
DATED = "claude-sonnet-4-5-20250929"


def _read(path: str, body: bytes, content_type: str = "application/json",
          complete: bool = True) -> Extraction | None:
    target = Detector().match("POST", path)
    assert target is not None, path
    reader = target.open(Exchange(method="POST", path=path, query="", request_body=None,
                                  status=200, response_headers={"content-type": content_type}))
    assert reader is not None
    reader.feed(body)
    return reader.finish(complete)


def _message(model: str | None) -> dict[str, Any]:
    message: dict[str, Any] = {"id": "msg_vrtx_1", "type": "message", "role": "assistant",
                               "content": [], "usage": {"input_tokens": 10, "output_tokens": 5}}
    if model is not None:
        message["model"] = model
    return message


def test_vertex_claude_is_recorded_as_the_body_names_it() -> None:
    result = _read(VERTEX_PATH.format(verb="rawPredict"), orjson.dumps(_message(DATED)))
    assert result is not None and (result.provider, result.model) == ("vertex_anthropic", DATED)


def test_vertex_claude_stream_is_recorded_as_message_start_names_it() -> None:
    start = {"type": "message_start", "message": _message(DATED)}
    body = (f"event: message_start\ndata: {json.dumps(start)}\n\n"
            'event: message_stop\ndata: {"type":"message_stop"}\n\n').encode()
    result = _read(VERTEX_PATH.format(verb="streamRawPredict"), body, "text/event-stream")
    assert result is not None and result.model == DATED


def test_vertex_claude_falls_back_to_the_url_model_when_the_body_names_none() -> None:
    result = _read(VERTEX_PATH.format(verb="rawPredict"), orjson.dumps(_message(None)))
    assert result is not None and result.model == "claude-sonnet-4-5@20250929"
    cut = _read(VERTEX_PATH.format(verb="streamRawPredict"), b"", "text/event-stream",
                complete=False)
    assert cut is not None and (cut.model, cut.partial) == ("claude-sonnet-4-5@20250929", True)


def test_bedrock_keeps_the_billed_id_from_the_url() -> None:
    """Bedrock bills the inference profile in the URL, not the model the Claude body names."""
    path = "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke"
    result = _read(path, orjson.dumps(_message(DATED)))
    assert result is not None and result.model == "us.anthropic.claude-sonnet-4-5-20250929-v1:0"


def _row(provider: str, model: str, rate: str = "1") -> Price:
    return Price(provider=provider, model=model, input=Decimal(rate), output=Decimal(rate))


ONLY_DATED = _row("anthropic", DATED)

SPELLINGS = [
    ("vertex_anthropic", "claude-sonnet-4-5@20250929"),
    ("vertex_anthropic", DATED),
    ("anthropic", DATED),
    ("aws_bedrock", "anthropic.claude-sonnet-4-5-20250929-v1:0"),
    ("aws_bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
    ("aws_bedrock", "eu.anthropic.claude-sonnet-4-5-20250929-v1:0"),
    ("aws_bedrock", "global.anthropic.claude-sonnet-4-5-20250929-v1:0"),
    ("aws_bedrock", "arn:aws:bedrock:us-east-1:123456789012:inference-profile/"
                    "us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
    # Undated names: the newest dated row of exactly that name.
    ("anthropic", "claude-sonnet-4-5"),
    ("vertex_anthropic", "claude-sonnet-4-5"),
    ("openrouter", "anthropic/claude-sonnet-4.5"),
    ("openai_compatible", "anthropic/claude-sonnet-4.5"),
]


@pytest.mark.parametrize(("provider", "model"), SPELLINGS)
def test_every_spelling_is_priced_from_the_dated_anthropic_row(provider: str, model: str) -> None:
    assert PriceBook(MemoryPriceSource([ONLY_DATED])).lookup(provider, model) == ONLY_DATED


def test_the_vertex_spelling_prefers_its_own_dated_row_over_the_undated_one() -> None:
    undated = _row("anthropic", "claude-sonnet-4-5", "3")
    book = PriceBook(MemoryPriceSource([undated, ONLY_DATED]))
    assert book.lookup("vertex_anthropic", "claude-sonnet-4-5@20250929") == ONLY_DATED
    assert book.lookup("vertex_anthropic", "claude-sonnet-4-5@20260101") == undated


def test_an_undated_name_takes_the_newest_dated_row_of_exactly_that_name() -> None:
    newer = _row("anthropic", "claude-sonnet-4-5-20260101", "2")
    other = _row("anthropic", "claude-sonnet-4-5-1-20270101", "9")  # another model
    book = PriceBook(MemoryPriceSource([ONLY_DATED, newer, other]))
    assert book.lookup("anthropic", "claude-sonnet-4-5") == newer
    assert book.lookup("openrouter", "anthropic/claude-sonnet-4.5") == newer
    assert book.lookup("vertex_anthropic", "claude-sonnet-4-5@20250929") == ONLY_DATED
    openai = [_row("openai", "gpt-4o-2024-05-13", "5"), _row("openai", "gpt-4o-2024-08-06")]
    assert PriceBook(MemoryPriceSource(openai)).lookup("openai", "gpt-4o") == openai[1]


def test_a_dated_row_added_later_prices_its_undated_name() -> None:
    source = MemoryPriceSource([])
    book = PriceBook(source)
    assert book.lookup("openrouter", "anthropic/claude-sonnet-4.5") is None
    source.replace([ONLY_DATED])
    book.invalidate("anthropic", DATED)
    assert book.lookup("openrouter", "anthropic/claude-sonnet-4.5") == ONLY_DATED


NEVER = [
    # (rows there are, a name they must not price)
    (["claude-opus-4-20250514", "claude-opus-4"], "claude-opus-4-1"),
    (["claude-opus-4-20250514", "claude-opus-4"], "claude-opus-4-1-20250805"),
    (["claude-opus-4-20250514", "claude-opus-4"], "claude-opus-4-1@20250805"),
    (["claude-opus-4-1-20250805"], "claude-opus-4"),
    (["claude-opus-4-1-20250805"], "claude-opus-4@20250514"),
    (["claude-sonnet-4-20250514"], "claude-sonnet-4-5@20250929"),
]


@pytest.mark.parametrize(("rows", "model"), NEVER)
def test_no_spelling_borrows_another_models_rate(rows: list[str], model: str) -> None:
    book = PriceBook(MemoryPriceSource([_row("anthropic", name) for name in rows]))
    for provider in ("anthropic", "vertex_anthropic"):
        assert book.lookup(provider, model) is None, (provider, model)
    bedrock = f"us.anthropic.{model.replace('@', '-')}-v1:0"
    assert book.lookup("aws_bedrock", bedrock) is None


def _chat(model: str, fingerprint: bool) -> bytes:
    body: dict[str, Any] = {
        "id": "chatcmpl-1", "object": "chat.completion", "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
    if fingerprint:
        body["system_fingerprint"] = "fp_0123456789"
    return orjson.dumps(body)


@pytest.mark.parametrize(("model", "provider"), [
    ("ft:gpt-4o-mini-2024-07-18:acme::9AbCdEfG", "openai"),
    ("ft:gpt-4o-mini:acme:support-bot:9AbCdEfG", "openai"),
    ("ft:gpt-4.1-2025-04-14:acme:triage:BcDeFgH1:ckpt-step-300", "openai"),
    ("ft:open-mistral-7b:587a6b29:20240514:7e773925", "mistral"),
])
@pytest.mark.parametrize("fingerprint", [False, True])
def test_fine_tunes_are_the_base_models_vendors(model: str, provider: str,
                                                fingerprint: bool) -> None:
    result = _read("/v1/chat/completions", _chat(model, fingerprint))
    assert result is not None and (result.provider, result.model) == (provider, model)


FT_DATED = _row("openai", "ft:gpt-4o-mini-2024-07-18", "2")
FT_UNDATED = _row("openai", "ft:gpt-4o-mini", "3")


@pytest.mark.parametrize(("rows", "model", "expected"), [
    ([FT_DATED], "ft:gpt-4o-mini-2024-07-18:acme::9AbCdEfG", FT_DATED),
    ([FT_DATED, FT_UNDATED], "ft:gpt-4o-mini-2024-07-18:acme::9AbCdEfG", FT_DATED),
    ([FT_UNDATED], "ft:gpt-4o-mini-2024-07-18:acme::9AbCdEfG", FT_UNDATED),
    ([FT_DATED, FT_UNDATED], "ft:gpt-4o-mini:acme:support-bot:9AbCdEfG", FT_UNDATED),
    ([FT_DATED], "ft:gpt-4o-mini:acme:support-bot:9AbCdEfG", FT_DATED),
    ([], "ft:gpt-4o-mini-2024-07-18:acme::9AbCdEfG", None),
    ([], "ft:gpt-4o-mini:acme:support-bot:9AbCdEfG", None),
    ([FT_DATED], "ft:gpt-4o-2024-08-06:acme::9AbCdEfG", None),  # another base model
])
def test_fine_tunes_are_priced_by_ft_rows_only(rows: list[Price], model: str,
                                               expected: Price | None) -> None:
    # With every bundled row there too: a fine-tune never takes its base model's rate.
    book = PriceBook(MemoryPriceSource([*bundled_prices(), *rows]))
    assert book.lookup("openai", model) == expected
    assert book.lookup("azure_openai", model) == expected


def test_a_catalog_of_dated_rows_prices_every_spelling_in_the_ledger(tmp_path: Path) -> None:
    catalog = tmp_path / "prices.json"
    catalog.write_text(json.dumps({"prices": [
        _row("anthropic", DATED, "5").to_catalog(), FT_DATED.to_catalog()]}))
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    records = [(provider, model, Decimal(10)) for provider, model in SPELLINGS] + [
        ("openai", "ft:gpt-4o-mini-2024-07-18:acme::9AbCdEfG", Decimal(4)),
        ("openai", "gpt-4o-mini-2024-07-18", None),  # a base model is no fine-tune
        ("anthropic", "claude-opus-4-1", None),
    ]
    tracker = CostTracker(Settings(database_url=url, prices_file=str(catalog),
                                   statsd_enabled=False, spool_dir=str(tmp_path / "spool")))
    try:
        for provider, model, _ in records:
            tracker.record(CostRecord(provider, "messages", model, USAGE, record_id=model))
        assert tracker.flush(10)
    finally:
        tracker.close()
    engine = sa.create_engine(url)
    try:
        by_model = {row.key: (row.cost_usd, row.unpriced) for row in summarize(engine, "model")}
    finally:
        engine.dispose()
    for _, model, cost in records:
        assert by_model[model] == ((cost, 0) if cost is not None else (None, 1)), model
