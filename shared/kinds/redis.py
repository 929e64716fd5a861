"""Redis clients: no password (the broker logs in to the target itself); ``redis-cli`` gets ``-h``/``-p``."""

from __future__ import annotations

from pathlib import Path

from access.shared.kinds.base import ClientKind, ClientSetup

__all__ = ["RedisClient"]


class RedisClient(ClientKind):
    name = "redis"

    def args_for(self, setup: ClientSetup, argv: list[str], host: str, port: int) -> list[str]:
        # redis-cli reads no host or port from the environment.
        if Path(argv[0]).name == "redis-cli" and not {"-h", "-p", "-u", "-s"} & set(argv[1:]):
            return [argv[0], "-h", host, "-p", str(port), *argv[1:]]
        return argv
