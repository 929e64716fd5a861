"""``access-broker``: serve the broker and manage its directory, policy and ledger.

Subcommand groups live beside this file: ``admin_identity`` (users, service-accounts) and
``admin_audit`` (audit verify/export/checkpoint). Options shared by all: ``--data-dir`` and
``--database-url`` (or ``ACCESS_BROKER_DATA_DIR`` / ``ACCESS_BROKER_DATABASE_URL``).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from access.broker.admin.common import (
    DatabaseUrl,
    DataDir,
    admin_broker,
    bind_socket,
    build_settings,
    fail,
    open_broker,
)
from access.broker.errors import BrokerError

__all__ = ["DataDir", "DatabaseUrl", "app", "bind_socket", "build_settings", "fail", "main", "open_broker"]

app = typer.Typer(
    name="access-broker",
    help="The access grant broker: policy, expiry, the audit ledger and the tunnel endpoint.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def serve(
    policy: Annotated[Path | None, typer.Option(help="Policy YAML file [env: ACCESS_BROKER_POLICY]")] = None,
    host: Annotated[str | None, typer.Option(help="Listen address [env: ACCESS_BROKER_HOST]")] = None,
    port: Annotated[
        int | None, typer.Option(help="Listen port, 0 picks a free one [env: ACCESS_BROKER_PORT]")
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="PEM certificate chain [env: ACCESS_BROKER_TLS_CERT]")
    ] = None,
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
    """Create or upgrade the database schema, reinstall the ledger's append-only guards if any
    is missing or changed (recorded in the ledger), then exit."""
    from access.broker.admin.common import say
    from access.broker.admin.identity import admin_actor
    from access.broker.audit.checkpoints import restore_guards

    with admin_broker(data_dir, database_url) as broker:
        where = broker.engine.url.render_as_string(hide_password=True)
        found = restore_guards(broker, admin_actor())
    for problem in found:
        say(f"warning: {problem}: reinstalled", err=True)
    if found:
        typer.echo(
            "the ledger's append-only guards were reinstalled: run `access-broker audit verify` "
            "to check that nothing was changed while they were gone",
            err=True,
        )
    typer.echo(f"database at {where} is up to date", err=True)


def _register_groups() -> None:
    from access.broker.admin.audit import audit_app
    from access.broker.admin.identity import service_accounts_app, users_app
    from access.broker.admin.policy import policy_app

    app.add_typer(users_app, name="users")
    app.add_typer(service_accounts_app, name="service-accounts")
    app.add_typer(audit_app, name="audit")
    app.add_typer(policy_app, name="policy")


_register_groups()


def main() -> None:
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    app()
