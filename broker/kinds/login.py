"""What the broker logs in to a target with, for one grant: ``target_login`` (issue 10).

The client reaches the tunnel's local port with no password; the broker's channel logs in to
the target itself (``access.broker.wire``). Static mode: the service's ``options`` name the
``user``, the password (``password_file`` or ``password_env``, read at each channel's open,
never stored in the policy) and the ``database``. A service with ``credentials: {mode:
dynamic}`` logs in as the grant's own identity instead (``identities.logins.identity_login``),
and a grant without one is refused: never a fallback to a shared login. The login is never
logged, never put in an audit entry, and never sent to the CLI.

``target_tls`` reads the service's ``tls`` and ``tls_ca_file`` options (flat: policy options are
scalars): how the broker's leg to the target is encrypted (``disable`` by default, ``require``,
``verify-full``, against ``tls_ca_file`` or the system's CAs).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from access.broker.errors import Unavailable
from access.broker.kinds import KINDS
from access.broker.kinds.base import read_password
from access.broker.wire.base import TargetLogin

__all__ = ["LOGIN_KINDS", "TLS_MODES", "TargetTls", "target_login", "target_tls"]

# The kinds whose channels the broker logs in to (a protocol machine in ``access.broker.wire``).
LOGIN_KINDS = frozenset(kind.name for kind in KINDS.values() if kind.broker_logs_in)
TLS_MODES = ("disable", "require", "verify-full")
# Redis's built-in user: the one ``AUTH password`` (no user name) logs in as.
_REDIS_USER = "default"


def target_login(broker: Any, grant: Any) -> TargetLogin | None:
    """The login for ``grant`` (a ``grants.TunnelGrant``) on its target; None for a kind the
    broker does not log in to (``tcp``: bytes only).

    Raises:
        Unavailable: the service names no user (postgres, mysql), or its password source cannot
            be read: a broker misconfiguration, told to the operators, never worked around; or
            a dynamic service has no identity for this grant (not made, or already ended).
    """
    if grant.kind not in LOGIN_KINDS:
        return None
    service = broker.policy.service(grant.service)
    credentials = getattr(service, "credentials", None)
    if credentials is not None and credentials.mode == "dynamic":
        from access.broker.identities.logins import identity_login

        login = identity_login(broker, grant.grant_id)
        if login is None:
            raise Unavailable(
                f"the broker has no identity on {grant.service} for grant {grant.grant_id}",
                hint="request a new grant; operators: the broker's log says why the identity is missing",
            )
        return login
    options: Mapping[str, Any] = grant.options
    user = options.get("user")
    if user is None and grant.kind == "redis":
        user = _REDIS_USER
    if user is None or not str(user):
        raise Unavailable(
            f"the broker has no user to log in to {grant.service} with",
            hint="operators: set the service's options.user in the policy",
        )
    password = read_password(grant.service, options) or ""
    database = options.get("database")
    return TargetLogin(str(user), password, None if database is None else str(database))


@dataclass(frozen=True, slots=True)
class TargetTls:
    """How the broker's leg to one target is encrypted."""

    mode: str  # "disable", "require" or "verify-full"
    ca_file: str | None = None

    def context(self) -> ssl.SSLContext | None:
        """The client context for the target leg (None: plain TCP).

        ``require`` encrypts but checks neither the certificate nor the name (libpq's
        ``sslmode=require``); ``verify-full`` checks both, against ``ca_file`` or the system's CAs.
        """
        if self.mode == "disable":
            return None
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.mode == "require":
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def target_tls(grant: Any) -> TargetTls:
    """The service's ``tls`` option (disable, require or verify-full) and ``tls_ca_file``, checked.

    Raises:
        Unavailable: an unknown mode, or a ``tls_ca_file`` that cannot be read.
    """
    options: Mapping[str, Any] = grant.options
    mode = str(options.get("tls", "disable"))
    hint = "operators: fix the service's options.tls (disable, require or verify-full) and tls_ca_file"
    if mode not in TLS_MODES:
        raise Unavailable(f"the tls mode of {grant.service} is not one of {', '.join(TLS_MODES)}", hint=hint)
    ca_file = options.get("tls_ca_file")
    if ca_file is not None and not Path(str(ca_file)).is_file():
        raise Unavailable(f"the broker cannot read the tls_ca_file of {grant.service}", hint=hint)
    return TargetTls(mode, None if ca_file is None else str(ca_file))
