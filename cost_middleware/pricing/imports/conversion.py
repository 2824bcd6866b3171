"""What a source format's converter returns, the format names, and the exact rate arithmetic.

A converter reads decoded source data (numbers as ``Decimal``: JSON parsed with
``parse_float=Decimal``, so ``2.5e-06`` is the decimal the file says) and returns a
:class:`Conversion`: our rows, the entries it skipped and why, and the entries whose figures are
corrupt (which the guards refuse).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Context, Decimal

from cost_middleware.pricing.price import Price, PriceError

#: The source formats, by the names ``--format`` takes.
CATALOG = "catalog"
LITELLM = "litellm"
GENAI_PRICES = "genai-prices"
FORMATS = (CATALOG, LITELLM, GENAI_PRICES)

#: Enough digits that a power-of-ten shift of any source figure stays exact.
_EXACT = Context(prec=60)


class BadRate(ValueError):
    """A source figure that is not a finite, non-negative number: the source is corrupt."""


@dataclass(frozen=True, slots=True)
class Skip:
    """A source entry left out: ``reason`` groups entries, ``detail`` is this entry's own."""

    name: str
    reason: str
    detail: str = ""
    #: Our ``(provider, model)`` when the entry maps to one: the source still has that model.
    key: tuple[str, str] | None = None


@dataclass(slots=True)
class Conversion:
    """Our rows from one source (each with the source's name for it), skips, corrupt entries."""

    entries: list[tuple[str, Price]] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    invalid: list[Skip] = field(default_factory=list)

    def skip(self, name: str, reason: str, detail: str = "",
             key: tuple[str, str] | None = None) -> None:
        self.skipped.append(Skip(name, reason, detail, key))

    def add(self, name: str, key: tuple[str, str],
            build: Callable[[], Sequence[Price] | str]) -> None:
        """Add the rows ``build`` makes of source entry ``name``, or keep why it has none: the
        reason it returns (a skip), a corrupt figure (:class:`BadRate`: invalid), or a row our
        prices cannot hold (:class:`PriceError`, e.g. too many decimal places: a skip)."""
        try:
            rows = build()
        except BadRate as exc:
            self.invalid.append(Skip(name, "corrupt rate", str(exc), key))
            return
        except PriceError as exc:
            self.skip(name, "not representable", exc.reason, key)
            return
        if isinstance(rows, str):
            self.skip(name, rows, "", key)
        else:
            self.entries.extend((name, row) for row in rows)


def scaled_rate(value: object, exponent: int, name: str) -> Decimal:
    """The source figure ``value`` times ``10**exponent``, exactly.

    ``value`` is a number as decoded (``Decimal`` or int; a float is read as its shortest repr,
    the literal it was parsed from); anything else, or a negative or non-finite figure, raises
    :class:`BadRate`.
    """
    if isinstance(value, float):
        value = Decimal(repr(value))
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise BadRate(f"{name} is not a number: {value!r}")
    rate = Decimal(value)
    if not rate.is_finite() or rate < 0:
        raise BadRate(f"{name} must be a non-negative number, not {value}")
    return rate.scaleb(exponent, _EXACT) if exponent else rate
