"""``model_prices`` rows ↔ :class:`Price` (aliases, tiers and service tiers are JSON text in the
row)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cost_middleware.pricing.price import (
    Price,
    PriceError,
    Tier,
    service_tiers_from_catalog,
    service_tiers_to_catalog,
)
from cost_middleware.utc import as_utc


def _json_column(text: str | None, entry: str, name: str, kind: type[Any]) -> Any:
    """A JSON text column holding a ``kind`` (list or dict); empty means an empty one."""
    try:
        value = json.loads(text) if text else kind()
    except ValueError:
        raise PriceError(entry, name, "is not valid JSON in model_prices") from None
    if not isinstance(value, kind):
        raise PriceError(entry, name, f"must be a JSON {'list' if kind is list else 'object'} "
                         "in model_prices")
    return value


def json_list(text: str | None, entry: str, name: str) -> list[Any]:
    """A JSON list column (``aliases``, ``tiers``)."""
    value: list[Any] = _json_column(text, entry, name, list)
    return value


def price_from_row(row: Mapping[Any, Any]) -> Price:
    entry = f"{row['provider']}/{row['model']}"
    aliases = json_list(row["aliases"], entry, "aliases")
    return Price(
        provider=row["provider"],
        model=row["model"],
        input=row["input"],
        output=row["output"],
        cached_input=row["cached_input"],
        cache_write=row["cache_write"],
        cache_write_1h=row["cache_write_1h"],
        web_search_per_1k=row["web_search_per_1k"],
        audio_input=row["audio_input"],
        audio_output=row["audio_output"],
        aliases=tuple(str(a) for a in aliases),
        tiers=tuple(Tier.from_catalog(t, entry) for t in json_list(row["tiers"], entry, "tiers")),
        service_tiers=service_tiers_from_catalog(
            _json_column(row["service_tiers"], entry, "service_tiers", dict), entry),
        effective_from=as_utc(row["effective_from"]),
        version=int(row["version"]),
        source=row["source"],
    )


def price_to_row(price: Price, updated_at: datetime) -> dict[str, Any]:
    return {
        "provider": price.provider,
        "model": price.model,
        "effective_from": price.effective_from,
        "input": price.input,
        "cached_input": price.cached_input,
        "cache_write": price.cache_write,
        "cache_write_1h": price.cache_write_1h,
        "output": price.output,
        "web_search_per_1k": price.web_search_per_1k,
        "audio_input": price.audio_input,
        "audio_output": price.audio_output,
        "aliases": json.dumps(list(price.aliases)),
        "tiers": json.dumps([t.to_catalog() for t in price.tiers]),
        "service_tiers": json.dumps(service_tiers_to_catalog(price.service_tiers)),
        "source": price.source,
        "version": price.version,
        "updated_at": updated_at,
    }
