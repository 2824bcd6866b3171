"""Our own catalog format (DESIGN "Catalog file") → rows, entry by entry.

Unlike ``prices load``, which refuses a catalog with any bad entry, an import keeps the good
entries and reports each bad one (the guards then refuse the import unless it is forced). An
entry without a ``source`` gets the catalog's name; an entry without ``effective_from`` has
always applied, as in ``prices load``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from cost_middleware.pricing.imports.conversion import Conversion, Skip
from cost_middleware.pricing.price import Price, PriceError


def convert(data: Any, source: str, at: datetime) -> Conversion:
    """Our rows from a decoded catalog (``at`` is unused: entries carry their own dates)."""
    result = Conversion()
    entries = data.get("prices") if isinstance(data, Mapping) else None
    if not isinstance(entries, list):
        result.invalid.append(Skip(source, "not a catalog", "it has no 'prices' list"))
        return result
    for index, entry in enumerate(entries):
        try:
            price = Price.from_catalog(entry, index=index)
        except PriceError as exc:
            result.invalid.append(Skip(exc.entry, "corrupt entry", str(exc)))
            continue
        if price.source is None:
            price = replace(price, source=source)
        result.entries.append((price.label, price))
    return result
