"""Sans-I/O protocol machines for the targets the broker logs in to (issue 10).

One module per protocol: ``postgres``, ``mysql``, ``resp`` (Redis), over the shared types of
``base``. A machine takes bytes and hands back bytes and events; no line here touches a socket
or an event loop (h11 is the model), so each is tested byte by byte and against real servers.

The tunnel drives them: a ``Handshake`` per channel logs the broker in to the target with the
grant's identity while the client connects with no password, then the channel relays and a
``Tap`` records the statements the client sends.

May import: the standard library and pure protocol libraries (``scramp``). Nothing else of the broker.
"""
