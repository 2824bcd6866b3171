"""OpenTelemetry beside StatsD: GenAI semantic-convention metrics and span attributes.

Imported only when ``COST_MIDDLEWARE_OTEL=on`` (the ``otel`` extra). It uses the meter and
tracer providers the app configured (``opentelemetry.metrics.get_meter``,
``trace.get_current_span``) and never configures an exporter: with no SDK installed every call
below is the API's no-op.

Two halves, as the rest of the engine:

- request path (:meth:`OtelRecorder.annotate`): the current span (the server span the app's
  ASGI/WSGI instrumentation started, when it wraps our middleware) gets the token counts, the
  models and the provider; only attribute sets, no I/O;
- background worker (:meth:`OtelRecorder.written`): after pricing and the database write, the
  token histograms and the cost histogram are recorded, and each priced record whose request
  span is still remembered gets a short child span carrying its cost.

Names follow semantic conventions v1.41 (``gen_ai.client.token.usage``, ``gen_ai.usage.*``,
``gen_ai.provider.name``...); the cost follows the open proposal (``gen_ai.usage.cost.*``,
metric ``gen_ai.client.operation.cost``), which may still change: docs/METRICS.md says which
is which.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind

from cost_middleware.metrics import MAX_LABEL_LENGTH, Metrics
from cost_middleware.records import CostRecord
from cost_middleware.usage import anthropic, bedrock, cohere, gemini, openai

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue

    from cost_middleware.config import Settings

#: Our provider names → ``gen_ai.provider.name`` well-known values. A provider the
#: conventions do not list keeps our name (the conventions ask for a custom value then).
PROVIDER_NAMES: dict[str, str] = {
    openai.OPENAI: "openai",
    openai.AZURE: "azure.ai.openai",
    openai.GROQ: "groq",
    openai.DEEPSEEK: "deepseek",
    openai.MISTRAL: "mistral_ai",
    anthropic.ANTHROPIC: "anthropic",
    anthropic.VERTEX: "gcp.vertex_ai",
    gemini.GEMINI: "gcp.gemini",
    gemini.VERTEX: "gcp.vertex_ai",
    bedrock.BEDROCK: "aws.bedrock",
    cohere.COHERE: "cohere",
}

#: Our API names (usage/families.py) → ``gen_ai.operation.name``. Others (``record_usage``'s
#: ``api``) keep their own, bounded, value.
OPERATION_NAMES: dict[str, str] = {
    "chat_completions": "chat",
    "responses": "chat",
    "messages": "chat",
    "converse": "chat",
    "converse_stream": "chat",
    "invoke_model": "chat",
    "invoke_model_with_response_stream": "chat",
    "chat_v2": "chat",
    "ollama_chat": "chat",
    "completions": "text_completion",
    "ollama_generate": "text_completion",
    "embeddings": "embeddings",
    "ollama_embed": "embeddings",
    "generate_content": "generate_content",
    "stream_generate_content": "generate_content",
}

#: The semantic-conventions version the names below follow.
SCHEMA_URL = "https://opentelemetry.io/schemas/1.41.0"
TOKEN_USAGE = "gen_ai.client.token.usage"
#: Not metrics in v1.41 (there they are span attributes only): instruments of their own,
#: named after the attributes, so ``gen_ai.client.token.usage`` stays summable (cache reads
#: and writes are part of the input, reasoning part of the output).
CACHE_READ = "gen_ai.usage.cache_read.input_tokens"
CACHE_CREATION = "gen_ai.usage.cache_creation.input_tokens"
REASONING = "gen_ai.usage.reasoning.output_tokens"
#: The proposal's metric (semantic-conventions-genai PR #443, open).
OPERATION_COST = "gen_ai.client.operation.cost"
COST_SPAN = "cost_middleware.price"

INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
PROVIDER = "gen_ai.provider.name"
OPERATION = "gen_ai.operation.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
TOKEN_TYPE = "gen_ai.token.type"
COST_AMOUNT = "gen_ai.usage.cost.amount"
COST_CURRENCY = "gen_ai.usage.cost.currency"
COST_SOURCE = "gen_ai.usage.cost.source"
TENANT = "cost_middleware.tenant"
ROUTE = "http.route"
RECORD_ID = "cost_middleware.record_id"

#: The conventions' advisory buckets for token counts.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                 16777216, 67108864)
#: Ours, in USD (the SDK's default buckets, 0-10000, would put every call in the first two).
COST_BUCKETS = (0.00001, 0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0)

#: Request spans remembered for a cost child span, and for how long. A record priced later
#: (the worker's interval passed many times, or the database was down and it was spooled)
#: gets none: its trace has long been assembled, and the metric still counts its cost.
MAX_PENDING = 10_000
MAX_DELAY_S = 30.0
_NS = 1_000_000_000

#: A span's sums so far: input, output, cache read, cache creation, reasoning (None: unknown).
_Sums = list[int | None]


def text(value: str) -> str:
    """An untrusted value as an attribute value: printable, bounded like a StatsD label."""
    value = value[:MAX_LABEL_LENGTH]
    if value.isprintable():
        return value
    return "".join(c if c.isprintable() else "_" for c in value)


class OtelRecorder:
    """Metrics and spans of one tracker, on the app's global OpenTelemetry providers."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._metrics = metrics
        self._tenant = "tenant" in settings.otel_attributes
        self._route = "route" in settings.otel_attributes
        version = _version()
        # The API's proxies: a provider the app sets later is used from then on.
        meter = otel_metrics.get_meter("cost_middleware", version, schema_url=SCHEMA_URL)
        self._tracer = trace.get_tracer("cost_middleware", version, schema_url=SCHEMA_URL)
        self._tokens = meter.create_histogram(
            TOKEN_USAGE, unit="{token}", description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS)
        self._subsets = tuple(
            (name, meter.create_histogram(name, unit="{token}", description=description,
                                          explicit_bucket_boundaries_advisory=TOKEN_BUCKETS))
            for name, description in (
                (CACHE_READ, "Input tokens read from a provider-managed cache"),
                (CACHE_CREATION, "Input tokens written to a provider-managed cache"),
                (REASONING, "Output tokens spent on reasoning"),
            ))
        self._cost = meter.create_histogram(
            OPERATION_COST, unit="USD", description="Cost of one GenAI operation",
            explicit_bucket_boundaries_advisory=COST_BUCKETS)
        self._lock = threading.Lock()
        self._sums: weakref.WeakKeyDictionary[Span, _Sums] = weakref.WeakKeyDictionary()
        #: record id → (its request span, monotonic deadline); insertion order is age order.
        self._pending: dict[str, tuple[SpanContext, float]] = {}

    # -- request path -------------------------------------------------------------------

    def annotate(self, record: CostRecord) -> None:
        """Put the record's usage on the current span (summed over the request's records)."""
        span = trace.get_current_span()
        if not span.is_recording():
            return
        attributes: dict[str, AttributeValue] = {
            PROVIDER: _provider(record.provider), OPERATION: _operation(record.api)}
        if record.model:
            attributes[REQUEST_MODEL] = attributes[RESPONSE_MODEL] = text(record.model)
        if self._tenant and record.tenant:
            attributes[TENANT] = text(record.tenant)
        usage = record.usage
        with self._lock:
            if usage is not None:
                counts = (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens,
                          usage.cache_write_input_tokens, usage.reasoning_tokens)
                sums = self._add(span, counts)
                for name, value in zip(_SPAN_COUNTS, sums, strict=True):
                    if value:
                        attributes[name] = value
            pending = self._pending
            if len(pending) < MAX_PENDING:
                pending[record.record_id] = (span.get_span_context(),
                                             time.monotonic() + MAX_DELAY_S)
        span.set_attributes(attributes)

    def _add(self, span: Span, counts: tuple[int, int, int, int, int | None]) -> _Sums:
        try:
            sums = self._sums.get(span)
        except TypeError:  # a span type without weak references: this record's counts only
            return list(counts)
        if sums is None:
            sums = self._sums[span] = list(counts)
        else:
            for i, value in enumerate(counts):
                if value is not None:
                    sums[i] = (sums[i] or 0) + value
        return sums

    # -- background worker --------------------------------------------------------------

    def written(self, records: Sequence[CostRecord]) -> None:
        """Record the metrics of records that reached the ledger; cost child spans."""
        now_ns = time.time_ns()
        now = time.monotonic()
        label = self._metrics.label
        tokens, subsets, cost = self._tokens.record, self._subsets, self._cost.record
        pending = self._pending
        for r in records:
            attributes: dict[str, AttributeValue] = {
                PROVIDER: PROVIDER_NAMES.get(r.provider)
                or _bounded(label("provider", r.provider), r.provider),
                OPERATION: OPERATION_NAMES.get(r.api) or _bounded(label("api", r.api), r.api),
            }
            if r.model:
                attributes[REQUEST_MODEL] = attributes[RESPONSE_MODEL] = _bounded(
                    label("model", r.model), r.model)
            if self._tenant and r.tenant:
                attributes[TENANT] = _bounded(label("tenant", r.tenant), r.tenant)
            if self._route and r.route:
                attributes[ROUTE] = _bounded(label("route", r.route), r.route)
            usage = r.usage
            if usage is not None:
                tokens(usage.input_tokens, {**attributes, TOKEN_TYPE: "input"})
                tokens(usage.output_tokens, {**attributes, TOKEN_TYPE: "output"})
                for (_, histogram), value in zip(subsets, (
                        usage.cached_input_tokens, usage.cache_write_input_tokens,
                        usage.reasoning_tokens), strict=True):
                    if value:
                        histogram.record(value, attributes)
            if r.cost_usd is None:
                continue
            amount = float(r.cost_usd)
            # The ledger's amount is always ours (a provider's own figure is kept beside it).
            cost(amount, {**attributes, COST_CURRENCY: "USD", COST_SOURCE: "local"})
            with self._lock:
                parent = pending.pop(r.record_id, None)
            if parent is not None and parent[1] >= now:
                self._cost_span(r, parent[0], attributes, amount, now_ns)
        self._prune(now)

    def _cost_span(self, record: CostRecord, parent: SpanContext,
                   attributes: dict[str, AttributeValue], amount: float, now_ns: int) -> None:
        """A child of the request span, from the record's creation to its write: the request
        span has ended by now, and an event added to an ended span is dropped."""
        attributes = {**attributes, COST_AMOUNT: amount, COST_CURRENCY: "USD",
                      COST_SOURCE: "local", RECORD_ID: record.record_id}
        if record.price_version is not None:
            attributes["cost_middleware.price_version"] = record.price_version
        start = min(int(record.created_at.timestamp() * _NS), now_ns)
        span = self._tracer.start_span(
            COST_SPAN, context=trace.set_span_in_context(NonRecordingSpan(parent)),
            kind=SpanKind.INTERNAL, attributes=attributes, start_time=start)
        span.end(end_time=now_ns)

    def _prune(self, now: float) -> None:
        """Forget request spans whose records were never priced in time (spooled, dropped)."""
        with self._lock:
            pending = self._pending
            expired = []
            for key, (_, deadline) in pending.items():
                if deadline >= now:
                    break
                expired.append(key)
            for key in expired:
                del pending[key]


_SPAN_COUNTS = (INPUT_TOKENS, OUTPUT_TOKENS, CACHE_READ, CACHE_CREATION, REASONING)


def _provider(name: str) -> str:
    known = PROVIDER_NAMES.get(name)
    return known if known is not None else text(name)


def _operation(api: str) -> str:
    known = OPERATION_NAMES.get(api)
    return known if known is not None else text(api)


def _bounded(label: str, value: str) -> str:
    """``value`` as a metric attribute under the StatsD labels' cardinality cap: ``other``
    once the dimension is full (the cap counts StatsD's spelling, so both overflow alike)."""
    return "other" if label == "other" and value != "other" else text(value)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cost-middleware")
    except PackageNotFoundError:
        return ""
