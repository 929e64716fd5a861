"""Notifications: signed webhooks about grants, written to the outbox with the change they report.

``kinds`` names the events (``Notice``); ``endpoints`` is the settings' model of one webhook
endpoint and where its signing secret comes from; ``emit.notify`` writes one outbox row per
subscribed endpoint in the caller's transaction (the grant lifecycle calls it for every
transition, ``auth.identity`` for a lock-out, approvals for reviews); ``forms`` renders the
Slack and JSON bodies; ``signing`` the HMAC signature; ``delivery`` POSTs them from the outbox
(``WebhookLoop``) and audits a delivery it gives up on. docs/notifications.md is the reference.

May import: audit, events, store, runtime (types), settings-free shared code. This package
imports no grant or auth service (they import it), and ``__init__`` imports nothing, so that
``settings`` can import ``endpoints`` without importing the outbox.
"""
