"""The built-in dashboard: pages and a JSON API over the ledger, as an ASGI app to serve
(``cost-middleware dashboard``) or mount (:func:`create_dashboard`)."""

from cost_middleware.ops.dashboard.app import Dashboard, create_dashboard

__all__ = ["Dashboard", "create_dashboard"]
