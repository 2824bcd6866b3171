"""The SQL ledger: engine set-up, schema revisions and migrations, record <-> row, sinks."""
