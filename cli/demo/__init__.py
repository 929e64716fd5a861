"""``access demo``: the whole product in under 30 seconds, against a throwaway broker it starts.

It runs the real programs (``access-broker serve`` with TLS from a throwaway CA, the ``access``
CLI) as a person would, printing each command before running it. The one step a person would do
in a browser, the device-login page, it does itself through the same HTML forms, and says so.

``command`` holds the steps; ``runner`` starts the broker and runs the CLI; ``postgres`` is the
demo's PostgreSQL (its own database, a role per grant, the admin's ``psql``, the clean-up);
``targets`` holds the policy and the built-in echo service used when there is no PostgreSQL;
``console`` prints. May import: access.cli, access.shared (never access.broker: the demo drives the broker as
a program, as an operator would).
"""

from __future__ import annotations

from access.cli.demo.command import demo

__all__ = ["demo"]
