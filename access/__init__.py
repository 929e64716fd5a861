"""access: just-in-time, scoped, audited access to production services.

``access.cli`` is the command-line client, ``access.broker`` the grant broker (installed with the
``broker`` extra) and ``access.shared`` what both sides use. The source folders are ``cli/``,
``broker/`` and ``shared/`` at the repository's top; this folder links to them.
"""
