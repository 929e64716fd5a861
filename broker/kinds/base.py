"""The interface every service kind implements, broker side.

A kind knows how to describe a connection to the CLI (``connection_details``): which database
and user to use, and the password when the service has one configured (read at request time
from ``options.password_file`` or ``options.password_env``, never stored in the policy). The
CLI turns that into the client's environment (``access.shared.kinds``).

ROADMAP 2 (per-grant database roles, query-level audit from the byte stream) adds methods to
this class, called where a grant is issued and ended and where the tunnel relays; built-in
kinds stay one module each.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from access.broker.errors import Unavailable
from access.shared.kinds import ConnectionInfo

__all__ = ["ServiceKind"]


class ServiceKind:
    name: ClassVar[str] = "tcp"
    default_port: ClassVar[int | None] = None
    # Options of a service (policy ``options:``) that this kind reads.
    uses_database: ClassVar[bool] = False

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
            user=_text(options.get("user")),
            password=read_password(grant.service, options),
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
