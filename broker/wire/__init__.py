"""Sans-I/O protocol machines for the targets the broker logs in to (issue 10).

One module per protocol: ``postgres``, ``mysql``, ``resp`` (Redis), over the shared types of
``base``. A machine takes bytes and hands back bytes and events; no line here touches a socket
or an event loop (h11 is the model), so each is tested byte by byte and against real servers.

The tunnel drives them: a ``Handshake`` per channel logs the broker in to the target with the
grant's identity while the client connects with no password, then the channel relays and a
``Tap`` records the statements the client sends.

May import: the standard library (no sockets, no event loop), ``scramp`` (PostgreSQL SCRAM) and
``cryptography`` (MySQL's RSA password exchange). Nothing else of the broker
(tests/broker/test_imports.py). ``ed25519`` is MariaDB's ``client_ed25519`` signature, which
standard libraries cannot make: MariaDB uses SHA-512 of the password as the expanded secret
key, where RFC 8032 libraries only take a 32-byte seed.
"""
