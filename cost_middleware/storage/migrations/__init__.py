"""The ledger's Alembic migration environment (``env.py``, ``versions/``), run by
:mod:`cost_middleware.storage.migrate`: configured in code, no ``alembic.ini``."""
