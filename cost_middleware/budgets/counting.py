"""Spend counters per budget and window: in Redis (shared by every process), or in memory.

A counter is a Redis hash per (budget, window), ``cost_middleware:budget:{counters}:<id>:<w>``:
``<id>`` is a digest of the budget's (scope, subject, window), ``<w>`` the window's start in
epoch seconds, so no untrusted text is ever part of a key. Its fields are the values counted
(``v:<value>``, at most :data:`~cost_middleware.budgets.model.MAX_SUBJECTS`; later ones share
``o:``) in integer pico-dollars, and ``m:seeded`` once it was started from the ledger. A hash
expires a day after its window ends. One script per batch adds every record's cost, atomically,
and says which counters crossed their alert threshold or limit. The hash tag keeps every
counter on one Cluster node, so a batch's script may touch several.

:class:`LocalCounters` is the same store in one process's memory: without Redis, or while it is
down.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from cost_middleware.budgets.model import MAX_SUBJECTS, window_end
from cost_middleware.budgets.spend import OTHER
from cost_middleware.pricing.redis_keys import SharedClient, model_key

KEY_PREFIX = "cost_middleware:budget:{counters}:"
#: What a change of budget state touches: the price-change channel carries it to every process
#: (its key has a price key's shape, which no price row can have: provider names have no '~').
NOTICE_PROVIDER = "~budgets"
SPENT = "spent"
CHANGED = "changed"
#: Counters outlive their window by this, for late status reads.
KEEP_AFTER_WINDOW = timedelta(days=1)
#: ``crossed`` bits of an addition.
ALERT_CROSSED, LIMIT_CROSSED = 1, 2

_SEEDED = "m:seeded"
_VALUE = "v:"
_OTHER_FIELD = "o:"

#: KEYS: counter hashes. ARGV: the cap, then per key its expiry (0: none) and field count,
#: then per field: field, pico-dollars to add, limit, alert threshold (-1: none). Returns per
#: key whether it was seeded, then per field: the field counted in, its total, crossed bits.
#: Totals come back as strings: Lua numbers are doubles, exact only below 2**53 pico-dollars,
#: so only the comparisons (not the counts) may round, above 9,007 USD.
_ADD = """
local cap = tonumber(ARGV[1])
local a = 2
local out = {}
for _, key in ipairs(KEYS) do
  local expire_at = tonumber(ARGV[a])
  local n = tonumber(ARGV[a + 1])
  a = a + 2
  out[#out + 1] = redis.call('HEXISTS', key, 'm:seeded')
  for _ = 1, n do
    local field, delta = ARGV[a], ARGV[a + 1]
    local limit, alert = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
    a = a + 4
    if redis.call('HEXISTS', key, field) == 0 and redis.call('HLEN', key) > cap then
      field = 'o:'
    end
    local total = tonumber(redis.call('HINCRBY', key, field, delta))
    local before = total - tonumber(delta)
    local crossed = 0
    if alert >= 0 and before < alert and total >= alert then crossed = crossed + 1 end
    if before < limit and total >= limit then crossed = crossed + 2 end
    out[#out + 1] = field
    out[#out + 1] = redis.call('HGET', key, field)
    out[#out + 1] = crossed
  end
  if expire_at > 0 then redis.call('EXPIREAT', key, expire_at) end
end
return out
"""

#: KEYS[1]: a counter. ARGV: expiry (0: none), force (1: replace even a seeded counter), then
#: field, value pairs. Returns 1 when it wrote.
_SEED = """
if ARGV[2] == '0' and redis.call('HEXISTS', KEYS[1], 'm:seeded') == 1 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'm:seeded', '1')
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if tonumber(ARGV[1]) > 0 then redis.call('EXPIREAT', KEYS[1], ARGV[1]) end
return 1
"""


@dataclass(frozen=True, slots=True)
class Window:
    """One budget's counter in one window."""

    ident: str
    window: str
    start: int

    @property
    def key(self) -> str:
        return f"{KEY_PREFIX}{self.ident}:{self.start}"

    @property
    def expire_at(self) -> int:
        end = window_end(self.window, self.start)
        return 0 if end is None else int((end + KEEP_AFTER_WINDOW).timestamp())


@dataclass(frozen=True, slots=True)
class Addition:
    """Pico-dollars to add to one value's counter, with the thresholds to report crossing."""

    value: str
    pico: int
    limit: int
    alert: int | None


@dataclass(frozen=True, slots=True)
class Counted:
    """The outcome of one :class:`Addition`: the value counted in (:data:`OTHER` past the
    cap), its new total, and which thresholds this addition crossed."""

    value: str
    total: int
    crossed: int


class Counters(Protocol):
    """Where counts live: Redis, or this process's memory."""

    def add(self, batch: Sequence[tuple[Window, Sequence[Addition]]]
            ) -> list[tuple[bool, list[Counted]]]:
        """Add every addition atomically; per window: (was seeded, outcomes)."""
        ...

    def seed(self, window: Window, spend: dict[str, int], *, force: bool) -> bool:
        """Start ``window`` from ``spend`` (the ledger's), unless seeded and not ``force``."""
        ...

    def read(self, window: Window) -> dict[str, int] | None:
        """A window's totals by value; None when it was never seeded."""
        ...


def _field(value: str) -> str:
    return _OTHER_FIELD if value == OTHER else _VALUE + value


def _value(field: str) -> str | None:
    if field == _OTHER_FIELD:
        return OTHER
    return field[len(_VALUE):] if field.startswith(_VALUE) else None


class RedisCounters:
    """Counters shared by every process through Redis. Raises redis errors (the runtime falls
    back to local counting)."""

    def __init__(self, client: SharedClient) -> None:
        self._client = client
        self._scripts: tuple[Any, Any] | None = None

    def _script(self, index: int) -> Any:
        if self._scripts is None:
            client = self._client.get()
            self._scripts = (client.register_script(_ADD), client.register_script(_SEED))
        return self._scripts[index]

    def add(self, batch: Sequence[tuple[Window, Sequence[Addition]]]
            ) -> list[tuple[bool, list[Counted]]]:
        keys = [window.key for window, _ in batch]
        args: list[str | int] = [MAX_SUBJECTS]
        for window, additions in batch:
            args += [window.expire_at, len(additions)]
            for a in additions:
                args += [_field(a.value), a.pico, a.limit, -1 if a.alert is None else a.alert]
        reply = self._script(0)(keys=keys, args=args)
        out: list[tuple[bool, list[Counted]]] = []
        i = 0
        for _, additions in batch:
            seeded = bool(reply[i])
            i += 1
            counted = []
            for _ in additions:
                field, total, crossed = reply[i:i + 3]
                i += 3
                counted.append(Counted(_value(field.decode()) or OTHER, int(total), int(crossed)))
            out.append((seeded, counted))
        return out

    def seed(self, window: Window, spend: dict[str, int], *, force: bool) -> bool:
        args: list[str | int] = [window.expire_at, 1 if force else 0]
        for value, pico in spend.items():
            args += [_field(value), pico]
        return bool(self._script(1)(keys=[window.key], args=args))

    def read(self, window: Window) -> dict[str, int] | None:
        raw: dict[bytes, bytes] = self._client.get().hgetall(  # type: ignore[assignment]
            window.key)
        if not raw or _SEEDED.encode() not in raw:
            return None
        totals: dict[str, int] = {}
        for field, pico in raw.items():
            value = _value(field.decode("utf-8", "replace"))
            if value is not None:
                totals[value] = int(pico)
        return totals

    def notify(self, kind: str) -> None:
        """Tell every process (through the price-change channel) that budgets ``kind``."""
        self._client.get().incrby(model_key(NOTICE_PROVIDER, kind), 1)


class LocalCounters:
    """The same counters in this process's memory (one process counts alone)."""

    def __init__(self) -> None:
        self._totals: dict[Window, dict[str, int]] = {}

    def add(self, batch: Sequence[tuple[Window, Sequence[Addition]]]
            ) -> list[tuple[bool, list[Counted]]]:
        out: list[tuple[bool, list[Counted]]] = []
        for window, additions in batch:
            seeded = window in self._totals
            totals = self._totals.setdefault(window, {})
            counted = []
            for a in additions:
                value = a.value if a.value in totals or len(totals) < MAX_SUBJECTS else OTHER
                before = totals.get(value, 0)
                total = totals[value] = before + a.pico
                crossed = (ALERT_CROSSED if a.alert is not None and before < a.alert <= total
                           else 0) | (LIMIT_CROSSED if before < a.limit <= total else 0)
                counted.append(Counted(value, total, crossed))
            out.append((seeded, counted))
        return out

    def seed(self, window: Window, spend: dict[str, int], *, force: bool) -> bool:
        if window in self._totals and not force:
            return False
        self._totals[window] = dict(spend)
        return True

    def read(self, window: Window) -> dict[str, int] | None:
        totals = self._totals.get(window)
        return None if totals is None else dict(totals)

    def forget_before(self, live: set[Window]) -> None:
        """Drop the counters of windows that ended (memory stays bounded)."""
        for window in [w for w in self._totals if w not in live]:
            del self._totals[window]
