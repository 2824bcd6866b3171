"""Usage extraction: one module per provider family, a registry in ``registry``."""

from cost_middleware.usage.model import Extraction, Usage

__all__ = ["Extraction", "Usage"]
