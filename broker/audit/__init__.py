"""The audit ledger: actions, appends, signed checkpoints, verification and search."""
