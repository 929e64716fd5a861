"""``access-broker``: serve the broker and manage its directory, policy and ledger.

Subcommand groups live beside this file: ``admin_identity`` (users, service-accounts),
``admin_audit`` (audit verify/export/checkpoint), ``policy`` and ``locks`` (lock, unlock,
locks). Options shared by all: ``--data-dir`` and ``--database-url`` (or
``ACCESS_BROKER_DATA_DIR`` / ``ACCESS_BROKER_DATABASE_URL``).
"""

from __future__ import annotations

import logging
import sys
from enum import StrEnum
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
    policy_failure,
    setting_help,
)
from access.broker.errors import BrokerError
from access.broker.policy import PolicyError
from access.shared.clihelp import HELP_NAMES, HelpfulGroup, Shell, completion_script, examples

__all__ = ["DataDir", "DatabaseUrl", "app", "bind_socket", "build_settings", "fail", "main", "open_broker"]

app = typer.Typer(
    name="access-broker",
    cls=HelpfulGroup,
    help="The access grant broker: policy, expiry, the audit ledger and the tunnel endpoint.",
    epilog=examples(
        "access-broker migrate --database-url postgresql://access@db/access",
        "access-broker serve --policy policy.yaml --tls-cert cert.pem --tls-key key.pem",
        "access-broker users add alice -g sre --password-stdin < password.txt",
        "access-broker audit verify",
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": HELP_NAMES},
)


class LogFormat(StrEnum):
    text = "text"
    json = "json"


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


@app.command(
    epilog=examples(
        "access-broker serve --policy policy.yaml --tls-cert cert.pem --tls-key key.pem",
        "# behind a proxy that terminates TLS:",
        "access-broker serve --host 0.0.0.0 --insecure-http --public-url https://access.example.com",
        "# settings from the environment:",
        "ACCESS_BROKER_POLICY=policy.yaml ACCESS_BROKER_PORT=8443 access-broker serve",
    )
)
def serve(
    policy: Annotated[Path | None, typer.Option(help=setting_help("policy"))] = None,
    host: Annotated[str | None, typer.Option(help=setting_help("host"))] = None,
    port: Annotated[int | None, typer.Option(help=setting_help("port"))] = None,
    tls_cert: Annotated[Path | None, typer.Option(help=setting_help("tls_cert"))] = None,
    tls_key: Annotated[Path | None, typer.Option(help=setting_help("tls_key"))] = None,
    insecure_http: Annotated[
        bool | None, typer.Option("--insecure-http", help=setting_help("insecure_http"))
    ] = None,
    public_url: Annotated[str | None, typer.Option(help=setting_help("public_url"))] = None,
    log_format: Annotated[LogFormat | None, typer.Option(help=setting_help("log_format"))] = None,
    log_level: Annotated[LogLevel | None, typer.Option(help=setting_help("log_level"))] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    ready_file: Annotated[
        Path | None, typer.Option(help="Write the broker's URL to this file once it accepts connections")
    ] = None,
) -> None:
    """Run the broker: HTTPS API, device-login page and tunnel endpoint on one port.

    Flags win over their ACCESS_BROKER_* variables; the other settings are variables only
    (docs/broker.md lists them all).
    """
    settings = build_settings(
        policy=policy,
        host=host,
        port=port,
        tls_cert=tls_cert,
        tls_key=tls_key,
        insecure_http=insecure_http,
        public_url=public_url,
        log_format=log_format.value if log_format else None,
        log_level=log_level.value if log_level else None,
        data_dir=data_dir,
        database_url=database_url,
    )
    from access.broker.server import run

    try:
        run(settings, ready_file=ready_file)
    except BrokerError as exc:
        raise fail(exc.message, exc.hint) from exc
    except PolicyError as exc:
        raise policy_failure(exc) from exc
    except (OSError, ValueError) as exc:
        raise fail(str(exc)) from exc


@app.command(
    epilog=examples(
        "access-broker migrate",
        "access-broker migrate --database-url postgresql://db.internal/access",
        "access-broker migrate --forget-identity",
    )
)
def migrate(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    forget_identity: Annotated[
        bool,
        typer.Option(
            "--forget-identity",
            help="Forget the issuer and keys replicas must share; the next serve records its own",
        ),
    ] = False,
) -> None:
    """Create or upgrade the database schema, reinstall the ledger's append-only guards if any
    is missing or changed (recorded in the ledger), then exit."""
    from access.broker.admin.common import say
    from access.broker.admin.identity import admin_actor
    from access.broker.audit.checkpoints import restore_guards

    with admin_broker(data_dir, database_url) as broker:
        where = broker.engine.url.render_as_string(hide_password=True)
        if forget_identity:
            from access.broker.startup import forget_identity as forget

            forget(broker)
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


@app.command(
    epilog=examples(
        "source <(access-broker completion bash)        # in ~/.bashrc",
        "access-broker completion fish > ~/.config/fish/completions/access-broker.fish",
    )
)
def completion(
    ctx: typer.Context,
    shell: Annotated[Shell, typer.Argument(help="bash, zsh or fish", case_sensitive=False)],
) -> None:
    """Print a shell completion script (bash, zsh or fish)."""
    sys.stdout.write(
        completion_script(ctx.find_root().info_name or "access-broker", shell).rstrip("\n") + "\n"
    )


def _register_groups() -> None:
    from access.broker.admin import totp as _totp_commands  # noqa: F401 (adds users totp-*)
    from access.broker.admin.audit import audit_app
    from access.broker.admin.identity import service_accounts_app, users_app
    from access.broker.admin.keys import keys_app
    from access.broker.admin.locks import register as register_locks
    from access.broker.admin.policy import policy_app

    app.add_typer(users_app, name="users")
    app.add_typer(service_accounts_app, name="service-accounts")
    app.add_typer(audit_app, name="audit")
    app.add_typer(policy_app, name="policy")
    app.add_typer(keys_app, name="keys")
    register_locks(app)


_register_groups()


def main() -> None:
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    app()
