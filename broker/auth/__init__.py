"""Who is calling: tokens, sessions, the device flow, rate limits and identity sources.

Services here open transactions with ``broker.transaction()`` and leave every SQL statement to
the store (``store.principals``, ``sessions``, ``device_codes``, ``rate_events``).
``device_flow`` is the device authorization's state machine, pure.
``tokencache`` keeps the claims of access tokens whose signature checked (no I/O).
"""
