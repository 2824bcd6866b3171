"""One model's price from a point in time on, and the exact cost of one usage under it.

Rates are USD per 1M tokens (web search: USD per 1,000 searches), exact ``Decimal``s with at
most :data:`RATE_DECIMALS` decimal places (the precision ``model_prices`` stores). When a
``Price`` is built, its rates are scaled once to integers by ``10**d``, ``d`` being the most
decimal places any of its rates has (2 for ``3.75``), so :meth:`Price.cost` is small-integer
arithmetic in units of ``10**-(6 + d)`` USD plus one ``Decimal`` at the end: exact, fast, and
independent of the host's decimal context.

Fallbacks (DESIGN "Pricing rules"): a missing cached rate bills cache reads at the input rate; a
missing 5-minute write rate bills writes at the input rate; a missing 1-hour write rate bills
them at the 5-minute write rate. Writes without a TTL split (``None``) are billed at the
5-minute rate.

Tiers: the tier with the highest ``above_input_tokens`` that *all* input tokens (cache reads
and writes included) exceed reprices the whole request. ``input`` is required in a tier; a field
the tier leaves out keeps the base price's own rate when the base states one, otherwise it
follows the tier's input rate (``output`` keeps the base output rate). Per-request fees (web
search) are never tiered.

Audio: ``audio_input`` bills the audio share of the input not read from a cache, and
``audio_output`` the audio share of the output; without them audio costs the text rates (the
tokens are already counted in ``input_tokens`` / ``output_tokens``).

Service tiers (``service_tiers``: flex, priority, batch) replace the standard rates for a call
billed at that tier, by the tiers' rule: a rate the service tier leaves out keeps the standard
price's own one when stated, else follows the service tier's input rate. A service tier's own
long-context ``tiers`` apply on top of it the same way; it does not take the standard ones.
Any other tier name (and none) is priced at the standard rates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Context, Decimal, InvalidOperation
from typing import Any

from cost_middleware.usage.model import Usage
from cost_middleware.usage.service_tier import PRICED
from cost_middleware.utc import as_utc

#: Decimal places a rate may have; the same as ``schema.RATE_SCALE``.
RATE_DECIMALS = 9
#: Effective date of a price that has always applied.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: Enough digits for any realistic cost, independent of the caller's decimal context.
_EXACT = Context(prec=60)
#: (input, cached_input, cache_write_5m, cache_write_1h, output, audio_input, audio_output) in
#: integer rate units.
_Rates = tuple[int, int, int, int, int, int, int]
#: Rates and long-context tiers (highest threshold first) of the standard or one service tier.
_Schedule = tuple[_Rates, tuple[tuple[int, _Rates], ...]]

RATE_FIELDS = ("input", "cached_input", "cache_write", "cache_write_1h", "output",
               "web_search_per_1k", "audio_input", "audio_output")
_PRICE_FIELDS = frozenset({"provider", "model", "aliases", *RATE_FIELDS, "tiers",
                           "service_tiers", "effective_from", "version", "source"})
TIER_RATES = ("input", "output", "cached_input", "cache_write", "cache_write_1h",
              "audio_input", "audio_output")
_TIER_FIELDS = frozenset({"above_input_tokens", *TIER_RATES})
_SERVICE_TIER_FIELDS = frozenset({*TIER_RATES, "tiers"})


class PriceError(ValueError):
    """A price or catalog entry that cannot be used; names the entry and the field."""

    def __init__(self, entry: str, field_name: str | None, reason: str) -> None:
        where = f"{entry}: field {field_name!r}" if field_name else entry
        super().__init__(f"{where} {reason}")
        self.entry = entry
        self.field = field_name
        self.reason = reason


def parse_rate(value: object, entry: str, name: str) -> Decimal | None:
    """An exact, non-negative rate from a ``Decimal``, int, string or (JSON-literal) float."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise PriceError(entry, name, f"must be a number, not {value!r}")
    try:
        if isinstance(value, Decimal):
            rate = value
        elif isinstance(value, int):
            rate = Decimal(value)
        elif isinstance(value, float):
            # repr() is the shortest literal that reads back as this float: the text in the file.
            rate = Decimal(repr(value))
        elif isinstance(value, str):
            rate = Decimal(value.strip())
        else:
            raise PriceError(entry, name, f"must be a number or a numeric string, not {value!r}")
    except InvalidOperation:
        raise PriceError(entry, name, f"must be a number, not {value!r}") from None
    _check_rate(rate, entry, name)
    return rate


