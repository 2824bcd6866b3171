"""The record one provider call becomes: attribution, usage, and (after pricing) its cost."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from cost_middleware.usage.model import Usage
from cost_middleware.utc import utcnow

#: A private generator: an app calling ``random.seed()`` must not make ids repeat (repeats
#: would be dropped as duplicates). Seeded from the OS, and again in every forked child.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def new_record_id() -> str:
    """The row's idempotency key: 48 bits of milliseconds, then 80 random bits, as hex.

    Time-ordered so index inserts stay local (about 3x the SQLite write rate of random
    keys). Not ``uuid4``: a syscall per record costs tens of microseconds on some sandboxed
    kernels. Identifiers, not secrets.
    """
    # One number, one format: the same text as the two fields formatted apart.
    return f"{(int(time.time() * 1000) & 0xFFFFFFFFFFFF) << 80 | _ids.getrandbits(80):032x}"


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
    #: The service tier the call was billed at, as :func:`~cost_middleware.usage.service_tier.
    #: normalize` gives it (``flex``, ``priority``...); None = not reported (standard rates).
    service_tier: str | None = None
