"""The audit ledger: actions, appends, signed checkpoints, verification and search.

``actions`` is the one enumeration of what the ledger records; ``ledger`` appends to the hash
chain inside the caller's transaction; ``checkpoints`` signs, exports and verifies; ``search``
serves ``GET /v1/audit``; ``statements`` batches the statements the tunnel taps into ledger
entries. SQL lives in ``access.broker.store.audit``. May import: store, keys, clock, errors,
runtime, loops, wire.base (the Statement type), auth.principal, shared; every room that changes
state imports this one.
"""
