"""MySQL and MariaDB clients: ``MYSQL_HOST``/``MYSQL_TCP_PORT``; an option file with the database and
no TLS to the local port, that ``mysql``/``mariadb`` get as ``--defaults-extra-file``.

No password: the broker logs in to the target itself. The option file holds no secret; it turns
TLS off for the loopback leg (the tunnel is already encrypted, and the broker terminates none):
``ssl-mode=DISABLED`` for MySQL's clients, ``skip-ssl`` for MariaDB's, each ``loose-`` so that
the other client does not stop at an option it does not know.
"""

from __future__ import annotations

from pathlib import Path

from access.shared.kinds.base import ClientContext, ClientKind, ClientSetup, ConnectionInfo

__all__ = ["MySQLClient"]

_PROGRAMS = frozenset({"mysql", "mariadb", "mysqldump", "mariadb-dump"})
# The user the client presents: ignored by the broker, which logs in as the grant's identity.
LOCAL_USER = "access"


def _mycnf_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


class MySQLClient(ClientKind):
    name = "mysql"

    def configure(self, setup: ClientSetup, info: ConnectionInfo, where: ClientContext) -> None:
        setup.env.update(MYSQL_HOST=where.host, MYSQL_TCP_PORT=str(where.port))
        if not where.with_secrets:
            return
        lines = ["[client]", f'user="{_mycnf_escape(info.user or LOCAL_USER)}"', "loose-ssl-mode=DISABLED"]
        lines.append("loose-skip-ssl")
        if info.database:
            lines.append(f'database="{_mycnf_escape(info.database)}"')
        setup.option_file = setup.secret_file(where.secret_dir, "access-my-", "\n".join(lines) + "\n")

    def args_for(self, setup: ClientSetup, argv: list[str], host: str, port: int) -> list[str]:
        if Path(argv[0]).name in _PROGRAMS and setup.option_file is not None:
            # It must come first: MariaDB ignores --defaults-extra-file anywhere else.
            return [argv[0], f"--defaults-extra-file={setup.option_file}", *argv[1:]]
        return argv
