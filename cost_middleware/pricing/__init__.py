"""Exact pricing: ``Price`` and its cost arithmetic, model matching, the cached ``PriceBook``,
price sources (SQL table, catalog file, memory), catalog files, admin functions, Redis sync.

Import from the submodules (``cost_middleware.pricing.book`` ...): this package imports nothing,
so loading the cost arithmetic never loads SQLAlchemy.
"""
