"""Which price rows may price a model an extractor reported, best first.

:func:`candidates` turns ``(extraction provider, model)`` into an ordered list of
``(price provider, model name)`` pairs. The book tries them in order, each as an exact row and
then as an alias, and keeps the first that exists; it computes this once per ``(provider,
model)`` and caches the outcome, so nothing here runs on a cache hit.

Names are tried as reported, lower-cased, then with one version suffix after another removed
(``gpt-4o-2024-08-06`` → ``gpt-4o``, ``claude-sonnet-4-5@20250929`` → ``claude-sonnet-4-5``,
``…-v1:0``, ``-latest``, ``-0613``/``-2411``/``-001``, ``-03-2025``). Only date and version
suffixes are removed, never words, so ``gpt-4o-mini`` can never become ``gpt-4o`` and
``claude-opus-4-1`` never ``claude-opus-4``. A dated preview keeps ``-preview``
(``gemini-2.5-flash-preview-05-20`` → ``gemini-2.5-flash-preview``): previews are priced apart.

Price providers (the ``provider`` of ``model_prices`` rows), by extraction provider:

* ``openai``, ``anthropic``, ``mistral``, ``cohere``, ``deepseek``, ``groq``, ``together``,
  ``vllm``, ``ollama``: rows of the same name (local ``ollama``/``vllm`` models have no bundled
  rows, so they stay unpriced until someone sets a price, e.g. 0).
* ``google_gemini`` → ``google``; ``vertex_gemini`` → ``vertex_gemini`` rows, then ``google``.
* ``vertex_anthropic`` → ``vertex_anthropic`` rows, then ``anthropic`` list prices (Vertex's
  regional endpoints cost more for Claude 4.5+; add ``vertex_anthropic`` rows to bill that).
* ``azure_openai`` → ``azure_openai`` rows (the Azure price sheet, by deployment type), then
  OpenAI's list prices as an approximation.
* ``aws_bedrock`` → ``aws_bedrock`` rows named as Bedrock names them without the geography:
  ``anthropic.claude-sonnet-4-5`` carries the regional/geographic rate (``us.``, ``eu.``,
  ``apac.``, ``jp.``, ``au.`` profiles and bare ids) and ``global.anthropic.claude-sonnet-4-5``
  the global-profile rate. A ``global.`` id with no global row falls back to the regional row
  (the two only differ from Claude 4.5 on). ARNs of foundation models and inference profiles
  are reduced to the id after the last ``/``. Claude ids then fall back to ``anthropic`` list
  prices (exact for global profiles and pre-4.5 models, 10% low for regional 4.5+ calls when
  the Bedrock row is missing). Other vendors on Bedrock have no fallback: their Bedrock prices
  differ from the vendor's own.
* ``openrouter`` and ``openai_compatible`` → their own rows, then, for ``vendor/model`` names,
  the vendor's rows (``anthropic/claude-sonnet-4.5`` → ``anthropic`` ``claude-sonnet-4-5``).
  OpenRouter variants such as ``:free`` are not stripped: they are priced differently.
* Any other provider → rows of the same name.

Claude names from routers use dots (``claude-sonnet-4.5``); for Anthropic rows the dotted
version is also tried with dashes.
"""

from __future__ import annotations

import re
from typing import TypeVar

_T = TypeVar("_T")

#: Price providers to try, in order, for each extraction provider (default: the same name).
PRICE_PROVIDERS: dict[str, tuple[str, ...]] = {
    "google_gemini": ("google",),
    "vertex_gemini": ("vertex_gemini", "google"),
    "vertex_anthropic": ("vertex_anthropic", "anthropic"),
    "azure_openai": ("azure_openai", "openai"),
}

#: ``vendor/`` prefixes of router model names → price provider.
VENDORS: dict[str, str] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "google": "google",
    "mistralai": "mistral",
    "mistral": "mistral",
    "deepseek": "deepseek",
    "cohere": "cohere",
}

