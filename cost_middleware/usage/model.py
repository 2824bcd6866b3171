"""Normalized token usage (OpenTelemetry GenAI convention) and what one response yielded."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


# Not frozen: a frozen dataclass pays object.__setattr__ per field at construction, several
# microseconds on the request path. Treat instances as immutable all the same.
@dataclass(slots=True)
class Usage:
    """Token counts of one provider call.

    ``input_tokens`` is *all* input; ``cached_input_tokens`` and ``cache_write_input_tokens``
    are subsets of it. ``output_tokens`` includes reasoning; ``reasoning_tokens`` is a subset
    (``None`` = not reported, which is not the same as 0).
    """

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    cache_write_input_tokens: int = 0
    #: TTL split of the writes; ``None`` when writes > 0 but the provider gave no split.
    cache_write_5m_input_tokens: int | None = 0
    cache_write_1h_input_tokens: int | None = 0
    reasoning_tokens: int | None = None
    input_audio_tokens: int | None = None
    output_audio_tokens: int | None = None
    input_text_tokens: int | None = None
    output_text_tokens: int | None = None
    input_image_tokens: int | None = None
    accepted_prediction_tokens: int | None = None
    rejected_prediction_tokens: int | None = None
    #: Billable server-side tool calls (Anthropic web search, OpenAI hosted web search).
    web_search_requests: int | None = None
    web_search_queries: int | None = None
    tool_use_prompt_tokens: int | None = None
    #: A cost the provider reported itself (OpenRouter), kept beside ours.
    reported_cost_usd: Decimal | None = None
    raw_input_tokens: int | None = None
    raw_output_tokens: int | None = None

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def base_input_tokens(self) -> int:
        """Input billed at the base rate (neither read from nor written to a cache)."""
        return self.input_tokens - self.cached_input_tokens - self.cache_write_input_tokens


@dataclass(slots=True)
class Extraction:
    """What reading one provider response produced."""

    provider: str
    api: str
    model: str | None
    usage: Usage | None
    streamed: bool = False
    #: The stream ended abnormally; ``usage`` holds the last values seen.
    partial: bool = False
    #: Azure deployment name, OpenRouter upstream, tiers that change the price.
    deployment: str | None = None
    upstream_provider: str | None = None
    service_tier: str | None = None
