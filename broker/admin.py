"""``access-broker``: serve the broker and manage its directory, policy and ledger.

Subcommand groups live beside this file: ``admin_identity`` (users, service-accounts) and
``admin_audit`` (audit verify/export/checkpoint). Options shared by all: ``--data-dir`` and
``--database-url`` (or ``ACCESS_BROKER_DATA_DIR`` / ``ACCESS_BROKER_DATABASE_URL``).
"""

from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from access.broker.errors import BrokerError
from access.broker.settings import Settings

__all__ = ["app", "main", "open_broker"]

app = typer.Typer(
    name="access-broker",
    help="The access grant broker: policy, expiry, the audit ledger and the tunnel endpoint.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Broker data directory [env: ACCESS_BROKER_DATA_DIR]")
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", help="sqlite:///PATH or postgresql://... [env: ACCESS_BROKER_DATABASE_URL]"),
]


def build_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with flags that were given taking precedence.

    Raises:
        typer.BadParameter: the combination is invalid (e.g. plain HTTP on a public address).
    """
    from pydantic import ValidationError

    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        messages = "; ".join(str(e.get("msg", e)).removeprefix("Value error, ") for e in exc.errors())
        raise typer.BadParameter(messages) from exc


def open_broker(data_dir: Path | None, database_url: str | None, **overrides: Any) -> Any:
    """A ``Broker`` for admin commands (migrated database, keys loaded, policy if configured)."""
    from access.broker.runtime import Broker

    return Broker.from_settings(build_settings(data_dir=data_dir, database_url=database_url, **overrides))


def fail(message: str, hint: str | None = None, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    if hint:
        typer.echo(f"hint: {hint}", err=True)
    return typer.Exit(code)


@app.command()
def serve(
    policy: Annotated[Path | None, typer.Option(help="Policy YAML file [env: ACCESS_BROKER_POLICY]")] = None,
    host: Annotated[str | None, typer.Option(help="Listen address [env: ACCESS_BROKER_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port, 0 picks a free one [env: ACCESS_BROKER_PORT]")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate chain [env: ACCESS_BROKER_TLS_CERT]")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key [env: ACCESS_BROKER_TLS_KEY]")] = None,
    insecure_http: Annotated[
        bool | None,
        typer.Option("--insecure-http", help="Allow plain HTTP on a non-loopback address (INSECURE)"),
    ] = None,
    public_url: Annotated[str | None, typer.Option(help="URL clients reach the broker at")] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    ready_file: Annotated[
        Path | None, typer.Option(help="Write the broker's URL to this file once it accepts connections")
    ] = None,
) -> None:
    """Run the broker: HTTPS API, device-login page and tunnel endpoint on one port."""
    settings = build_settings(
        policy=policy,
        host=host,
        port=port,
        tls_cert=tls_cert,
        tls_key=tls_key,
        insecure_http=insecure_http,
        public_url=public_url,
        data_dir=data_dir,
        database_url=database_url,
    )
    from access.broker.server import run

    try:
        run(settings, ready_file=ready_file)
    except BrokerError as exc:
        raise fail(exc.message, exc.hint) from exc
    except (OSError, ValueError) as exc:
        raise fail(str(exc)) from exc


@app.command()
def migrate(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Create or upgrade the database schema, then exit."""
    broker = open_broker(data_dir, database_url)
    typer.echo(f"database at {broker.engine.url.render_as_string(hide_password=True)} is up to date", err=True)


def _register_groups() -> None:
    from access.broker.admin_audit import audit_app
    from access.broker.admin_identity import service_accounts_app, users_app
    from access.broker.admin_policy import policy_app

    app.add_typer(users_app, name="users")
    app.add_typer(service_accounts_app, name="service-accounts")
    app.add_typer(audit_app, name="audit")
    app.add_typer(policy_app, name="policy")


_register_groups()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    app()


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the listening socket before the app starts, so a port of 0 is known up front."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock
