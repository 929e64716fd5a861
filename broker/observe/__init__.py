"""What the broker tells its operators: Prometheus metrics and the structured log.

``metrics`` holds each broker's registry (``metrics_for``); ``collector`` reads the database's
counts and ages when scraped (through ``store.gauges``); ``requests`` is the ASGI middleware
that gives every request an id, a log line and its counts; ``logs`` sets up the log's format.
It may import ``store``, ``events``, ``perbroker`` and ``shared``; the audit and tunnel code import
``metrics`` to count what they do.
"""
