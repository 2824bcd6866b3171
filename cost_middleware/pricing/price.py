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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Context, Decimal, InvalidOperation
from typing import Any

from cost_middleware.usage.model import Usage
from cost_middleware.utc import as_utc

#: Decimal places a rate may have; the same as ``schema.RATE_SCALE``.
RATE_DECIMALS = 9
#: Effective date of a price that has always applied.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: Enough digits for any realistic cost, independent of the caller's decimal context.
_EXACT = Context(prec=60)
#: (input, cached_input, cache_write_5m, cache_write_1h, output) in integer rate units.
_Rates = tuple[int, int, int, int, int]

RATE_FIELDS = ("input", "cached_input", "cache_write", "cache_write_1h", "output",
                "web_search_per_1k")
_PRICE_FIELDS = frozenset({"provider", "model", "aliases", *RATE_FIELDS, "tiers",
                           "effective_from", "version", "source"})
TIER_RATES = ("input", "output", "cached_input", "cache_write", "cache_write_1h")
_TIER_FIELDS = frozenset({"above_input_tokens", *TIER_RATES})


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

    @classmethod
    def from_catalog(cls, data: Mapping[str, Any], entry: str = "tier") -> Tier:
        if not isinstance(data, Mapping):
            raise PriceError(entry, "tiers", f"must hold objects, not {data!r}")
        _check_fields(data, _TIER_FIELDS, entry)
        if "above_input_tokens" not in data:
            raise PriceError(entry, "above_input_tokens", "is required")
        return cls(
            above_input_tokens=_parse_int(data["above_input_tokens"], entry, "above_input_tokens"),
            input=_required_rate(data, entry, "input"),
            output=parse_rate(data.get("output"), entry, "output"),
            cached_input=parse_rate(data.get("cached_input"), entry, "cached_input"),
            cache_write=parse_rate(data.get("cache_write"), entry, "cache_write"),
            cache_write_1h=parse_rate(data.get("cache_write_1h"), entry, "cache_write_1h"),
        )

    def to_catalog(self) -> dict[str, Any]:
        data: dict[str, Any] = {"above_input_tokens": self.above_input_tokens,
                                "input": format_rate(self.input)}
        for name in TIER_RATES[1:]:
            rate = getattr(self, name)
            if rate is not None:
                data[name] = format_rate(rate)
        return data


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
    aliases: tuple[str, ...] = ()
    tiers: tuple[Tier, ...] = ()
    effective_from: datetime = EPOCH
    #: Position in the price history of the whole table; records keep the version they used.
    version: int = 0
    #: Where the rates come from (a URL, a document), for audits.
    source: str | None = None
    _rates: _Rates = field(init=False, repr=False, compare=False)
    _tier_rates: tuple[tuple[int, _Rates], ...] = field(init=False, repr=False, compare=False)
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
        if len({t.above_input_tokens for t in self.tiers}) != len(self.tiers):
            raise PriceError(entry, "tiers", "has two tiers with the same above_input_tokens")
        for tier in self.tiers:
            for name in TIER_RATES:
                rate = getattr(tier, name)
                if rate is not None:
                    scale = max(scale, _check_rate(rate, entry, f"tiers.{name}"))
        set_ = object.__setattr__
        set_(self, "_exponent", -(6 + scale))
        set_(self, "_rates", self._rates_for(None, scale))
        ordered = sorted(self.tiers, key=lambda t: t.above_input_tokens, reverse=True)
        tier_rates = tuple((t.above_input_tokens, self._rates_for(t, scale)) for t in ordered)
        set_(self, "_tier_rates", tier_rates)
        search = self.web_search_per_1k
        # per_1k / 1000 USD per search = per_1k * 10**(3 + scale) units of 10**-(6 + scale) USD.
        set_(self, "_search_units", 0 if search is None else _scaled(search, 3 + scale))

    @property
    def label(self) -> str:
        return f"{self.provider}/{self.model}"

    def _rates_for(self, tier: Tier | None, scale: int) -> _Rates:
        if tier is None:
            inp = self.input
            cached = self.cached_input if self.cached_input is not None else inp
            write = self.cache_write if self.cache_write is not None else inp
            write_1h = self.cache_write_1h if self.cache_write_1h is not None else write
            out = self.output
        else:
            inp = tier.input
            cached = _or(tier.cached_input, _or(self.cached_input, inp))
            write = _or(tier.cache_write, _or(self.cache_write, inp))
            write_1h = _or(tier.cache_write_1h, _or(self.cache_write_1h, write))
            out = _or(tier.output, self.output)
        return (_scaled(inp, scale), _scaled(cached, scale), _scaled(write, scale),
                _scaled(write_1h, scale), _scaled(out, scale))

    def cost(self, usage: Usage) -> Decimal:
        """Exact USD cost of ``usage`` at this price."""
        inp, cached_rate, write_rate, write_1h_rate, out = self._rates
        input_tokens = usage.input_tokens
        for threshold, rates in self._tier_rates:
            if input_tokens > threshold:
                inp, cached_rate, write_rate, write_1h_rate, out = rates
                break
        cached = usage.cached_input_tokens
        writes = usage.cache_write_input_tokens
        writes_1h = usage.cache_write_1h_input_tokens or 0
        if writes_1h > writes:
            writes_1h = writes
        base = input_tokens - cached - writes
        if base < 0:  # inconsistent counts: never bill a negative amount
            base = 0
        units = (base * inp + cached * cached_rate + (writes - writes_1h) * write_rate
                 + writes_1h * write_1h_rate + usage.output_tokens * out)
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
                aliases=tuple(a.strip() for a in aliases),
                tiers=tuple(tiers),
                effective_from=EPOCH if effective is None else parse_datetime(effective, entry),
                version=0 if version is None else _parse_int(version, entry, "version"),
                source=source,
            )
        except PriceError as exc:  # checks of the built price: name the catalog entry
            raise PriceError(entry, exc.field, exc.reason) from None

    def to_catalog(self) -> dict[str, Any]:
        """The catalog entry for this price (decimals as strings, so nothing is rounded)."""
        return {
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

    def same_rates(self, other: Price) -> bool:
        """Equal in everything but the version (used to skip rewriting unchanged rows)."""
        return all(getattr(self, f) == getattr(other, f) for f in (
            "provider", "model", *RATE_FIELDS, "aliases", "tiers", "effective_from", "source"))


def _or(rate: Decimal | None, fallback: Decimal) -> Decimal:
    return fallback if rate is None else rate
