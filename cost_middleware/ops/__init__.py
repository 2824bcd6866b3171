"""Operator tools: the command line, the demo, doctor, reports and their rendering."""
