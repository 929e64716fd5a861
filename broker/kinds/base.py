"""The interface every service kind implements, broker side.

A kind knows how to describe a connection to the CLI (``connection_details``): which database
to use. For a kind the broker logs in to (``broker_logs_in``: postgres, mysql, redis) that is
all: the broker's channel logs in with the service's user and password (``kinds.login``) and
the CLI never holds them. For the others (tcp), the user and the password when the service has
one configured (read at request time from ``options.password_file`` or ``options.password_env``,
never stored in the policy). The CLI turns that into the client's environment
(``access.shared.kinds``).

Each kind is one subclass in its own module (``postgres.py``, ``mysql.py``, ...) with its client
side beside it (``client``: the ``access.shared.kinds`` module of the same name);
``access.broker.kinds`` registers them, and ``kind_for`` refuses a name it does not have
(``UnsupportedKind``): nothing falls back to raw TCP.

Coming next: per-grant credentials (a database role made when a grant is issued, dropped when it
ends) and stream inspection hooks (query-level audit from the bytes the tunnel relays) will be
added as methods of this class. A kind never opens sockets itself: the broker reaches targets
through a dialer and hands the kind what it needs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from access.broker.errors import Unavailable
from access.shared.kinds import ClientKind, ConnectionInfo

__all__ = ["ServiceKind", "UnsupportedKind", "read_password"]


class UnsupportedKind(LookupError):
    """No service kind of this name; the message lists the kinds there are."""


class ServiceKind:
    """The broker side of one service kind."""

    name: ClassVar[str]
    # The client side of the same kind: the environment ``access exec`` builds.
    client: ClassVar[ClientKind]
    # Options of a service (policy ``options:``) that this kind reads.
    uses_database: ClassVar[bool] = False
    # The broker logs in to the target itself (``kinds.login``): the CLI gets no user or password.
    broker_logs_in: ClassVar[bool] = False

    def connection_details(self, *, grant: Any) -> ConnectionInfo:
        """What the CLI needs for ``exec``/``env`` with ``grant`` (a ``grants.TunnelGrant``).

        Raises:
            Unavailable: a password source is configured but cannot be read.
        """
        options: Mapping[str, Any] = grant.options
        return ConnectionInfo(
            grant_id=grant.grant_id,
            service=grant.service,
            kind=grant.kind,
            scope=grant.scope,
            expires_at=grant.expires_at,
            database=_text(options.get("database")) if self.uses_database else None,
            user=None if self.broker_logs_in else _text(options.get("user")),
            password=None if self.broker_logs_in else read_password(grant.service, options),
        )


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def read_password(service: str, options: Mapping[str, Any]) -> str | None:
    """The password configured for ``service``: ``password_file`` or ``password_env``.

    Raises:
        Unavailable: the configured source cannot be read (a broker misconfiguration).
    """
    if options.get("password_file"):
        path = Path(str(options["password_file"]))
        try:
            return path.read_text().rstrip("\r\n")
        except OSError as exc:
            raise Unavailable(
                f"the broker cannot read the password for {service}",
                hint="operators: check the service's password_file",
            ) from exc
    if options.get("password_env"):
        value = os.environ.get(str(options["password_env"]))
        if value is None:
            raise Unavailable(
                f"the broker has no password for {service}", hint="operators: set the service's password_env"
            )
        return value
    return None
