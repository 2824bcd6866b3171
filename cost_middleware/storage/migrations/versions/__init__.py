"""The ledger's revisions, oldest first; each is frozen once released."""
