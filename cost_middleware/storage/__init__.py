"""The SQL ledger: engine set-up, record <-> row, sinks."""
