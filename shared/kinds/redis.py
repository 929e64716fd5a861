"""Redis clients: ``REDISCLI_AUTH`` where a password is configured; ``redis-cli`` gets ``-h``/``-p``."""

from __future__ import annotations

from pathlib import Path

from access.shared.kinds.base import ClientContext, ClientKind, ClientSetup, ConnectionInfo

__all__ = ["RedisClient"]


class RedisClient(ClientKind):
    name = "redis"

    def configure(self, setup: ClientSetup, info: ConnectionInfo, where: ClientContext) -> None:
        if where.with_secrets and info.password is not None:
            # redis-cli reads it from here instead of argv (it warns about -a on the command line).
            setup.env["REDISCLI_AUTH"] = info.password

    def args_for(self, setup: ClientSetup, argv: list[str], host: str, port: int) -> list[str]:
        # redis-cli reads no host or port from the environment.
        if Path(argv[0]).name == "redis-cli" and not {"-h", "-p", "-u", "-s"} & set(argv[1:]):
            return [argv[0], "-h", host, "-p", str(port), *argv[1:]]
        return argv
