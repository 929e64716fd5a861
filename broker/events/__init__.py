"""What happens after a commit: the in-process event bus, and the outbox.

``bus``: events (``GrantDecided``, ``GrantEnded``, ``PrincipalLocked``) delivered to this
process's subscribers (the tunnel registry) after the transaction that decided them commits.
``outbox``: work written in that transaction and run later by ``OutboxLoop``, once, with
retries. ``listen``: ``SignalListener``, which publishes here the ends other processes decide
(PostgreSQL NOTIFY, sent by ``store.signals``). May import: store, loops, runtime, errors;
never a service room.
"""
