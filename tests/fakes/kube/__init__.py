"""The pieces of the Kubernetes API stand-in (tests/fakes/kubeapi.py is its entry point).

``http`` (HTTP/1.1 and WebSocket over TLS), ``api`` (authentication and routing), ``objects``
(the store, watches, logs, the seeded cluster), ``tables`` (server-side printing), ``patch``,
``exec`` (the v5/v4 channel protocol), ``spdy`` (port-forward), ``status`` (error bodies) and
``discovery/`` (the API documents). Nothing here imports from the product but
``access.shared`` helpers.
"""
