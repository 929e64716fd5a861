"""Upstream OIDC sign-in: people sign in with their organisation's OpenID provider.

``config``: the providers of ``ACCESS_BROKER_OIDC_PROVIDERS``. ``protocol``: the authorization
code flow with PKCE (Authlib's sans-I/O helpers, our bounded HTTP through ``auth.jwks``).
``idtoken``: ID token validation. ``mapping``: claims -> user name and groups (pure).
``signin``: the flow's state in the database, provisioning, and completing a device login or
an inbox sign-in. ``refresh``: re-reading groups when a session refreshes.

May import the store, ``auth.jwks``, ``auth.device``, ``auth.websessions`` and the ledger;
``auth.sessions`` imports ``refresh`` (never the other way round).
"""
