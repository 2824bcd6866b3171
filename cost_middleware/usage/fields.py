"""Validated reads of untrusted usage values, and the one place a :class:`Usage` is built.

Provider bodies are untrusted: a count must be a plain JSON integer in range, otherwise the
whole usage is refused (:class:`InvalidUsage`) rather than guessed at. Broken text is not a
reason to lose them: JSON that orjson refuses only for an invalid UTF-8 byte or an escaped
lone surrogate (models and compatible servers emit broken multibyte characters) is read
again with those replaced by U+FFFD (:func:`reparse`); the numbers are untouched.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import fields as dataclass_fields
from decimal import Decimal
from typing import Any

import orjson

from cost_middleware.usage.model import Usage

#: No single call comes near a trillion tokens; anything above is garbage, and the bound
#: keeps sums far inside the 64-bit columns.
MAX_TOKENS = 10**12
#: Model names, tiers and similar labels are cut to the widths of the record columns.
MAX_LABEL = 256

EMPTY: Mapping[str, Any] = {}


class InvalidUsage(ValueError):
    """A usage value of the wrong type or out of range."""


def loads(data: bytes) -> Any:
    """Parsed JSON (repaired, see :func:`reparse`), or None when ``data`` is not valid JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        found = reparse(data)
        return None if found is None else found[0]


#: Escapes of lone UTF-16 surrogates, which orjson refuses: a high one not followed by a low
#: one, a low one not preceded by a high one. The backslash must not follow another (an
#: escaped backslash then ``ud83d`` is plain text; an escape after an escaped backslash is
#: missed, and such a body stays unread).
_LONE_HIGH = re.compile(rb"(?<!\\)\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})")
_LONE_LOW = re.compile(rb"(?<!\\u[dD][89abAB][0-9a-fA-F]{2})(?<!\\)\\u[dD][c-fC-F][0-9a-fA-F]{2}")
_REPLACEMENT = rb"\\ufffd"


def reparse(data: bytes) -> tuple[Any, bytes] | None:
    """JSON that orjson refused, read again with each invalid UTF-8 sequence and each escaped
    lone surrogate replaced by U+FFFD: the value and the text it was read from, or None when
    ``data`` has neither (nothing to repair) or still does not parse."""
    fixed = data if data.isascii() else data.decode("utf-8", "replace").encode()
    if b"\\u" in fixed:
        fixed = _LONE_LOW.sub(_REPLACEMENT, _LONE_HIGH.sub(_REPLACEMENT, fixed))
    if fixed == data:
        return None
    try:
        return orjson.loads(fixed), fixed
    except orjson.JSONDecodeError:
        return None


def checked(value: Any, key: str) -> int:
    """``value`` as a token count (not None), or :class:`InvalidUsage`."""
    # ``type is int`` also refuses bools, which are ints to Python.
    if type(value) is not int or not 0 <= value <= MAX_TOKENS:
        raise InvalidUsage(key)
    return value


def count(obj: Mapping[str, Any], key: str) -> int | None:
    """A token count: None when absent or null, :class:`InvalidUsage` when not a sane int."""
    value = obj.get(key)
    if value is None:
        return None
    return checked(value, key)


def cache_counts(
    usage: Any, where: str, names: tuple[str, str, str, str],
) -> tuple[int, int, int, int] | None:
    """``(input, output, cache reads, cache writes)`` of a usage object whose input count
    leaves out the cache (Anthropic's, Bedrock's), keys given in that order. None when the
    object is absent or has neither input nor output; :class:`InvalidUsage` (``where``) when
    it is not an object."""
    if usage is None:
        return None
    if type(usage) is not dict:
        raise InvalidUsage(where)
    base, output = count(usage, names[0]), count(usage, names[1])
    if base is None and output is None:
        return None
    return base or 0, output or 0, count(usage, names[2]) or 0, count(usage, names[3]) or 0


