"""The `access-broker` commands (typer): serve, migrate, users, service-accounts, policy, audit.

``main`` is the console script: it checks the broker extra is installed before importing the
commands, so a CLI-only install says what to install instead of raising ImportError.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    """Console-script entry point of ``access-broker``."""
    from access.shared.extras import BROKER_INSTALL_HINT, missing_broker_modules

    missing = missing_broker_modules()
    if missing:
        print(
            f"access-broker: the broker's dependencies are not installed ({', '.join(missing)}); "
            f"{BROKER_INSTALL_HINT}",
            file=sys.stderr,
        )
        raise SystemExit(1)
    from access.shared.entrypoint import skip_httpx_cli

    skip_httpx_cli()
    from access.broker.admin.main import main as run

    run()
