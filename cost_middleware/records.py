"""The record one provider call becomes: attribution, usage, and (after pricing) its cost."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from cost_middleware.usage.model import Usage


def new_record_id() -> str:
    """128 random bits as hex: the row's idempotency key.

    Not ``uuid4``/``os.urandom``: a syscall per record costs tens of microseconds on some
    sandboxed kernels. ``random`` is seeded from the OS at start and reseeded in every forked
    child, so ids stay unique across processes; they are identifiers, not secrets.
    """
    return f"{random.getrandbits(128):032x}"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class CostRecord:
    """One priced (or yet unpriced) provider call.

    Built on the request path with ``cost_usd``/``price_version`` unset; the background
    worker fills them in. ``record_id`` is the idempotency key of the row.
    """

    provider: str
    api: str
    model: str | None
    usage: Usage | None
    tenant: str | None = None
    request_id: str | None = None
    method: str | None = None
    route: str | None = None
    status_code: int | None = None
    streamed: bool = False
    partial: bool = False
    latency_ms: float | None = None
    record_id: str = field(default_factory=new_record_id)
    created_at: datetime = field(default_factory=utcnow)
    cost_usd: Decimal | None = None
    price_version: int | None = None
