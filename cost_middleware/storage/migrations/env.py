"""Alembic's environment: migrations run on the connection (and in the transaction) that
:func:`cost_middleware.storage.migrate.migrate` passes in ``config.attributes``."""

from __future__ import annotations

from alembic import context

from cost_middleware.schema import VERSION_TABLE, metadata

context.configure(connection=context.config.attributes["connection"],
                  target_metadata=metadata, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
