"""Spend limits that hold across every process (docs/BUDGETS.md).

``model`` (scopes, windows, budgets), ``store`` (the ``budgets`` table), ``spend`` (a window's
spend from the ledger), ``counting`` (the Redis counters and the local ones), ``gate`` (the
set of spent budgets the request path reads), ``runtime`` (one process's budget worker) and
``api`` (what the commands and users call).
"""
