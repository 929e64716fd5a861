"""What a client program needs to reach a service through a local tunnel, per service kind.

The broker owns the service definition and hands the CLI a ``ConnectionInfo`` for a grant
(``GET /v1/grants/{id}/connection``, over TLS). The CLI turns it into the environment of the
program ``access exec`` runs (and the ``export`` lines of ``access env``):

- every kind: ``ACCESS_HOST``, ``ACCESS_PORT``, ``ACCESS_ADDR``, ``ACCESS_SERVICE``, ``ACCESS_GRANT``;
- postgres: ``PGHOST``, ``PGPORT``, ``PGDATABASE``, ``PGUSER``, and the password through a
  temporary ``PGPASSFILE`` (mode 0600, deleted afterwards): never in argv or the environment;
- mysql: ``MYSQL_HOST``, ``MYSQL_TCP_PORT``; user, password and database through an option
  file (0600, deleted afterwards) that ``mysql``/``mariadb`` get as ``--defaults-extra-file``;
- redis: ``REDISCLI_AUTH`` where a password is configured; ``redis-cli`` reads no host or port
  from the environment, so ``access exec`` adds ``-h``/``-p`` when none are given.

Secret files are written by ``ClientSetup.write``; the caller deletes them with ``cleanup``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ClientSetup", "ConnectionInfo", "client_setup"]


class ConnectionInfo(BaseModel):
    """The broker's answer to ``GET /v1/grants/{id}/connection``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    grant_id: str
    service: str
    kind: str
    scope: str
    expires_at: datetime
    database: str | None = None
    user: str | None = None
    # Only ever over TLS in a response body; never logged, never in argv or the environment.
    password: str | None = Field(default=None, repr=False)


@dataclass
class ClientSetup:
    """Environment, extra arguments and secret files for one client program."""

    env: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    secret_env: frozenset[str] = frozenset()  # names whose values must not be printed
    _arg_files: dict[str, Path] = field(default_factory=dict)

    def args_for(self, argv: list[str], host: str, port: int) -> list[str]:
        """``argv`` with the connection arguments a known client cannot take from the environment."""
        if not argv:
            return argv
        program = Path(argv[0]).name
        rest = argv[1:]
        if program == "redis-cli" and not {"-h", "-p", "-u", "-s"} & set(rest):
            return [argv[0], "-h", host, "-p", str(port), *rest]
        option_file = self._arg_files.get("mysql")
        if program in ("mysql", "mariadb", "mysqldump", "mariadb-dump") and option_file is not None:
            # It must come first: MariaDB ignores --defaults-extra-file anywhere else.
            return [argv[0], f"--defaults-extra-file={option_file}", *rest]
        return argv

    def cleanup(self) -> None:
        for path in self.files:
            path.unlink(missing_ok=True)
        self.files.clear()


def _secret_file(directory: Path | None, prefix: str, content: str) -> Path:
    fd, name = tempfile.mkstemp(prefix=prefix, dir=directory)  # created 0600
    with os.fdopen(fd, "w") as fh:
        fh.write(content)
    return Path(name)


def _pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def _mycnf_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def client_setup(
    info: ConnectionInfo, host: str, port: int, *, secret_dir: Path | None = None, with_secrets: bool = True
) -> ClientSetup:
    """The client environment for ``info`` reached at ``host:port``.

    ``with_secrets=False`` (``access env``) leaves passwords out instead of writing files.
    """
    setup = ClientSetup()
    env = setup.env
    env.update(
        ACCESS_HOST=host,
        ACCESS_PORT=str(port),
        ACCESS_ADDR=f"{host}:{port}",
        ACCESS_SERVICE=info.service,
        ACCESS_GRANT=info.grant_id,
    )
    password = info.password if with_secrets else None
    if info.kind == "postgres":
        env.update(PGHOST=host, PGPORT=str(port))
        if info.database:
            env["PGDATABASE"] = info.database
        if info.user:
            env["PGUSER"] = info.user
        if password is not None:
            line = ":".join(
                _pgpass_escape(v) for v in (host, str(port), info.database or "*", info.user or "*", password)
            )
            path = _secret_file(secret_dir, "access-pgpass-", line + "\n")
            setup.files.append(path)
            env["PGPASSFILE"] = str(path)
    elif info.kind == "mysql":
        env.update(MYSQL_HOST=host, MYSQL_TCP_PORT=str(port))
        lines = ["[client]"]
        if info.user:
            lines.append(f'user="{_mycnf_escape(info.user)}"')
        if password is not None:
            lines.append(f'password="{_mycnf_escape(password)}"')
        if info.database:
            lines.append(f'database="{_mycnf_escape(info.database)}"')
        if len(lines) > 1 and with_secrets:
            path = _secret_file(secret_dir, "access-my-", "\n".join(lines) + "\n")
            setup.files.append(path)
            setup._arg_files["mysql"] = path
    elif info.kind == "redis" and password is not None:
        # redis-cli reads it from here instead of argv (it warns about -a on the command line).
        env["REDISCLI_AUTH"] = password
        setup.secret_env = frozenset({"REDISCLI_AUTH"})
    return setup
