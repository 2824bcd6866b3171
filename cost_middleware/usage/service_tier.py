"""The service tier a provider says it billed a call at, as one name across providers.

A response's tier is untrusted text: :func:`normalize` turns each provider's spelling of a
known tier into ours (OpenAI ``default`` and Vertex ``ON_DEMAND`` are both ``standard``,
Vertex ``ON_DEMAND_FLEX`` is ``flex``), and anything else into a bounded name of lowercase
letters, digits, ``_``, ``.`` and ``-`` (stored, priced at standard rates, see
:func:`first_unknown`). Only the names in :data:`PRICED` select rates of their own.
"""

from __future__ import annotations

import re
import threading

#: The tier a price's own rates are for.
STANDARD = "standard"
#: The tiers a price may give rates of its own (its ``service_tiers``).
PRICED = ("flex", "priority", "batch")
#: The width of ``cost_records.service_tier``.
MAX_TIER = 32

#: Each provider's spelling (lowercased) → ours. OpenAI: ``default``/``auto``, ``flex``,
#: ``priority``, ``scale``; Anthropic: ``standard``, ``priority``, ``batch``; Vertex
#: ``trafficType``: ``ON_DEMAND``, ``ON_DEMAND_FLEX``, ``ON_DEMAND_PRIORITY``,
#: ``PROVISIONED_THROUGHPUT``; Bedrock: ``default``, ``flex``, ``priority``, ``reserved``.
_OURS = {
    "default": STANDARD, "auto": STANDARD, "standard": STANDARD, "on_demand": STANDARD,
    "flex": "flex", "on_demand_flex": "flex",
    "priority": "priority", "on_demand_priority": "priority",
    "batch": "batch", "batches": "batch",
    # Prepaid capacity: known, billed outside per-token rates, so priced at standard rates.
    "scale": "scale", "provisioned_throughput": "provisioned", "reserved": "reserved",
}
#: Every name :func:`normalize` gives a known tier.
KNOWN = frozenset(_OURS.values())
#: The exact spellings providers send, for a lookup without lowercasing.
_EXACT = {**_OURS, **{key.upper(): name for key, name in _OURS.items()}}
_UNSAFE = re.compile(r"[^a-z0-9_.-]+")


def normalize(raw: str | None) -> str | None:
    """Our name of the tier a provider reported (None when it reported none)."""
    if not raw:
        return None
    found = _EXACT.get(raw)
    if found is not None:
        return found
    # Cut before cleaning, so a huge value costs no more than a short one.
    lowered = raw[: MAX_TIER * 2].strip().lower()
    found = _OURS.get(lowered)
    if found is not None:
        return found
    cleaned = _UNSAFE.sub("_", lowered)[:MAX_TIER]
    return _OURS.get(cleaned, cleaned) or None


#: Unknown names already logged, at most :data:`_REMEMBERED` (then none is logged again).
_seen: set[str] = set()
_seen_lock = threading.Lock()
_REMEMBERED = 64


def first_unknown(tier: str) -> bool:
    """True the first time this process meets the unknown tier ``tier`` (to log it once)."""
    with _seen_lock:
        if tier in _seen or len(_seen) >= _REMEMBERED:
            return False
        _seen.add(tier)
        return True
