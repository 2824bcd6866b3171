"""What the capture layer hands a provider extractor, and what it expects back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from cost_middleware.usage.model import Extraction


@dataclass(slots=True)
class Exchange:
    """The parts of one HTTP exchange an extractor may need. All of it is untrusted."""

    method: str
    #: Request path, percent-decoded as the server gave it (ASGI ``path``), without query.
    path: str
    #: Raw query string, e.g. ``alt=sse&key=...`` (never logged or stored).
    query: str
    #: Only present when the matched target asked for it (``needs_request_body``).
    request_body: bytes | None
    status: int
    response_headers: Mapping[str, str]
    #: Raw ASGI ``raw_path`` when available (keeps ``%3A`` in Bedrock model ids).
    raw_path: str | None = None


class Reader(Protocol):
    """Consumes one response body, chunk by chunk, already decompressed."""

    #: Set when the body could not be read as the provider's format (counted as a skip).
    skip_reason: str | None

    def feed(self, chunk: bytes) -> None: ...

    def finish(self, complete: bool) -> Extraction | None:
        """End of body. ``complete`` is False when the stream was cut short."""
        ...


class Target(Protocol):
    """A provider endpoint matched from the request line alone."""

    provider: str
    api: str
    #: Read the request body (e.g. Cohere: the model is only there; the stream flag).
    needs_request_body: bool

    def open(self, exchange: Exchange) -> Reader | None:
        """A reader for this response, or None when it is not a provider body we read."""
        ...
