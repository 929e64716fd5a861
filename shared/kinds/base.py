"""The client side of a service kind: what the broker says about a grant, and the interface each
kind implements to turn it into a client program's environment.

A kind lives in one module (``postgres.py``, ``mysql.py``, ...) with one ``ClientKind`` subclass;
``access.shared.kinds`` registers them. Nothing here opens sockets: a kind only writes
environment variables, private files and arguments for a program that ``access exec`` runs.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import ClassVar, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ClientContext", "ClientKind", "ClientSetup", "ConnectionInfo"]


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
    secret_dir: Path | None = None  # where private files go (the system's temporary folder)


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
        """Write ``content`` to a new file only its owner can read; ``cleanup`` deletes it."""
        fd, name = tempfile.mkstemp(prefix=prefix, dir=directory)  # created 0600
        path = Path(name)
        self.files.append(path)
        with os.fdopen(fd, "w") as fh:
            fh.write(content)
        return path

    def cleanup(self) -> None:
        for path in self.files:
            path.unlink(missing_ok=True)
        self.files.clear()
