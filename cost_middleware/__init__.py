"""cost-middleware: prices every AI-provider call flowing through an ASGI or WSGI app."""

from cost_middleware.config import ConfigError, Settings
from cost_middleware.records import CostRecord
from cost_middleware.usage.model import Usage

__all__ = ["ConfigError", "CostRecord", "Settings", "Usage"]
