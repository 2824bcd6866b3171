"""The current request, so app code can attribute usage it found itself (``record_usage``).

Set by both adapters for every HTTP request. Attribution (tenant, request id) is read from the
headers only when someone asks, so plain requests pay for one context-variable set and reset.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

from cost_middleware.records import CostRecord, new_record_id
from cost_middleware.usage.fields import InvalidUsage, check_usage
from cost_middleware.usage.model import Usage
from cost_middleware.usage.readers import INVALID_USAGE
from cost_middleware.usage.service_tier import normalize as normalize_tier

if TYPE_CHECKING:
    from cost_middleware.engine.tracker import CostTracker

#: Attribution values are untrusted; keep them to the column widths.
MAX_TENANT = 256
MAX_REQUEST_ID = 128
MAX_ROUTE = 512


#: ASGI headers are bytes, WSGI headers str.
_Text = TypeVar("_Text", str, bytes)


def new_request_id() -> str:
    return new_record_id()


class RequestContext:
    """Who a provider call made during this request is attributed to."""

    __slots__ = ("_headers", "_request_id", "_tenant", "_tenant_read", "client_calls", "method",
                 "path", "started", "tracker")

    def __init__(
        self,
        tracker: CostTracker,
        method: str,
        path: str,
        headers: Mapping[str, str] | list[tuple[bytes, bytes]] | dict[str, Any],
        started: float,
    ) -> None:
        self.tracker = tracker
        self.method = method
        self.path = path[:MAX_ROUTE]
        self.started = started
        # A lower-cased header mapping, an ASGI header list, or a WSGI environ.
        self._headers = headers
        self._tenant: str | None = None
        self._tenant_read = False
        self._request_id: str | None = None
        #: Keys of provider calls the httpx transport recorded during this request, so the
        #: same call forwarded as the response is not recorded twice.
        self.client_calls: set[tuple[str | None, int, int, int, int]] | None = None

    def header(self, name: str) -> str | None:
        """``name`` is lower-case. A value is text as UTF-8 when its bytes are valid UTF-8
        (what clients send for non-ASCII ids), else as latin-1 (no byte is lost)."""
        headers = self._headers
        if isinstance(headers, list):
            key = name.encode("latin-1")
            for k, v in headers:
                if k.lower() == key:
                    try:
                        return v.decode()
                    except UnicodeDecodeError:
                        return v.decode("latin-1")
            return None
        if "wsgi.version" in headers:
            value = headers.get("HTTP_" + name.upper().replace("-", "_"))
            if not isinstance(value, str):
                return None
            if value.isascii():
                return value
            # PEP 3333: the server decoded the header's bytes as latin-1.
            try:
                return value.encode("latin-1").decode()
            except UnicodeError:
                return value
        return headers.get(name)

    @property
    def tenant(self) -> str | None:
        if not self._tenant_read:
            value = self.header(self.tracker.settings.tenant_header)
            self._tenant = value[:MAX_TENANT] if value else None
            self._tenant_read = True
        return self._tenant

    @property
    def request_id(self) -> str:
        if self._request_id is None:
            value = self.header(self.tracker.settings.request_id_header)
            self._request_id = value[:MAX_REQUEST_ID] if value else new_request_id()
        return self._request_id

    def with_request_id(
        self, headers: Iterable[tuple[_Text, _Text]], name: _Text
    ) -> list[tuple[_Text, _Text]] | None:
        """Response ``headers`` (a new list) with :attr:`request_id` echoed under ``name``
        (lower case); None when the app sent that header itself (its value wins), or when
        the headers are malformed (counted; the response goes out as the app made it)."""
        try:
            out = list(headers)
            for key, _ in out:
                if key.lower() == name:
                    return None
            value = self.request_id
            # As UTF-8, the bytes a non-ASCII id came as (WSGI wants them as latin-1 text).
            if isinstance(name, bytes):
                out.append((name, value.encode()))
            else:
                out.append((name, value if value.isascii() else value.encode().decode("latin-1")))
            return out
        except Exception as exc:
            self.tracker.guard.error("request_id", exc)
            return None


current_request: ContextVar[RequestContext | None] = ContextVar(
    "cost_middleware_request", default=None
)


def record_usage(
    usage: Usage | None,
    *,
    provider: str,
    model: str | None,
    api: str = "app",
    streamed: bool = False,
    partial: bool = False,
    tracker: CostTracker | None = None,
    service_tier: str | None = None,
) -> CostRecord | None:
    """Record usage that app code found itself (e.g. from an SDK call) for the current request.

    Attributed to the current request's tenant, request id, method and route. Outside a request
    pass ``tracker``; with neither, the call is counted and logged once, and returns None.
    A disabled tracker records nothing (None). Usage a provider could not have reported
    (negative or non-integer counts, subsets above their totals) is refused as the response
    readers refuse it: the record is kept without usage, so unpriced, and the skip counted
    as ``skipped.invalid_usage``. ``service_tier`` is the tier the provider billed the call
    at (``flex``, ``priority``, ``batch``, or the provider's spelling of one). Never raises
    for bad input. Raises :class:`~cost_middleware.BudgetExceeded` after recording when a
    spent ``block`` budget covers the call (its tenant, route, provider or model), so the
    app makes no further call for it.
    """
    context = current_request.get()
    owner = tracker if tracker is not None else (context.tracker if context else None)
    if owner is None:
        _log_no_request()
        return None
    if not owner.settings.enabled:
        return None
    try:
        if usage is not None:
            if not isinstance(usage, Usage):
                raise TypeError("usage must be a cost_middleware.Usage")
            try:
                check_usage(usage)
            except InvalidUsage:
                owner.guard.skip(INVALID_USAGE)
                usage = None
        record = CostRecord(
            provider=str(provider)[:64],
            api=str(api)[:64],
            model=str(model)[:256] if model is not None else None,
            usage=usage,
            tenant=context.tenant if context else None,
            request_id=context.request_id if context else None,
            method=context.method if context else None,
            route=context.path if context else None,
            streamed=streamed,
            partial=partial,
            service_tier=normalize_tier(service_tier) if isinstance(service_tier, str) else None,
        )
    except Exception as exc:
        owner.guard.error("record_usage", exc)
        return None
    owner.record(record)
    # The usage was spent, so it is recorded; a spent budget then stops the app's next calls.
    blocked = owner.budget_gate.check(
        context or RequestContext(owner, "", "", {}, 0.0), record.provider, record.model)
    if blocked is not None:
        owner.metrics.incr("budget.blocked")
        raise blocked.error(time.time())
    return record


_warned_no_request = False


def _log_no_request() -> None:
    global _warned_no_request
    if not _warned_no_request:
        _warned_no_request = True
        logging.getLogger("cost_middleware").warning(
            "cost_middleware: record_usage() called outside a request and without tracker=; "
            "the usage was not recorded"
        )
