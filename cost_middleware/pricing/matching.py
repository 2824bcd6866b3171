"""Which price rows may price a model an extractor reported, best first; the provider names.

:func:`candidates` turns ``(record provider, model)`` into an ordered list of ``(price
provider, model name)`` pairs. The book tries them in order, each as an exact row and then as
an alias, and keeps the first that exists; it computes this once per ``(provider, model)`` and
caches the outcome, so nothing here runs on a cache hit.

Provider names: :data:`PRICE_PROVIDERS` is the one table of them, keyed by every provider a
record can name (the constants of the ``usage`` family modules). Each tries rows under its own
name first, then its fallbacks, so a row set under the name a report shows
(``prices set google_gemini …``) prices that provider's next record, and rows under the older
shared names (``google``, ``anthropic`` for Claude elsewhere, ``openai`` for Azure) keep
pricing what they priced:

* ``google_gemini`` → ``google_gemini`` rows, then ``google`` (Google's list prices, the name
  the bundled catalog uses); ``vertex_gemini`` → ``vertex_gemini`` rows, then ``google``.
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
  prices, dated name first (exact for global profiles and pre-4.5 models, 10% low for regional
  4.5+ calls when the Bedrock row is missing). Other vendors on Bedrock have no fallback:
  their Bedrock prices differ from the vendor's own.
* ``openrouter`` and ``openai_compatible`` → their own rows, then, for ``vendor/model`` names,
  the vendor's rows (``anthropic/claude-sonnet-4.5`` → ``anthropic`` ``claude-sonnet-4-5``).
  OpenRouter variants such as ``:free`` are not stripped: they are priced differently.
* Every other provider (``openai``, ``anthropic``, ``mistral``, ``cohere``, ``deepseek``,
  ``groq``, ``together``, ``vllm``, ``ollama``) → rows of the same name (local ``ollama``/
  ``vllm`` models have no bundled rows, so they stay unpriced until someone sets a price).

A name that is not in the table but resembles one of its names (``opneai``, ``OpenAI``,
``gemini``) is refused by ``prices set``/``show``/``list`` (:func:`provider_error`); any other
name is a provider of the app's own (``record_usage``), whose rows price only its records.

Each is tried as a row and as an alias; an undated name is also an alias of the newest dated
row of exactly that name (:func:`dated_aliases`: ``claude-sonnet-4-5`` →
``claude-sonnet-4-5-20250929``, ``ft:gpt-4o-mini`` → ``ft:gpt-4o-mini-2024-07-18``), so a
catalog of snapshot ids alone prices every spelling of them.

Model names are tried as reported, lower-cased, in the price provider's spelling, then with
one version suffix after another removed (``gpt-4o-2024-08-06`` → ``gpt-4o``, ``…-v1:0``,
``-latest``, ``-0613``/``-2411``/``-001``, ``-03-2025``). Only date and version suffixes are
removed, never words, so ``gpt-4o-mini`` can never become ``gpt-4o`` and ``claude-opus-4-1``
never ``claude-opus-4``. A dated preview keeps ``-preview`` (``gemini-2.5-flash-preview-05-20``
→ ``gemini-2.5-flash-preview``): previews are priced apart. Spellings: for Anthropic rows
Vertex's ``claude-sonnet-4-5@20250929`` is also tried as the dated Anthropic id
``claude-sonnet-4-5-20250929`` before the undated ``claude-sonnet-4-5``, and a router's dotted
version (``claude-sonnet-4.5``) with dashes; Google rows drop a ``models/`` prefix. Fine-tunes
(``ft:gpt-4o-mini-2024-07-18:org::id``, ``ft:open-mistral-7b:…``) are priced by ``ft:`` rows
only: the name as reported, then ``ft:`` + the base model's variants (``ft:gpt-4o-mini-2024-07-18``,
``ft:gpt-4o-mini``), never the base model's own row (fine-tuned inference costs more).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import TypeVar

from cost_middleware.usage import anthropic, bedrock, cohere, gemini, ollama, openai

_T = TypeVar("_T")

#: Price rows only: Google's list prices, shared by the Gemini API and Vertex AI.
GOOGLE = "google"


def _own(*providers: str) -> dict[str, tuple[str, ...]]:
    return {provider: (provider,) for provider in providers}


#: Every provider a record can name → the price providers to try, in order (its own first).
PRICE_PROVIDERS: dict[str, tuple[str, ...]] = {
    **_own(openai.OPENAI, openai.COMPATIBLE, openai.GROQ, openai.OPENROUTER, openai.DEEPSEEK,
           openai.TOGETHER, openai.FIREWORKS, openai.VLLM, openai.MISTRAL, anthropic.ANTHROPIC,
           cohere.COHERE, ollama.OLLAMA),
    openai.AZURE: (openai.AZURE, openai.OPENAI),
    anthropic.VERTEX: (anthropic.VERTEX, anthropic.ANTHROPIC),
    gemini.GEMINI: (gemini.GEMINI, GOOGLE),
    gemini.VERTEX: (gemini.VERTEX, GOOGLE),
    # Claude ids only, and through Bedrock's own spelling (see _bedrock).
    bedrock.BEDROCK: (bedrock.BEDROCK, anthropic.ANTHROPIC),
}

#: Every name a price row may carry for our providers (record providers and price-only ones).
PROVIDERS: frozenset[str] = frozenset(PRICE_PROVIDERS).union(*PRICE_PROVIDERS.values())

#: ``vendor/`` prefixes of router model names → price provider.
VENDORS: dict[str, str] = {
    "openai": openai.OPENAI,
    "anthropic": anthropic.ANTHROPIC,
    "google": GOOGLE,
    "mistralai": openai.MISTRAL,
    "mistral": openai.MISTRAL,
    "deepseek": openai.DEEPSEEK,
    "cohere": cohere.COHERE,
}

#: Longer names cannot be a row (``model_prices.model`` is 256 characters) and are not parsed.
MAX_MODEL_LENGTH = 256

_ROUTERS = frozenset({openai.OPENROUTER, openai.COMPATIBLE})
_ANTHROPIC_STYLE = frozenset({anthropic.ANTHROPIC, anthropic.VERTEX})
_GOOGLE_STYLE = frozenset({GOOGLE, gemini.GEMINI, gemini.VERTEX})
#: Geography prefixes of Bedrock inference profiles that bill the regional rate.
_BEDROCK_GEOS = frozenset({"us", "us-gov", "eu", "apac", "jp", "au", "ca"})
#: Vertex's snapshot spelling (``@20250929``), Anthropic's being ``-20250929``.
_VERTEX_DATE = re.compile(r"@(\d{8})$")
#: How alike (difflib ratio) a name and one of ours must be to count as a misspelling.
_MISSPELT = 0.8

#: A snapshot date ending a name: OpenAI's ``-2024-08-06``, Anthropic's ``-20250929``.
_SNAPSHOT = r"-(\d{4}-\d{2}-\d{2}|\d{8})$"
_DATED = re.compile("^(.+)" + _SNAPSHOT)

# One version suffix each; the first that matches is removed, then the search starts again.
_SUFFIXES = tuple(re.compile(p) for p in (
    r"@[^@/]*$",                    # Vertex: claude-sonnet-4-5@20250929, @latest, @001
    r"-v\d+:\d+(?::[\w.-]*)?$",     # Bedrock: -v1:0, -v2:0, -v1:0:200k
    r"[-:]latest$",                 # -latest aliases, Ollama's :latest tag
    _SNAPSHOT,                      # snapshots: -2024-08-06, -20250929
    r"-\d{2}-\d{4}$",               # Cohere: -03-2025
    r"(?<=-preview)-\d{2}-\d{2}$",  # Gemini previews: -preview-05-20 keeps -preview
    r"-\d{3,4}$",                   # OpenAI -0613/-0125, Mistral -2411, Gemini -001
))


def provider_error(name: str) -> str | None:
    """Why ``name`` may not be a price row's provider, or None when it may.

    Our names may. So may a name unlike all of them: a provider of the app's own, named in
    ``record_usage``. A name that resembles one of ours without being it (``opneai``,
    ``OpenAI``, ``google-gemini``, ``gemini``, ``bedrock``) is a misspelling: its rows would
    price nothing.
    """
    if name in PROVIDERS:
        return None
    ours = sorted(PROVIDERS)
    folded = re.sub(r"[\s.-]+", "_", name.strip().lower())
    like = [folded] if folded in PROVIDERS else [p for p in ours if folded in p.split("_")]
    like = like or difflib.get_close_matches(folded, ours, 3, _MISSPELT)
    if not like:
        return None
    return (f"unknown provider {name!r} (did you mean {' or '.join(map(repr, like))}?); "
            f"providers: {', '.join(ours)}; a provider of your own (record_usage) "
            "needs a name unlike these")


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
    if current.startswith(openai.FINE_TUNE):
        # ``ft:{base}:{org}:{suffix}:{id}``: ``ft:`` rows of the base model, never the base's.
        base = current[len(openai.FINE_TUNE):].partition(":")[0]
        tuned = [openai.FINE_TUNE + n for n in name_variants(base, price_provider)]
        return _unique([name, current, *tuned])
    if price_provider in _GOOGLE_STYLE and "models/" in current:
        current = current.rsplit("models/", 1)[1]
    variants = [name, current]
    if price_provider in _ANTHROPIC_STYLE:
        current = _VERTEX_DATE.sub(r"-\1", current.replace(".", "-"))
        variants.append(current)
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
    if provider == bedrock.BEDROCK:
        pairs.extend(_bedrock(model))
    else:
        for price_provider in PRICE_PROVIDERS.get(provider, (provider,)):
            pairs.extend((price_provider, n) for n in name_variants(model, price_provider))
        vendor, sep, rest = model.partition("/")
        if provider in _ROUTERS and sep and rest and vendor.lower() in VENDORS:
            vendor_provider = VENDORS[vendor.lower()]
            pairs.extend((vendor_provider, n) for n in name_variants(rest, vendor_provider))
    return tuple(_unique(pairs))


def dated_aliases(models: Iterable[str]) -> dict[str, str]:
    """Undated name → the newest dated model of exactly that name among ``models``.

    ``claude-sonnet-4-5`` → ``claude-sonnet-4-5-20250929`` (never ``claude-sonnet-4-5-1-…``:
    only a snapshot date may follow), so rows named only by snapshot still price the bare name.
    """
    newest: dict[str, tuple[str, str]] = {}
    for model in models:
        match = _DATED.match(model)
        if match is not None:
            stem, date = match[1], match[2].replace("-", "")
            if stem not in newest or date > newest[stem][0]:
                newest[stem] = (date, model)
    return {stem: model for stem, (_, model) in newest.items()}


#: How a candidate reaches the row that prices a name (:func:`explain_match`).
EXACT = "exact"
SPELLING = "spelling"
SUFFIX = "date-suffix removal"
FALLBACK = "provider fallback"
ALIAS = "alias"


@dataclass(frozen=True, slots=True)
class Match:
    """How ``(provider, model)`` reached a row: the candidate and the steps to it."""

    #: The ``(price provider, name)`` of :func:`candidates` that found the row.
    candidate: tuple[str, str]
    #: Its position among the candidates (0: the first one tried).
    rank: int
    #: :data:`EXACT`, or the steps from the reported name: :data:`FALLBACK` (another
    #: provider's rows), :data:`SPELLING` (lower case, the provider's spelling, a prefix
    #: dropped), :data:`SUFFIX`, then :data:`ALIAS` (a name the row declares, or the undated
    #: name of its dated model).
    steps: tuple[str, ...]


def explain_match(
    provider: str, model: str, row_provider: str, row_model: str, row_aliases: Collection[str],
) -> Match | None:
    """How the book's lookup of ``model`` from ``provider`` reaches the row ``(row_provider,
    row_model)``, or None when no candidate does.

    Candidates are tried in order, each as a row and then as an alias, as the book tries them.
    """
    pairs = candidates(provider, model)
    own = pairs[0][0] if pairs else provider
    undated = dated_aliases([row_model])
    for rank, (price_provider, name) in enumerate(pairs):
        exact = (price_provider, name) == (row_provider, row_model)
        if not exact and (price_provider != row_provider or (
                name not in row_aliases and undated.get(name) != row_model)):
            continue
        steps = [FALLBACK] if price_provider != own else []
        if name in _desuffixed(n for p, n in pairs if p == price_provider):
            steps.append(SUFFIX)
        elif name != model.strip():
            steps.append(SPELLING)
        if not exact:
            steps.append(ALIAS)
        return Match((price_provider, name), rank, tuple(steps) or (EXACT,))
    return None


def _desuffixed(names: Iterable[str]) -> set[str]:
    """Every name :func:`strip_suffix` reaches from ``names``."""
    found: set[str] = set()
    for name in names:
        while (name := strip_suffix(name) or "") and name not in found:
            found.add(name)
    return found


def _bedrock(model: str) -> list[tuple[str, str]]:
    if model.startswith("arn:") and "/" in model:
        model = model.rsplit("/", 1)[1]
    model = model.lower()
    geo, dot, rest = model.partition(".")
    regional = rest if dot and (geo == "global" or geo in _BEDROCK_GEOS) else model
    # As reported first, so a row for one geography (``eu.…``) can override the regional one.
    pairs = [(bedrock.BEDROCK, n) for n in name_variants(model) + name_variants(regional)]
    vendor, dot, vendor_model = regional.partition(".")
    if vendor == anthropic.ANTHROPIC and dot:
        pairs.extend((anthropic.ANTHROPIC, n)
                     for n in name_variants(vendor_model, anthropic.ANTHROPIC))
    return pairs


def _unique(items: list[_T]) -> list[_T]:
    return list(dict.fromkeys(items))
