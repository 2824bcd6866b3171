"""LiteLLM's price map (``model_prices_and_context_window.json``) → our rows.

Figures are USD per token, decoded exactly (``parse_float=Decimal``) and shifted six places to
USD per 1M tokens, so ``2.5e-06`` becomes ``2.5``. Fields carried:

* ``input_cost_per_token`` → ``input``, ``output_cost_per_token`` → ``output``,
  ``cache_read_input_token_cost`` → ``cached_input``, ``cache_creation_input_token_cost`` →
  ``cache_write`` (5-minute), ``cache_creation_input_token_cost_above_1hr`` → ``cache_write_1h``;
* ``input_cost_per_audio_token`` → ``audio_input``, ``output_cost_per_audio_token`` →
  ``audio_output``;
* each of those with ``_above_<N>k_tokens`` → a tier above N * 1,000 input tokens;
* each of those (tiered or not) with ``_flex``, ``_priority`` or ``_batches`` → the rates of
  our service tier ``flex``, ``priority`` or ``batch`` (a tier's input rate it leaves out is
  the one below it: LiteLLM falls back the same way);
* ``search_context_cost_per_query.search_context_size_medium`` (USD per query; medium is the
  default context size) * 1,000 → ``web_search_per_1k``.

Other figures (images, cached audio, other service tiers, per-second or per-character prices)
have no field of ours yet and are left out. Entries of the modes we read (chat, completion,
responses, embedding; no mode means chat) from the providers we price are imported, named by
their key less the provider's route prefix; an embedding without an output figure costs 0 for
output. The map is undated: its rows take effect at the import's moment.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from functools import lru_cache, partial
from typing import Any

from cost_middleware.pricing.imports.conversion import LITELLM, Conversion, Skip, scaled_rate
from cost_middleware.pricing.imports.providers import SLASHED_MODELS, ours
from cost_middleware.pricing.price import Price, ServiceTier, Tier

READ_MODES = frozenset({"chat", "completion", "responses", "embedding"})
#: Their entry documenting the format, not a model.
SAMPLE_KEY = "sample_spec"

_FIELDS = {
    "input_cost_per_token": "input",
    "output_cost_per_token": "output",
    "cache_read_input_token_cost": "cached_input",
    "cache_creation_input_token_cost": "cache_write",
    "cache_creation_input_token_cost_above_1hr": "cache_write_1h",
    "input_cost_per_audio_token": "audio_input",
    "output_cost_per_audio_token": "audio_output",
}
#: LiteLLM's service-tier suffixes → our tier names.
_SERVICE_TIERS = {"flex": "flex", "priority": "priority", "batches": "batch"}
#: A figure: its base name, then optionally a long-context threshold and a service tier.
_FIGURE = re.compile(r"(.+?)(?:_above_(\d+)k_tokens)?(?:_(flex|priority|batches))?")
#: (our service tier or None, threshold or 0, our field) of a figure's name.
_Figure = tuple[str | None, int, str]
_SEARCH = "search_context_cost_per_query"
_SEARCH_SIZE = "search_context_size_medium"


def convert(data: Any, source: str, at: datetime) -> Conversion:
    """Our rows from a decoded LiteLLM map, effective from ``at``, each with ``source``."""
    result = Conversion()
    if not isinstance(data, Mapping):
        result.invalid.append(Skip(source, "not a LiteLLM map", "the top level is not an object"))
        return result
    for key, spec in data.items():
        key = str(key)
        if key == SAMPLE_KEY:
            result.skip(key, "LiteLLM's sample entry")
            continue
        if not isinstance(spec, Mapping):
            result.invalid.append(Skip(key, "corrupt entry", "not an object"))
            continue
        provider = spec.get("litellm_provider")
        target = ours(LITELLM, provider, key)
        if target is None:
            result.skip(key, "provider not priced by us", str(provider))
            continue
        model = key.removeprefix(target.route)
        pair = (target.provider, model)
        mode = spec.get("mode") or "chat"
        if not isinstance(mode, str) or mode not in READ_MODES:
            result.skip(key, "mode not read by us", str(mode), pair)
            continue
        if "/" in model and target.provider not in SLASHED_MODELS:
            result.skip(key, "regional or routed name", model.partition("/")[0], pair)
            continue
        result.add(key, pair, partial(_row, spec, pair, mode == "embedding", source, at))
    return result


def _row(spec: Mapping[str, Any], pair: tuple[str, str], embedding: bool, source: str,
         at: datetime) -> list[Price] | str:
    """The row of one entry, or the reason it has none."""
    # (service tier or None, threshold or 0) → our field → rate.
    layers: dict[tuple[str | None, int], dict[str, Decimal]] = {}
    for name, value in spec.items():
        figure = _figure(name)
        if figure is not None:
            service, threshold, field_name = figure
            layers.setdefault((service, threshold), {})[field_name] = scaled_rate(value, 6, name)
    base = layers.get((None, 0), {})
    if "input" not in base:
        return "no per-token input rate"
    if "output" not in base:
        if not embedding:
            return "no per-token output rate"
        base["output"] = Decimal(0)
    search = spec.get(_SEARCH)
    web_search = None
    if isinstance(search, Mapping) and search.get(_SEARCH_SIZE) is not None:
        web_search = scaled_rate(search[_SEARCH_SIZE], 3, f"{_SEARCH}.{_SEARCH_SIZE}")
    services = []
    for service in sorted({s for s, _ in layers if s is not None}, key=_SERVICE_ORDER.index):
        rates = {"input": base["input"], **layers.get((service, 0), {})}
        services.append(ServiceTier(name=service, **rates,
                                    tiers=_tiers(layers, service, rates["input"])))
    return [Price(
        provider=pair[0], model=pair[1], input=base["input"], output=base["output"],
        cached_input=base.get("cached_input"), cache_write=base.get("cache_write"),
        cache_write_1h=base.get("cache_write_1h"), web_search_per_1k=web_search,
        audio_input=base.get("audio_input"), audio_output=base.get("audio_output"),
        tiers=_tiers(layers, None, base["input"]), service_tiers=tuple(services),
        effective_from=at, source=source,
    )]


_SERVICE_ORDER = tuple(_SERVICE_TIERS.values())


def _tiers(layers: Mapping[tuple[str | None, int], Mapping[str, Decimal]], service: str | None,
           below: Decimal) -> tuple[Tier, ...]:
    """The long-context tiers of ``service`` (None: standard); ``below`` is the input rate a
    tier without one keeps."""
    return tuple(Tier(above_input_tokens=threshold, **{"input": below, **rates})
                 for (name, threshold), rates in sorted(
                     layers.items(), key=lambda item: item[0][1])
                 if name == service and threshold)


@lru_cache(maxsize=4096)  # a map repeats the same few hundred names across its entries
def _figure(name: str) -> _Figure | None:
    """What figure ``name`` is, or None for one we do not carry."""
    field_name = _FIELDS.get(name)
    if field_name is not None:
        return None, 0, field_name
    if "_above_" not in name and not name.endswith(("_flex", "_priority", "_batches")):
        return None
    match = _FIGURE.fullmatch(name)
    if match is None or (field_name := _FIELDS.get(match[1])) is None:
        return None
    service = _SERVICE_TIERS[match[3]] if match[3] else None
    return service, int(match[2]) * 1000 if match[2] else 0, field_name
