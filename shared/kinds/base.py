"""The client side of a service kind: what the broker says about a grant, and the interface each
kind implements to turn it into a client program's environment.

A kind lives in one module (``postgres.py``, ``mysql.py``, ...) with one ``ClientKind`` subclass;
``access.shared.kinds`` registers them. Nothing here opens sockets: a kind only writes
environment variables, private files and arguments for a program that ``access exec`` runs.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import ClassVar, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ClientContext", "ClientKind", "ClientSetup", "ConnectionInfo", "remove_stale_secrets"]

# Secret files are named ``access-<what>-<pid>-<random>``: the pid of the process that wrote
# them, so a later run can tell the files of a process that is gone (killed with SIGKILL, say).
_SECRET_NAME = re.compile(r"access-[a-z]+-(?P<pid>[0-9]+)-")


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


class ClientContext(NamedTuple):
    """Where the client program reaches the service (the tunnel's local end), and how."""

    host: str
    port: int
    # False for ``access env``: passwords are left out and no file is written.
    with_secrets: bool = True
    # Where private files go: the caller's private folder (the CLI's is 0700); None is the
    # system's temporary folder, for callers that have nothing better.
    secret_dir: Path | None = None
    # A local listener that serves TLS (kubernetes): its certificate (PEM), and the token it
    # asks of its clients. Neither is a credential of the service.
    ca_pem: str | None = None
    local_token: str | None = None


class ClientKind:
    """The client side of one service kind (``name`` matches the broker's ``ServiceKind``)."""

    name: ClassVar[str]

    def configure(self, setup: ClientSetup, info: ConnectionInfo, where: ClientContext) -> None:
        """Add this kind's variables (and, ``where.with_secrets``, private files) to ``setup``."""

    def args_for(self, setup: ClientSetup, argv: list[str], host: str, port: int) -> list[str]:
        """``argv`` (not empty) with what a known client cannot take from the environment."""
        return argv


@dataclass
class ClientSetup:
    """Environment, extra arguments and secret files for one client program."""

    env: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    kind: ClientKind | None = None
    # A private file the program is handed in argv rather than the environment (mysql's options).
    option_file: Path | None = None

    def args_for(self, argv: list[str], host: str, port: int) -> list[str]:
        """``argv`` with the connection arguments a known client cannot take from the environment."""
        if not argv or self.kind is None:
            return argv
        return self.kind.args_for(self, argv, host, port)

    def secret_file(self, directory: Path | None, prefix: str, content: str) -> Path:
        """Write ``content`` to a new file only its owner can read; ``cleanup`` deletes it.

        ``prefix`` is ``access-<what>-``; the file's name adds this process's id (see
        :func:`remove_stale_secrets`).
        """
        # created 0600, with O_EXCL
        fd, name = tempfile.mkstemp(prefix=f"{prefix}{os.getpid()}-", dir=directory)
        path = Path(name)
        self.files.append(path)
        with os.fdopen(fd, "w") as fh:
            fh.write(content)
        return path

    def cleanup(self) -> None:
        for path in self.files:
            path.unlink(missing_ok=True)
        self.files.clear()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's process: alive
        return True
    except (OverflowError, OSError):
        return False
    return True


def remove_stale_secrets(directory: Path) -> list[Path]:
    """Delete the secret files in ``directory`` whose writing process is no longer running.

    A process killed with SIGKILL cannot run ``cleanup``; the next run calls this. Files of a
    running process, and files not named by ``secret_file``, are left alone. Returns what it deleted.
    """
    removed = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return []
    for path in entries:
        match = _SECRET_NAME.match(path.name)
        if match is None or _alive(int(match["pid"])):
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed
