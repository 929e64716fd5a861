"""Per-grant identities on targets (issue 10): made when a grant is issued, ended with it.

``base`` holds the types and the ``Provisioner`` interface; one module per target kind
(``postgres`` with psycopg, ``mysql`` with PyMySQL, ``redis`` with redis-py) talks to the target
with the broker's own admin credential, every wait bounded; ``common`` holds what they share
(``AdminLogin``, names and tags, ``ProvisionFailed``, the bounded session cut, the watchdog).

May import: ``access.broker.errors`` and the target's client library. Not the store, not the tunnel.
"""
