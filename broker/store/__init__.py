"""Tables, the engine, migrations, and one module per aggregate: all SQL lives in this package.

``tables`` and ``engine`` are the schema and the connection; ``principals``, ``sessions``,
``device_codes``, ``rate_events``, ``grants``, ``outbox`` and ``audit`` hold the statements,
as small functions that take a connection and return plain values. The store imports nothing
of the broker but itself, ``clock`` and ``errors`` (tests/broker/test_imports.py checks it).
"""
