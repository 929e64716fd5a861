"""What a client program needs to reach a service through a local tunnel, per service kind.

The broker owns the service definition and hands the CLI a ``ConnectionInfo`` for a grant
(``GET /v1/grants/{id}/connection``, over TLS). The CLI turns it into the environment of the
program ``access exec`` runs (and the ``export`` lines of ``access env``):

- every kind: ``ACCESS_HOST``, ``ACCESS_PORT``, ``ACCESS_ADDR``, ``ACCESS_SERVICE``, ``ACCESS_GRANT``;
- postgres (``postgres.py``): ``PGHOST``, ``PGPORT``, ``PGDATABASE``, ``PGUSER`` (``access``: the
  broker ignores it); no password: the broker logs in to the target itself (issue 10);
- mysql (``mysql.py``): ``MYSQL_HOST``, ``MYSQL_TCP_PORT``; the database, a user the broker ignores
  and TLS off for the loopback leg through an option file (no secret in it; 0600, deleted
  afterwards) that ``mysql``/``mariadb`` get as ``--defaults-extra-file``; no password;
- redis (``redis.py``): no password (a client that sends AUTH is refused: the broker logged in);
  ``redis-cli`` reads no host or port from the environment, so ``access exec`` adds ``-h``/``-p``;
- kubernetes (``kubernetes.py``): ``KUBECONFIG``, a kubeconfig for the local listener (which
  serves TLS with a throwaway certificate and asks for a per-run local token); no cluster
  credential (the broker adds its own to each request);
- tcp (``tcp.py``): nothing more.

Each kind is one ``ClientKind`` (``base.py``) in its own module, the client side of the broker's
``access.broker.kinds`` module of the same name. Secret files are written by ``ClientSetup``;
the caller deletes them with ``cleanup``, in a private folder it chooses (the CLI's is 0700);
their names carry the writer's pid, so ``remove_stale_secrets`` can delete those of a process
that was killed before it could. This package imports nothing from the broker or the CLI.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from access.shared.kinds.base import (
    ClientContext,
    ClientKind,
    ClientSetup,
    ConnectionInfo,
    remove_stale_secrets,
)
from access.shared.kinds.kubernetes import KubernetesClient
from access.shared.kinds.mysql import MySQLClient
from access.shared.kinds.postgres import PostgresClient
from access.shared.kinds.redis import RedisClient
from access.shared.kinds.tcp import TcpClient

__all__ = [
    "CLIENT_KINDS",
    "ClientContext",
    "ClientKind",
    "ClientSetup",
    "ConnectionInfo",
    "client_setup",
    "remove_stale_secrets",
]

CLIENT_KINDS: Mapping[str, ClientKind] = {
    kind.name: kind
    for kind in (PostgresClient(), MySQLClient(), RedisClient(), KubernetesClient(), TcpClient())
}


def client_setup(
    info: ConnectionInfo,
    host: str,
    port: int,
    *,
    secret_dir: Path | None = None,
    with_secrets: bool = True,
    ca_pem: str | None = None,
    local_token: str | None = None,
) -> ClientSetup:
    """The client environment for ``info`` reached at ``host:port``.

    ``with_secrets=False`` (``access env``) leaves passwords out instead of writing files.
    ``ca_pem`` and ``local_token``: the local listener's TLS certificate and token (kubernetes).
    The broker refuses a policy with a kind it does not support, so an unknown kind here means
    a broker newer than this CLI: its program gets the ``ACCESS_*`` variables every kind gets,
    and nothing is guessed for it.
    """
    setup = ClientSetup(kind=CLIENT_KINDS.get(info.kind))
    setup.env.update(
        ACCESS_HOST=host,
        ACCESS_PORT=str(port),
        ACCESS_ADDR=f"{host}:{port}",
        ACCESS_SERVICE=info.service,
        ACCESS_GRANT=info.grant_id,
    )
    if setup.kind is not None:
        where = ClientContext(host, port, with_secrets, secret_dir, ca_pem, local_token)
        setup.kind.configure(setup, info, where)
    return setup