def _check_rate(rate: Decimal, entry: str, name: str) -> int:
    """Validate ``rate``; returns its decimal places (``2.500`` has 1)."""
    if not rate.is_finite():
        raise PriceError(entry, name, f"must be finite, not {rate}")
    if rate < 0:
        raise PriceError(entry, name, f"must not be negative (got {rate})")
    exponent = rate.normalize(_EXACT).as_tuple().exponent
    decimals = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    if decimals > RATE_DECIMALS:
        raise PriceError(entry, name, f"has more than {RATE_DECIMALS} decimal places ({rate})")
    return decimals


def _scaled(rate: Decimal, scale: int) -> int:
    """``rate * 10**scale`` as an int (exact: a rate has at most ``scale`` decimals)."""
    return int(rate.scaleb(scale, _EXACT))


def parse_datetime(value: object, entry: str, name: str = "effective_from") -> datetime:
    """An aware UTC datetime from ISO 8601 text, a date or a datetime (naive means UTC)."""
    if isinstance(value, datetime):
        result = value
    elif isinstance(value, date):
        result = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            result = datetime.fromisoformat(value.strip())
        except ValueError:
            raise PriceError(entry, name, f"must be an ISO 8601 date/time, not {value!r}") from None
    else:
        raise PriceError(entry, name, f"must be an ISO 8601 date/time, not {value!r}")
    return as_utc(result)


