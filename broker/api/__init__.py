"""Thin JSON and OAuth routes: parse, call one service function, return a model.

``deps`` holds the ``Annotated`` dependencies (``BrokerDep``, ``CurrentPrincipal``); ``router``
mounts the /v1 API; ``schema`` builds ``/openapi.json`` and holds the error answers routes
declare, ``oauth_schema`` the models that describe the OAuth forms and answers. Routes hold no
SQL and no decisions: they may import the services (auth, grants, audit, policy for listings),
``deps``, ``errors`` and ``shared`` models; nothing imports ``api`` but ``app``.
"""
