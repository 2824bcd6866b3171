"""Their provider names → ours (the price providers of ``pricing.matching``): the one table.

LiteLLM names a provider per entry (``litellm_provider``) and prefixes most model keys with
its route (``azure/gpt-4o``); genai-prices groups models under provider ids. A provider absent
from :data:`MAPPING` is one we do not price: its entries are skipped, with that reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from cost_middleware.pricing.imports.conversion import GENAI_PRICES, LITELLM
from cost_middleware.pricing.matching import GOOGLE
from cost_middleware.usage import anthropic, bedrock, cohere, gemini, openai


@dataclass(frozen=True, slots=True)
class Ours:
    """Where their provider's models go: our price provider, and the key prefix to remove."""

    provider: str
    route: str = ""


#: (source format, their provider, model prefix) → ours. The longest matching model prefix
#: wins; "" matches every model of that provider.
MAPPING: dict[tuple[str, str, str], Ours] = {
    (LITELLM, "openai", ""): Ours(openai.OPENAI, "openai/"),
    (LITELLM, "text-completion-openai", ""): Ours(openai.OPENAI, "openai/"),
    (LITELLM, "azure", ""): Ours(openai.AZURE, "azure/"),
    (LITELLM, "azure_text", ""): Ours(openai.AZURE, "azure/"),
    (LITELLM, "anthropic", ""): Ours(anthropic.ANTHROPIC, "anthropic/"),
    (LITELLM, "gemini", ""): Ours(GOOGLE, "gemini/"),
    (LITELLM, "vertex_ai", ""): Ours(gemini.VERTEX, "vertex_ai/"),
    (LITELLM, "vertex_ai-language-models", ""): Ours(gemini.VERTEX, "vertex_ai/"),
    (LITELLM, "vertex_ai-anthropic_models", ""): Ours(anthropic.VERTEX, "vertex_ai/"),
    (LITELLM, "bedrock", ""): Ours(bedrock.BEDROCK, "bedrock/"),
    (LITELLM, "bedrock_converse", ""): Ours(bedrock.BEDROCK, "bedrock/"),
    (LITELLM, "mistral", ""): Ours(openai.MISTRAL, "mistral/"),
    (LITELLM, "cohere", ""): Ours(cohere.COHERE, "cohere/"),
    (LITELLM, "cohere_chat", ""): Ours(cohere.COHERE, "cohere/"),
    (LITELLM, "deepseek", ""): Ours(openai.DEEPSEEK, "deepseek/"),
    (LITELLM, "groq", ""): Ours(openai.GROQ, "groq/"),
    (LITELLM, "together_ai", ""): Ours(openai.TOGETHER, "together_ai/"),
    (LITELLM, "openrouter", ""): Ours(openai.OPENROUTER, "openrouter/"),
    (GENAI_PRICES, "openai", ""): Ours(openai.OPENAI),
    (GENAI_PRICES, "azure", ""): Ours(openai.AZURE),
    (GENAI_PRICES, "anthropic", ""): Ours(anthropic.ANTHROPIC),
    (GENAI_PRICES, "google", ""): Ours(GOOGLE),
    # genai-prices lists Claude on Vertex AI under google; we read it as vertex_anthropic.
    (GENAI_PRICES, "google", "claude-"): Ours(anthropic.VERTEX),
    (GENAI_PRICES, "aws", ""): Ours(bedrock.BEDROCK),
    (GENAI_PRICES, "mistral", ""): Ours(openai.MISTRAL),
    (GENAI_PRICES, "cohere", ""): Ours(cohere.COHERE),
    (GENAI_PRICES, "deepseek", ""): Ours(openai.DEEPSEEK),
    (GENAI_PRICES, "groq", ""): Ours(openai.GROQ),
    (GENAI_PRICES, "together", ""): Ours(openai.TOGETHER),
    (GENAI_PRICES, "openrouter", ""): Ours(openai.OPENROUTER),
}

#: Our providers whose model names hold a "/" (``vendor/model``). For the others a "/" left in
#: an imported name is a region or route (``azure/eu/gpt-4o``) no reported model name carries.
SLASHED_MODELS = frozenset({openai.GROQ, openai.TOGETHER, openai.OPENROUTER})

_PREFIXES: dict[tuple[str, str], list[tuple[str, Ours]]] = {}
for (_format, _theirs, _prefix), _ours in MAPPING.items():
    _PREFIXES.setdefault((_format, _theirs), []).append((_prefix, _ours))
for _choices in _PREFIXES.values():
    _choices.sort(key=lambda choice: len(choice[0]), reverse=True)


def ours(source_format: str, provider: object, model: str) -> Ours | None:
    """Where ``model`` of their ``provider`` goes; None when we do not price that provider."""
    if not isinstance(provider, str):
        return None
    for prefix, target in _PREFIXES.get((source_format, provider), ()):
        if model.startswith(prefix):
            return target
    return None