def section(obj: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    """A nested object such as ``prompt_tokens_details``: None when absent or null."""
    value = obj.get(key)
    if value is None or type(value) is dict:
        return value
    raise InvalidUsage(key)


def mapping(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a JSON object, else an empty one (for optional structure)."""
    return value if type(value) is dict else EMPTY


def label(value: Any) -> str | None:
    """A non-empty string (model, tier, deployment...), cut to the column width, else None."""
    if type(value) is str and value:
        return value[:MAX_LABEL]
    return None


def cache_split(
    writes: int, five_min: int | None, one_hour: int | None
) -> tuple[int | None, int | None]:
    """The 5-minute/1-hour split of cache writes: zeros without writes, None when unknown.

    A reported split is only trusted when it adds up to the writes.
    """
    if writes == 0:
        return 0, 0
    if five_min is None and one_hour is None:
        return None, None
    five, hour = five_min or 0, one_hour or 0
    if five + hour != writes:
        return None, None
    return five, hour


def take(source: Mapping[str, Any], names: Mapping[str, str], fields: dict[str, Any]) -> None:
    """Copy the counts ``source`` has under ``names``' keys into ``fields`` (renamed).

    Walks the keys present (usually a handful) rather than looking up every known one.
    """
    for key, value in source.items():
        field = names.get(key)
        if field is not None and value is not None:
            fields[field] = checked(value, key)


def make_usage(input_tokens: int, output_tokens: int, fields: dict[str, Any]) -> Usage:
    """A normalized :class:`Usage` from totals and optional ``Usage`` fields (consumed).

    Subsets that exceed their totals are refused. Without a reported TTL split, writes get
    the default one (zeros without writes, unknown with).
    """
    cached = fields.get("cached_input_tokens", 0)
    writes = fields.get("cache_write_input_tokens", 0)
    reasoning = fields.get("reasoning_tokens")
    if (
        input_tokens > MAX_TOKENS
        or output_tokens > MAX_TOKENS
        or cached + writes > input_tokens
        or (reasoning is not None and reasoning > output_tokens)
    ):
        raise InvalidUsage("totals")
    if "cache_write_5m_input_tokens" not in fields:
        fields["cache_write_5m_input_tokens"], fields["cache_write_1h_input_tokens"] = (
            cache_split(writes, None, None)
        )
    return Usage(input_tokens, output_tokens, **fields)


#: Counts every :class:`Usage` carries; its other integer fields may be None (not reported).
_COUNTS = ("input_tokens", "output_tokens", "cached_input_tokens", "cache_write_input_tokens")
_OPTIONAL_COUNTS = tuple(f.name for f in dataclass_fields(Usage)
                         if f.name not in (*_COUNTS, "reported_cost_usd"))


def check_usage(usage: Usage) -> None:
    """Hold a :class:`Usage` built outside the readers (``record_usage``) to their rules.

    Each count must pass :func:`checked` and the subsets :func:`make_usage`'s totals rule
    (the copy it builds is not needed); otherwise :class:`InvalidUsage`.
    """
    rest: dict[str, Any] = {}
    for key in _COUNTS[2:]:
        rest[key] = checked(getattr(usage, key), key)
    for key in _OPTIONAL_COUNTS:
        value = getattr(usage, key)
        rest[key] = None if value is None else checked(value, key)
    make_usage(checked(usage.input_tokens, "input_tokens"),
               checked(usage.output_tokens, "output_tokens"), rest)


_NUMBER = rb"\s*:\s*(-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?)"


def exact_number(raw: bytes, key: str, value: Any) -> Decimal | None:
    """The JSON number ``key`` had in ``raw``, exactly as written (JSON parsers give floats).

    ``value`` is what the parser read; of the literals written for ``key`` the one equal to
    it wins. Negative or non-numeric values give None.
    """
    if type(value) not in (int, float) or value < 0:
        return None
    for match in re.finditer(b'"' + re.escape(key.encode()) + b'"' + _NUMBER, raw):
        literal = match.group(1)
        if float(literal) == value:
            return Decimal(literal.decode())
    return Decimal(repr(value))