def _parse_int(value: object, entry: str, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PriceError(entry, name, f"must be a non-negative integer, not {value!r}")
    return value


def _check_fields(data: Mapping[str, Any], allowed: frozenset[str], entry: str) -> None:
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise PriceError(entry, unknown[0], "is not a known field")


def _required_rate(data: Mapping[str, Any], entry: str, name: str) -> Decimal:
    rate = parse_rate(data.get(name), entry, name)
    if rate is None:
        raise PriceError(entry, name, "is required")
    return rate


def _required_name(data: Mapping[str, Any], entry: str, name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise PriceError(entry, name, "is required (a non-empty string)")
    return value.strip()


def in_effect(history: Sequence[Price], at: datetime) -> Price | None:
    """The row of ``history`` (oldest ``effective_from`` first) in effect at ``at``: the
    latest one that starts at or before it; None when all start later."""
    for price in reversed(history):
        if price.effective_from <= at:
            return price
    return None


def format_rate(rate: Decimal) -> str:
    """Canonical text of a rate: no exponent, no trailing zeros (``2.50`` and a stored
    ``2.500000000`` both give ``2.5``)."""
    return format(rate.normalize(_EXACT), "f")


def _format_optional(rate: Decimal | None) -> str | None:
    return None if rate is None else format_rate(rate)


@dataclass(frozen=True, slots=True)
class Tier:
    """Rates that replace the base rates once all input tokens exceed ``above_input_tokens``."""

    above_input_tokens: int
    input: Decimal
    output: Decimal | None = None
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None
    audio_input: Decimal | None = None
    audio_output: Decimal | None = None

    @classmethod
    def from_catalog(cls, data: Mapping[str, Any], entry: str = "tier") -> Tier:
        if not isinstance(data, Mapping):
            raise PriceError(entry, "tiers", f"must hold objects, not {data!r}")
        _check_fields(data, _TIER_FIELDS, entry)
        if "above_input_tokens" not in data:
            raise PriceError(entry, "above_input_tokens", "is required")
        return cls(
            above_input_tokens=_parse_int(data["above_input_tokens"], entry, "above_input_tokens"),
            **_tier_rates(data, entry),
        )

    def to_catalog(self) -> dict[str, Any]:
        return {"above_input_tokens": self.above_input_tokens, **_tier_rates_catalog(self)}


def _tier_rates(data: Mapping[str, Any], entry: str) -> dict[str, Any]:
    """The :data:`TIER_RATES` of a tier or service tier entry (``input`` required)."""
    rates: dict[str, Any] = {"input": _required_rate(data, entry, "input")}
    for name in TIER_RATES[1:]:
        rates[name] = parse_rate(data.get(name), entry, name)
    return rates


def _tier_rates_catalog(rates: Tier | ServiceTier) -> dict[str, Any]:
    data: dict[str, Any] = {"input": format_rate(rates.input)}
    for name in TIER_RATES[1:]:
        rate = getattr(rates, name)
        if rate is not None:
            data[name] = format_rate(rate)
    return data


@dataclass(frozen=True, slots=True)
class ServiceTier:
    """The rates of calls billed at service tier ``name`` (one of
    :data:`~cost_middleware.usage.service_tier.PRICED`), in place of the standard ones."""

    name: str
    input: Decimal
    output: Decimal | None = None
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None
    audio_input: Decimal | None = None
    audio_output: Decimal | None = None
    #: Long-context tiers of this service tier (the standard ones do not apply to it).
    tiers: tuple[Tier, ...] = ()

    @classmethod
    def from_catalog(cls, name: object, data: object, entry: str) -> ServiceTier:
        where = f"{entry} service tier {name!r}"
        if name not in PRICED:
            raise PriceError(entry, "service_tiers",
                             f"has tier {name!r}; known tiers: {', '.join(PRICED)}")
        if not isinstance(data, Mapping):
            raise PriceError(where, None, f"must be an object, not {data!r}")
        _check_fields(data, _SERVICE_TIER_FIELDS, where)
        tiers = data.get("tiers") or []
        if not isinstance(tiers, list | tuple):
            raise PriceError(where, "tiers", "must be a list of objects")
        return cls(name=str(name), **_tier_rates(data, where),
                   tiers=tuple(sorted((Tier.from_catalog(t, where) for t in tiers),
                                      key=lambda t: t.above_input_tokens)))

    def to_catalog(self) -> dict[str, Any]:
        data = _tier_rates_catalog(self)
        if self.tiers:
            data["tiers"] = [t.to_catalog() for t in self.tiers]
        return data


def service_tiers_from_catalog(value: object, entry: str) -> tuple[ServiceTier, ...]:
    """The ``service_tiers`` of a catalog entry (``{name: rates}``), in :data:`PRICED` order."""
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise PriceError(entry, "service_tiers", "must be an object of tier name to rates")
    found = [ServiceTier.from_catalog(name, rates, entry) for name, rates in value.items()]
    return tuple(sorted(found, key=lambda t: PRICED.index(t.name)))


def service_tiers_to_catalog(tiers: Sequence[ServiceTier]) -> dict[str, Any]:
    return {t.name: t.to_catalog() for t in tiers}


@dataclass(frozen=True, slots=True, kw_only=True)
class Price:
    """The price of ``(provider, model)`` from ``effective_from`` on (see the module doc)."""

    provider: str
    model: str
    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    #: 5-minute cache writes (and writes whose TTL is not reported).
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None
    #: USD per 1,000 web-search requests.
    web_search_per_1k: Decimal | None = None
    #: Audio input (not read from a cache) and audio output; None = the text rate.
    audio_input: Decimal | None = None
    audio_output: Decimal | None = None
    aliases: tuple[str, ...] = ()
    tiers: tuple[Tier, ...] = ()
    #: Rates of the service tiers that have their own (flex, priority, batch).
    service_tiers: tuple[ServiceTier, ...] = ()
    effective_from: datetime = EPOCH
    #: Position in the price history of the whole table; records keep the version they used.
    version: int = 0
    #: Where the rates come from (a URL, a document), for audits.
    source: str | None = None
    _standard: _Schedule = field(init=False, repr=False, compare=False)
    _service: dict[str, _Schedule] = field(init=False, repr=False, compare=False)
    #: Whether any audio rate differs from its text rate (else audio counts are not read).
    _audio: bool = field(init=False, repr=False, compare=False)
    _search_units: int = field(init=False, repr=False, compare=False)
    _exponent: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        entry = self.label
        if not isinstance(self.provider, str) or not self.provider.strip():
            raise PriceError(entry, "provider", "must be a non-empty string")
        if not isinstance(self.model, str) or not self.model.strip():
            raise PriceError(entry, "model", "must be a non-empty string")
        # The most decimal places of any rate: the scale of the integer arithmetic.
        scale = 0
        for name in RATE_FIELDS:
            rate = getattr(self, name)
            if rate is None and name not in ("input", "output"):
                continue
            if not isinstance(rate, Decimal):
                raise PriceError(entry, name, f"must be a Decimal, not {rate!r}")
            scale = max(scale, _check_rate(rate, entry, name))
        if self.effective_from.tzinfo is None:
            raise PriceError(entry, "effective_from", "must be timezone-aware")
        scale = max(scale, _tiers_scale(self.tiers, entry, "tiers"))
        for tiers in (self.tiers, *(s.tiers for s in self.service_tiers)):
            if len({t.above_input_tokens for t in tiers}) != len(tiers):
                raise PriceError(entry, "tiers", "has two tiers with the same above_input_tokens")
        if len({t.name for t in self.service_tiers}) != len(self.service_tiers):
            raise PriceError(entry, "service_tiers", "names a service tier twice")
        for service in self.service_tiers:
            if service.name not in PRICED:
                raise PriceError(entry, "service_tiers", f"has unknown tier {service.name!r}")
            where = f"service_tiers.{service.name}"
            scale = max(scale, _tiers_scale((service,), entry, where),
                        _tiers_scale(service.tiers, entry, f"{where}.tiers"))
        set_ = object.__setattr__
        set_(self, "_exponent", -(6 + scale))
        set_(self, "_standard", self._schedule((), self.tiers, scale))
        set_(self, "_service", {s.name: self._schedule((s,), s.tiers, scale)
                                for s in self.service_tiers})
        set_(self, "_audio", any(
            rates[5] != rates[0] or rates[6] != rates[4]
            for base, tiers in (self._standard, *self._service.values())
            for rates in (base, *(r for _, r in tiers))))
        search = self.web_search_per_1k
        # per_1k / 1000 USD per search = per_1k * 10**(3 + scale) units of 10**-(6 + scale) USD.
        set_(self, "_search_units", 0 if search is None else _scaled(search, 3 + scale))

    @property
    def label(self) -> str:
        return f"{self.provider}/{self.model}"

    def _schedule(self, over: tuple[ServiceTier, ...], tiers: Sequence[Tier],
                  scale: int) -> _Schedule:
        """The rates of the standard price overlaid by ``over`` (a service tier, or none), and
        of each of ``tiers`` overlaid on those."""
        ordered = sorted(tiers, key=lambda t: t.above_input_tokens, reverse=True)
        return (self._rates_for((*over, self), scale),
                tuple((t.above_input_tokens, self._rates_for((t, *over, self), scale))
                      for t in ordered))

    @staticmethod
    def _rates_for(layers: tuple[Tier | ServiceTier | Price, ...], scale: int) -> _Rates:
        """Each rate from the first of ``layers`` (most specific first, the price last) that
        states it; the input rate from the first; the module doc's fallbacks otherwise."""
        def first(name: str) -> Decimal | None:
            for layer in layers:
                rate: Decimal | None = getattr(layer, name)
                if rate is not None:
                    return rate
            return None

        inp = layers[0].input
        write = _or(first("cache_write"), inp)
        out = _or(first("output"), inp)  # the price always states output
        return (_scaled(inp, scale), _scaled(_or(first("cached_input"), inp), scale),
                _scaled(write, scale), _scaled(_or(first("cache_write_1h"), write), scale),
                _scaled(out, scale), _scaled(_or(first("audio_input"), inp), scale),
                _scaled(_or(first("audio_output"), out), scale))

    def cost(self, usage: Usage, service_tier: str | None = None) -> Decimal:
        """Exact USD cost of ``usage`` at this price, billed at ``service_tier`` (a name
        :func:`~cost_middleware.usage.service_tier.normalize` gives; an unpriced one or None:
        the standard rates)."""
        rates, tiers = self._standard
        if service_tier is not None and self._service:
            rates, tiers = self._service.get(service_tier, self._standard)
        input_tokens = usage.input_tokens
        for threshold, tier_rates in tiers:
            if input_tokens > threshold:
                rates = tier_rates
                break
        inp, cached_rate, write_rate, write_1h_rate, out, audio_in_rate, audio_out_rate = rates
        cached = usage.cached_input_tokens
        writes = usage.cache_write_input_tokens
        writes_1h = usage.cache_write_1h_input_tokens or 0
        if writes_1h > writes:
            writes_1h = writes
        base = input_tokens - cached - writes
        if base < 0:  # inconsistent counts: never bill a negative amount
            base = 0
        output_tokens = usage.output_tokens
        units = (base * inp + cached * cached_rate + (writes - writes_1h) * write_rate
                 + writes_1h * write_1h_rate + output_tokens * out)
        if self._audio:
            # Audio tokens are already billed above at the text rate: add the difference.
            audio = usage.input_audio_tokens
            if audio:
                units += (audio if audio < base else base) * (audio_in_rate - inp)
            audio = usage.output_audio_tokens
            if audio:
                units += (audio if audio < output_tokens else output_tokens) * (
                    audio_out_rate - out)
        searches = usage.web_search_requests
        if searches and self._search_units:
            units += searches * self._search_units
        return Decimal(units).scaleb(self._exponent, _EXACT)

    @classmethod
    def from_catalog(cls, data: Mapping[str, Any], *, index: int | None = None) -> Price:
        """Build from one catalog entry (DESIGN "Catalog file"); raises :class:`PriceError`."""
        fallback = "entry" if index is None else f"entry #{index}"
        if not isinstance(data, Mapping):
            raise PriceError(fallback, None, f"must be an object, not {type(data).__name__}")
        provider, model = data.get("provider"), data.get("model")
        named = isinstance(provider, str) and isinstance(model, str) and provider and model
        entry = f"{provider}/{model} ({fallback})" if named else fallback
        _check_fields(data, _PRICE_FIELDS, entry)
        provider = _required_name(data, entry, "provider")
        model = _required_name(data, entry, "model")
        aliases = data.get("aliases") or []
        if not isinstance(aliases, list | tuple) or not all(
            isinstance(a, str) and a.strip() for a in aliases
        ):
            raise PriceError(entry, "aliases", "must be a list of model names")
        tiers_data = data.get("tiers") or []
        if not isinstance(tiers_data, list | tuple):
            raise PriceError(entry, "tiers", "must be a list of objects")
        tiers = sorted((Tier.from_catalog(t, entry) for t in tiers_data),
                       key=lambda t: t.above_input_tokens)
        effective = data.get("effective_from")
        version = data.get("version", 0)
        source = data.get("source")
        if source is not None and not isinstance(source, str):
            raise PriceError(entry, "source", "must be a string")
        try:
            return cls(
                provider=provider,
                model=model,
                input=_required_rate(data, entry, "input"),
                output=_required_rate(data, entry, "output"),
                cached_input=parse_rate(data.get("cached_input"), entry, "cached_input"),
                cache_write=parse_rate(data.get("cache_write"), entry, "cache_write"),
                cache_write_1h=parse_rate(data.get("cache_write_1h"), entry, "cache_write_1h"),
                web_search_per_1k=parse_rate(data.get("web_search_per_1k"), entry,
                                             "web_search_per_1k"),
                audio_input=parse_rate(data.get("audio_input"), entry, "audio_input"),
                audio_output=parse_rate(data.get("audio_output"), entry, "audio_output"),
                aliases=tuple(a.strip() for a in aliases),
                tiers=tuple(tiers),
                service_tiers=service_tiers_from_catalog(data.get("service_tiers"), entry),
                effective_from=EPOCH if effective is None else parse_datetime(effective, entry),
                version=0 if version is None else _parse_int(version, entry, "version"),
                source=source,
            )
        except PriceError as exc:  # checks of the built price: name the catalog entry
            raise PriceError(entry, exc.field, exc.reason) from None

    def to_catalog(self) -> dict[str, Any]:
        """The catalog entry for this price (decimals as strings, so nothing is rounded).

        The billed dimensions of revision 0005 appear only when set, so an entry without
        them stays readable by an older version (a Redis tier shared during an upgrade)."""
        data: dict[str, Any] = {
            "provider": self.provider,
            "model": self.model,
            "aliases": list(self.aliases),
            "input": format_rate(self.input),
            "cached_input": _format_optional(self.cached_input),
            "cache_write": _format_optional(self.cache_write),
            "cache_write_1h": _format_optional(self.cache_write_1h),
            "output": format_rate(self.output),
            "web_search_per_1k": _format_optional(self.web_search_per_1k),
            "tiers": [t.to_catalog() for t in self.tiers],
            "effective_from": self.effective_from.astimezone(UTC).isoformat().replace(
                "+00:00", "Z"),
            "version": self.version,
            "source": self.source,
        }
        for name in ("audio_input", "audio_output"):
            rate = getattr(self, name)
            if rate is not None:
                data[name] = format_rate(rate)
        if self.service_tiers:
            data["service_tiers"] = service_tiers_to_catalog(self.service_tiers)
        return data

    def same_rates(self, other: Price) -> bool:
        """Equal in everything but the version (used to skip rewriting unchanged rows)."""
        return all(getattr(self, f) == getattr(other, f) for f in (
            "provider", "model", *RATE_FIELDS, "aliases", "tiers", "service_tiers",
            "effective_from", "source"))


def _tiers_scale(tiers: Sequence[Tier | ServiceTier], entry: str, where: str) -> int:
    """Check the rates of ``tiers``; the most decimal places any has."""
    scale = 0
    for tier in tiers:
        for name in TIER_RATES:
            rate = getattr(tier, name)
            if rate is not None:
                scale = max(scale, _check_rate(rate, entry, f"{where}.{name}"))
    return scale


def _or(rate: Decimal | None, fallback: Decimal) -> Decimal:
    return fallback if rate is None else rate