#: Longer names cannot be a row (``model_prices.model`` is 256 characters) and are not parsed.
MAX_MODEL_LENGTH = 256

_ROUTERS = frozenset({"openrouter", "openai_compatible"})
_ANTHROPIC_STYLE = frozenset({"anthropic", "vertex_anthropic"})
#: Geography prefixes of Bedrock inference profiles that bill the regional rate.
_BEDROCK_GEOS = frozenset({"us", "us-gov", "eu", "apac", "jp", "au", "ca"})

# One version suffix each; the first that matches is removed, then the search starts again.
_SUFFIXES = tuple(re.compile(p) for p in (
    r"@[^@/]*$",                    # Vertex: claude-sonnet-4-5@20250929, @latest, @001
    r"-v\d+:\d+(?::[\w.-]*)?$",     # Bedrock: -v1:0, -v2:0, -v1:0:200k
    r"[-:]latest$",                 # -latest aliases, Ollama's :latest tag
    r"-\d{4}-\d{2}-\d{2}$",         # OpenAI snapshots: -2024-08-06
    r"-\d{8}$",                     # Anthropic snapshots: -20250929
    r"-\d{2}-\d{4}$",               # Cohere: -03-2025
    r"(?<=-preview)-\d{2}-\d{2}$",  # Gemini previews: -preview-05-20 keeps -preview
    r"-\d{3,4}$",                   # OpenAI -0613/-0125, Mistral -2411, Gemini -001
))


def strip_suffix(name: str) -> str | None:
    """``name`` without its last date/version suffix, or None when it has none."""
    for pattern in _SUFFIXES:
        stripped = pattern.sub("", name, count=1)
        if stripped != name and stripped:
            return stripped
    return None


def name_variants(name: str, price_provider: str = "") -> list[str]:
    """``name`` as given, normalized (lower case, provider spelling), then de-suffixed."""
    name = name.strip()
    current = name.lower()
    if price_provider == "google" and "models/" in current:
        current = current.rsplit("models/", 1)[1]
    if price_provider in _ANTHROPIC_STYLE:
        current = current.replace(".", "-")
    variants = [name, current]
    while (stripped := strip_suffix(current)) is not None:
        variants.append(stripped)
        current = stripped
    return _unique(variants)


def candidates(provider: str, model: str) -> tuple[tuple[str, str], ...]:
    """Every ``(price provider, name)`` that may price ``model`` from ``provider``, best first."""
    model = model.strip()
    if not model or len(model) > MAX_MODEL_LENGTH:
        return ()
    pairs: list[tuple[str, str]] = []
    if provider == "aws_bedrock":
        pairs.extend(_bedrock(model))
    else:
        for price_provider in PRICE_PROVIDERS.get(provider, (provider,)):
            pairs.extend((price_provider, n) for n in name_variants(model, price_provider))
        vendor, sep, rest = model.partition("/")
        if provider in _ROUTERS and sep and rest and vendor.lower() in VENDORS:
            vendor_provider = VENDORS[vendor.lower()]
            pairs.extend((vendor_provider, n) for n in name_variants(rest, vendor_provider))
    return tuple(_unique(pairs))


def _bedrock(model: str) -> list[tuple[str, str]]:
    if model.startswith("arn:") and "/" in model:
        model = model.rsplit("/", 1)[1]
    model = model.lower()
    geo, dot, rest = model.partition(".")
    regional = rest if dot and (geo == "global" or geo in _BEDROCK_GEOS) else model
    # As reported first, so a row for one geography (``eu.…``) can override the regional one.
    pairs = [("aws_bedrock", n) for n in name_variants(model) + name_variants(regional)]
    vendor, dot, vendor_model = regional.partition(".")
    if vendor == "anthropic" and dot:
        pairs.extend(("anthropic", n) for n in name_variants(vendor_model, "anthropic"))
    return pairs


def _unique(items: list[_T]) -> list[_T]:
    return list(dict.fromkeys(items))
