"""Catalog files (DESIGN "Catalog file"): JSON read exactly into :class:`Price` lists, and back.

JSON numbers are read as ``Decimal`` (``parse_float=Decimal``), so ``2.50`` in a file is the rate
2.50, never the float nearest to it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from cost_middleware.pricing.price import Price, PriceError

#: The catalog shipped inside the package (``cost_middleware/catalog.json``).
BUNDLED_CATALOG = "catalog.json"

CatalogInput = str | os.PathLike[str] | Mapping[str, Any]


def parse_catalog(data: Mapping[str, Any], name: str = "catalog") -> list[Price]:
    """Prices of a decoded catalog; every entry is checked (see :meth:`Price.from_catalog`)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("prices"), list):
        raise PriceError(name, "prices", "must be a list of price entries")
    prices = [Price.from_catalog(entry, index=i) for i, entry in enumerate(data["prices"])]
    seen: set[tuple[str, str, datetime]] = set()
    for price in prices:
        key = (price.provider, price.model, price.effective_from)
        if key in seen:
            raise PriceError(price.label, "effective_from",
                             f"appears twice with {price.effective_from.isoformat()}")
        seen.add(key)
    return prices


def decode_catalog(text: str | bytes, name: str = "catalog") -> dict[str, Any]:
    """Decode catalog JSON with every number exact."""
    try:
        data = json.loads(text, parse_float=Decimal)
    except ValueError as exc:
        raise PriceError(name, None, f"is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise PriceError(name, None, "must be a JSON object with a 'prices' list")
    return data


def read_catalog(source: CatalogInput) -> list[Price]:
    """Prices from a catalog file path or an already decoded catalog mapping."""
    if isinstance(source, Mapping):
        return parse_catalog(source)
    path = Path(source)
    return parse_catalog(decode_catalog(path.read_bytes(), str(path)), str(path))


def bundled_prices() -> list[Price]:
    """The prices of the catalog shipped with the package."""
    text = resources.files("cost_middleware").joinpath(BUNDLED_CATALOG).read_bytes()
    return parse_catalog(decode_catalog(text, BUNDLED_CATALOG), BUNDLED_CATALOG)


def dump_catalog(prices: Iterable[Price]) -> dict[str, Any]:
    """A catalog mapping (JSON-ready: decimals as strings) for ``prices``, dated today (UTC)."""
    return {"as_of": datetime.now(UTC).date().isoformat(),
            "prices": [p.to_catalog() for p in prices]}
