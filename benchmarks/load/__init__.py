"""Servers, wrk script and StatsD sink for ``benchmarks/loadtest.py``."""
