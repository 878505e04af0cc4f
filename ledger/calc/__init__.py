"""Pure ledger arithmetic and hashing: no Django imports, so it can be tested (and audited) on plain data."""
