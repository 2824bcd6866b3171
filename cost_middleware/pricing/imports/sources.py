"""Reading an import's SOURCE: a file, ``-`` (stdin), or the data inside an installed package.

``litellm`` is the map LiteLLM ships beside its code (found without importing litellm, whose
import takes seconds and tries the network); ``genai-prices`` is the data genai-prices ships as
Python objects (``genai_prices.data``, imported: it does no I/O). JSON is decoded with every
number exact. The format is detected from the content unless given; rows are labelled with
where they came from (``litellm 1.110.2``, ``genai-prices 0.2.3``, ``litellm prices.json``, or
for our own catalog format the file name), and that label's family (its first word, or the
whole file name for a catalog) tells which existing rows an earlier import of it wrote.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

from cost_middleware.pricing.imports import catalog, genai_prices, litellm
from cost_middleware.pricing.imports.conversion import (
    CATALOG,
    FORMATS,
    GENAI_PRICES,
    LITELLM,
    Conversion,
)

STDIN = "-"
#: The file LiteLLM ships inside its package.
LITELLM_FILE = "model_prices_and_context_window_backup.json"

_CONVERTERS: dict[str, Callable[[Any, str, datetime], Conversion]] = {
    CATALOG: catalog.convert, LITELLM: litellm.convert, GENAI_PRICES: genai_prices.convert}
_PACKAGES = {LITELLM: "litellm", GENAI_PRICES: "genai-prices"}
#: Values looked at to recognize a LiteLLM map.
_PROBE = 20


class SourceError(ValueError):
    """A SOURCE that cannot be read or understood; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class Loaded:
    """A source read and converted."""

    label: str
    family: str
    format: str
    #: The format was recognized from the content (not given).
    detected: bool
    conversion: Conversion


def load(source: str | os.PathLike[str], *, source_format: str | None = None,
         at: datetime, stdin: BinaryIO | None = None) -> Loaded:
    """Read ``source``, pick its format (``source_format``, else detected) and convert it."""
    if source_format is not None and source_format not in FORMATS:
        raise SourceError(f"unknown format {source_format!r}: use one of {', '.join(FORMATS)}")
    name = os.fspath(source)
    found: str | None
    if name in _PACKAGES:
        data, label = _package_data(name)
        found = name
    else:
        label = "stdin" if name == STDIN else Path(name).name
        data = _decode(_read(name, stdin), label)
        found = detect(data)
    detected = source_format is None and name not in _PACKAGES
    if source_format is None:
        if found is None:
            raise SourceError(f"cannot tell the format of {label}: it is not our catalog, a "
                              f"LiteLLM map or genai-prices data (give --format)")
        source_format = found
    elif found not in (None, source_format) or not _shaped_like(data, source_format):
        raise SourceError(f"{label} is not {source_format} data"
                          + (f" (it looks like {found})" if found else ""))
    if name not in _PACKAGES and source_format != CATALOG:
        label = f"{source_format} {label}"
    family = label if source_format == CATALOG else source_format
    conversion = _CONVERTERS[source_format](data, label, at)
    return Loaded(label, family, source_format, detected, conversion)


def detect(data: Any) -> str | None:
    """The format ``data`` (decoded JSON) is in, or None."""
    if isinstance(data, Mapping):
        if isinstance(data.get("prices"), list):
            return CATALOG
        if litellm.SAMPLE_KEY in data:
            return LITELLM
        probe = [value for _, value in zip(range(_PROBE), data.values(), strict=False)]
        if any(isinstance(v, Mapping) and "litellm_provider" in v for v in probe):
            return LITELLM
    elif isinstance(data, list) and data and all(
            isinstance(p, Mapping) and "models" in p and "id" in p for p in data[:_PROBE]):
        return GENAI_PRICES
    return None


def in_family(row_source: str | None, family: str) -> bool:
    """Whether a row whose ``source`` is ``row_source`` came from an import of ``family``."""
    return row_source is not None and (
        row_source == family or row_source.startswith(family + " "))


def _shaped_like(data: Any, source_format: str) -> bool:
    return isinstance(data, list) if source_format == GENAI_PRICES else isinstance(data, Mapping)


def _read(name: str, stdin: BinaryIO | None) -> bytes:
    if name == STDIN:
        return (stdin or sys.stdin.buffer).read()
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise SourceError(f"cannot read {name}: {exc.strerror or exc}") from None


def _decode(text: bytes, label: str) -> Any:
    try:
        return json.loads(text, parse_float=Decimal)
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for binary files
        raise SourceError(f"{label} is not valid JSON ({exc})") from None


def _package_data(name: str) -> tuple[Any, str]:
    """The data a package ships, and its label (package and version)."""
    package = _PACKAGES[name]
    try:
        version = metadata.version(package)
    except metadata.PackageNotFoundError:
        raise SourceError(f"{package} is not installed (pip install {package}), or give the "
                          f"path of its data file") from None
    label = f"{name} {version}"
    if name == LITELLM:
        path = litellm_file()
        if path is None:
            raise SourceError(f"litellm {version} ships no {LITELLM_FILE}")
        return _decode(path.read_bytes(), label), label
    providers = importlib.import_module("genai_prices.data").providers
    return genai_prices.from_objects(providers), label


def litellm_file() -> Path | None:
    """The price map inside the installed litellm package (found without importing it)."""
    spec = importlib.util.find_spec("litellm")
    for folder in spec.submodule_search_locations or () if spec is not None else ():
        if (Path(folder) / LITELLM_FILE).is_file():
            return Path(folder) / LITELLM_FILE
    return None
