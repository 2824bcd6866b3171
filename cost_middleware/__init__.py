"""cost-middleware: prices every AI-provider call flowing through an ASGI or WSGI app.

Public names are imported on first use, so ``import cost_middleware`` stays cheap and a
process that only needs ``Settings`` never loads SQLAlchemy.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    __version__: str

    from cost_middleware.asgi import CostMiddleware
    from cost_middleware.budgets.model import BudgetExceeded
    from cost_middleware.config import ConfigError, Settings
    from cost_middleware.context import record_usage
    from cost_middleware.engine.tracker import CostTracker
    from cost_middleware.pricing.book import PriceBook
    from cost_middleware.pricing.price import Price
    from cost_middleware.records import CostRecord
    from cost_middleware.usage.model import Usage
    from cost_middleware.wsgi import WSGICostMiddleware

_WHERE = {
    "BudgetExceeded": "cost_middleware.budgets.model",
    "ConfigError": "cost_middleware.config",
    "CostMiddleware": "cost_middleware.asgi",
    "CostRecord": "cost_middleware.records",
    "CostTracker": "cost_middleware.engine.tracker",
    "Price": "cost_middleware.pricing.price",
    "PriceBook": "cost_middleware.pricing.book",
    "Settings": "cost_middleware.config",
    "Usage": "cost_middleware.usage.model",
    "WSGICostMiddleware": "cost_middleware.wsgi",
    "record_usage": "cost_middleware.context",
}

__all__ = [
    "BudgetExceeded",
    "ConfigError",
    "CostMiddleware",
    "CostRecord",
    "CostTracker",
    "Price",
    "PriceBook",
    "Settings",
    "Usage",
    "WSGICostMiddleware",
    "record_usage",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        # From the installed metadata (pyproject.toml's version), read only when asked:
        # importlib.metadata costs ~40 ms, more than the rest of the CLI's start-up.
        from importlib.metadata import PackageNotFoundError, version

        try:
            value: str = version("cost-middleware")
        except PackageNotFoundError:  # a source tree that was never installed
            value = "0+unknown"
        globals()[name] = value
        return value
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'cost_middleware' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
