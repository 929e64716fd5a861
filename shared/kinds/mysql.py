"""MySQL and MariaDB clients: ``MYSQL_HOST``/``MYSQL_TCP_PORT``; user, password and database in
a private option file that ``mysql``/``mariadb`` get as ``--defaults-extra-file``."""

from __future__ import annotations

from pathlib import Path

from access.shared.kinds.base import ClientContext, ClientKind, ClientSetup, ConnectionInfo

__all__ = ["MySQLClient"]

_PROGRAMS = frozenset({"mysql", "mariadb", "mysqldump", "mariadb-dump"})


def _mycnf_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


class MySQLClient(ClientKind):
    name = "mysql"

    def configure(self, setup: ClientSetup, info: ConnectionInfo, where: ClientContext) -> None:
        setup.env.update(MYSQL_HOST=where.host, MYSQL_TCP_PORT=str(where.port))
        if not where.with_secrets:
            return
        lines = ["[client]"]
        if info.user:
            lines.append(f'user="{_mycnf_escape(info.user)}"')
        if info.password is not None:
            lines.append(f'password="{_mycnf_escape(info.password)}"')
        if info.database:
            lines.append(f'database="{_mycnf_escape(info.database)}"')
        if len(lines) > 1:
            setup.option_file = setup.secret_file(where.secret_dir, "access-my-", "\n".join(lines) + "\n")

    def args_for(self, setup: ClientSetup, argv: list[str], host: str, port: int) -> list[str]:
        if Path(argv[0]).name in _PROGRAMS and setup.option_file is not None:
            # It must come first: MariaDB ignores --defaults-extra-file anywhere else.
            return [argv[0], f"--defaults-extra-file={setup.option_file}", *argv[1:]]
        return argv
