"""``access-broker users ...`` and ``access-broker service-accounts ...``: the embedded directory.

Secrets never pass through argv: passwords come from stdin (``--password-stdin``) or a hidden
prompt, and a service account's client secret is printed once, at creation.
"""

from __future__ import annotations

import getpass
import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from access.broker.admin.common import DatabaseUrl, DataDir, admin_broker, fail, print_table, say
from access.broker.auth import identity
from access.broker.auth.identity import totp
from access.broker.runtime import Broker
from access.shared import terminal
from access.shared.clihelp import examples

__all__ = ["admin_actor", "service_accounts_app", "users_app"]

users_app = typer.Typer(
    help="Manage users of the embedded directory.",
    epilog=examples("access-broker users add alice -g sre", "access-broker users list"),
    no_args_is_help=True,
)
service_accounts_app = typer.Typer(
    help="Manage service accounts (OAuth client credentials for pipelines).",
    epilog=examples(
        "access-broker service-accounts add deploy-bot -g ci", "access-broker service-accounts list"
    ),
    no_args_is_help=True,
)


class Output(StrEnum):
    text = "text"
    json = "json"


Groups = Annotated[list[str] | None, typer.Option("--group", "-g", help="Group membership (repeatable)")]
OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="Output format")]


def admin_actor() -> str:
    """The audit actor for admin commands: ``admin:<os user>``."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return f"admin:{user}"[:64]


PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from the first line of stdin")
]


def _read_password(password_stdin: bool) -> str:
    if password_stdin:
        line = sys.stdin.readline()
        return line.removesuffix("\n").removesuffix("\r")
    if not sys.stdin.isatty():
        raise fail("no password given", "pipe it in with --password-stdin", code=2)
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Repeat password: "):
        raise fail("the passwords do not match; nothing was changed", code=2)
    return first


def _print_principals(broker: Broker, kind: str, output: Output) -> None:
    records = [p for p in identity.list_principals(broker) if p.kind == kind]
    if output is Output.json:
        with_totp = totp.users_with_totp(broker)
        shown = [
            p.to_dict() | ({} if p.kind != identity.USER else {"totp": p.id in with_totp}) for p in records
        ]
        typer.echo(json.dumps(shown, indent=2))
        return
    if not records:
        typer.echo(f"no {kind.replace('_', ' ')}s yet", err=True)
        return
    accounts = kind == identity.SERVICE_ACCOUNT
    header: tuple[str, ...] = ("NAME", "GROUPS", "STATUS", "CREATED")
    if accounts:
        header += ("OWNER", "CLIENT ID")
    with_totp = set() if accounts else totp.users_with_totp(broker)
    if not accounts:
        header += ("SOURCE", "TOTP")
    rows: list[tuple[str, ...]] = [header]
    for p in records:
        status = "disabled" if p.disabled else "active"
        created = p.created_at.strftime("%Y-%m-%d %H:%M UTC")
        groups = ",".join(p.groups) or "-"
        cells: tuple[str, ...] = (p.name, groups, status, created)
        if accounts:
            cells += (p.owner or "-", p.client_id or "")
        else:
            # "embedded", "oidc:<provider>", or a password user linked to a provider.
            source = p.source if p.subject is None or p.source != "embedded" else "embedded+linked"
            cells += (source, "on" if p.id in with_totp else "off")
        rows.append(cells)
    print_table(rows)


def _disable(name: str, data_dir: Path | None, database_url: str | None) -> None:
    with admin_broker(data_dir, database_url) as broker:
        ended = identity.disable_principal(broker, name, admin_actor())
    say(f"disabled {terminal.name(name)}: sessions revoked, {len(ended)} active grant(s) ended", err=True)


def _enable(name: str, kind: str, data_dir: Path | None, database_url: str | None) -> None:
    with admin_broker(data_dir, database_url) as broker:
        identity.enable_principal(broker, name, admin_actor(), kind)
    say(f"enabled {terminal.name(name)}: it signs in again (no earlier session or grant came back)", err=True)


def _revoke_sessions(name: str, kind: str, data_dir: Path | None, database_url: str | None) -> None:
    with admin_broker(data_dir, database_url) as broker:
        done = identity.revoke_sessions(broker, name, admin_actor(), kind)
    signed_in = done.sign_ins
    say(
        f"revoked the sessions of {terminal.name(name)}: {len(signed_in.session_ids)} session(s)"
        f" ({signed_in.inbox_sessions} in the inbox), {signed_in.device_logins} device login(s) not yet"
        f" completed, {len(done.grants_revoked)} active grant(s) revoked,"
        f" {len(done.requests_cancelled)} pending request(s) cancelled; live tunnels are cut",
        err=True,
    )
    say(f"{terminal.name(name)} stays enabled and may sign in again (`users disable` to stop that)", err=True)


@users_app.command(
    "add",
    epilog=examples(
        "access-broker users add alice -g sre -g oncall",
        "# from a script: the password is the first line of stdin",
        "printf '%s\\n' \"$PASSWORD\" | access-broker users add bob --password-stdin",
    ),
)
def users_add(
    name: Annotated[str, typer.Argument(help="User name (lowercase letters, digits, '.', '_', '-')")],
    group: Groups = None,
    password_stdin: PasswordStdin = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Add a user. The password comes from stdin or a hidden prompt, never from argv."""
    password = _read_password(password_stdin)
    with admin_broker(data_dir, database_url) as broker:
        identity.create_user(broker, name, group or [], password, actor=admin_actor())
    groups = ", ".join(terminal.name(g) for g in sorted(set(group or []))) or "no groups"
    say(f"added user {terminal.name(name)} ({groups})", err=True)


@users_app.command("list", epilog=examples("access-broker users list", "access-broker users list -o json"))
def users_list(
    output: OutputOpt = Output.text, data_dir: DataDir = None, database_url: DatabaseUrl = None
) -> None:
    """List users."""
    with admin_broker(data_dir, database_url) as broker:
        _print_principals(broker, identity.USER, output)


@users_app.command("disable", epilog=examples("access-broker users disable alice"))
def users_disable(
    name: Annotated[str, typer.Argument(help="User to disable")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Disable a user: revoke their sessions and end their active grants (tunnels close)."""
    _disable(name, data_dir, database_url)


@users_app.command(
    "set-password",
    epilog=examples(
        "access-broker users set-password alice",
        "printf '%s\\n' \"$PASSWORD\" | access-broker users set-password alice --password-stdin",
        "access-broker users set-password alice --keep-sessions",
    ),
)
def users_set_password(
    name: Annotated[str, typer.Argument(help="User whose password to replace")],
    password_stdin: PasswordStdin = False,
    keep_sessions: Annotated[
        bool,
        typer.Option(
            "--keep-sessions",
            help="Leave the user signed in where they are (default: every sign-in session ends)",
        ),
    ] = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Set a new password for a user (a reset). Their sign-in sessions end too, unless
    --keep-sessions: a reset after a compromise signs the attacker out. Grants stay."""
    password = _read_password(password_stdin)
    with admin_broker(data_dir, database_url) as broker:
        ended = identity.set_password(
            broker, name, password, actor=admin_actor(), keep_sessions=keep_sessions
        )
    if ended is None:
        say(f"set the password of {terminal.name(name)}; their sessions were kept", err=True)
    else:
        say(
            f"set the password of {terminal.name(name)}; {len(ended.session_ids)} sign-in session(s)"
            f" ended ({ended.inbox_sessions} in the inbox): they sign in again with the new one",
            err=True,
        )


@users_app.command("enable", epilog=examples("access-broker users enable alice"))
def users_enable(
    name: Annotated[str, typer.Argument(help="Disabled user to enable")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Enable a disabled user again. They must sign in anew: no earlier session or grant returns."""
    _enable(name, identity.USER, data_dir, database_url)


Provider = Annotated[
    str | None,
    typer.Option(
        "--provider", metavar="NAME", help="An upstream OIDC provider (ACCESS_BROKER_OIDC_PROVIDERS)"
    ),
]
Subject = Annotated[
    str | None,
    typer.Option("--subject", metavar="SUB", help="The person's subject there (the ID token's sub)"),
]


@users_app.command(
    "revoke-sessions",
    epilog=examples(
        "access-broker users revoke-sessions alice",
        "# the person an upstream provider knows as this subject",
        "access-broker users revoke-sessions --provider okta --subject 00u1abcd",
    ),
)
def users_revoke_sessions(
    name: Annotated[str | None, typer.Argument(help="User to sign out everywhere")] = None,
    provider: Provider = None,
    subject: Subject = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Offboard at once: end every session (CLI and inbox), grant and pending request of a user
    and cut their live tunnels on every replica. The user stays enabled (unlike disable).
    Name the user, or give --provider and --subject for the person an upstream provider knows."""
    if (name is None) == (provider is None or subject is None) or (provider is None) != (subject is None):
        raise fail("give a user name, or --provider and --subject (not both)", code=2)
    if name is None:
        assert provider is not None and subject is not None
        with admin_broker(data_dir, database_url) as broker:
            name = identity.find_upstream(broker, provider, subject).name
    _revoke_sessions(name, identity.USER, data_dir, database_url)


@users_app.command(
    "link", epilog=examples("access-broker users link alice --provider okta --subject 00u1abcd")
)
def users_link(
    name: Annotated[str, typer.Argument(help="Existing user to link")],
    provider: Provider = None,
    subject: Subject = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Link an existing user to a person at an upstream OIDC provider: signing in there then
    signs in as this user, whose groups become the provider's at each sign-in. (An upstream
    sign-in never takes over a user of the same name by itself; its error page names the subject.)"""
    if provider is None or subject is None:
        raise fail("give --provider and --subject", code=2)
    with admin_broker(data_dir, database_url) as broker:
        identity.link_upstream(broker, name, provider, subject, admin_actor())
    say(f"linked {terminal.name(name)} to {terminal.name(subject)} at {terminal.name(provider)}", err=True)


@service_accounts_app.command(
    "add",
    epilog=examples(
        "access-broker service-accounts add deploy-bot -g ci --owner alice",
        "access-broker service-accounts add deploy-bot -g ci -o json > deploy-bot.json",
    ),
)
def service_accounts_add(
    name: Annotated[str, typer.Argument(help="Service account name, e.g. deploy-bot")],
    group: Groups = None,
    owner: Annotated[
        str | None,
        typer.Option(
            "--owner", metavar="USER", help="The user responsible for it: they may not approve its requests"
        ),
    ] = None,
    output: OutputOpt = Output.text,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Add a service account and print its client id and secret. The secret is shown only once."""
    with admin_broker(data_dir, database_url) as broker:
        client_id, secret = identity.create_service_account(
            broker, name, group or [], actor=admin_actor(), owner=owner
        )
    if output is Output.json:
        typer.echo(json.dumps({"name": name, "client_id": client_id, "client_secret": secret}, indent=2))
    else:
        say(f"client_id:     {terminal.name(client_id)}")
        typer.echo(f"client_secret: {secret}")
    typer.echo("store the secret now: it cannot be shown again", err=True)


@service_accounts_app.command(
    "list",
    epilog=examples("access-broker service-accounts list", "access-broker service-accounts list -o json"),
)
def service_accounts_list(
    output: OutputOpt = Output.text, data_dir: DataDir = None, database_url: DatabaseUrl = None
) -> None:
    """List service accounts (never their secrets)."""
    with admin_broker(data_dir, database_url) as broker:
        _print_principals(broker, identity.SERVICE_ACCOUNT, output)


@service_accounts_app.command("disable", epilog=examples("access-broker service-accounts disable deploy-bot"))
def service_accounts_disable(
    name: Annotated[str, typer.Argument(help="Service account to disable")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Disable a service account: revoke its sessions and end its active grants."""
    _disable(name, data_dir, database_url)


@service_accounts_app.command("enable", epilog=examples("access-broker service-accounts enable deploy-bot"))
def service_accounts_enable(
    name: Annotated[str, typer.Argument(help="Disabled service account to enable")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Enable a disabled service account again; its client secret works again, its old sessions do not."""
    _enable(name, identity.SERVICE_ACCOUNT, data_dir, database_url)


@service_accounts_app.command(
    "revoke-sessions", epilog=examples("access-broker service-accounts revoke-sessions deploy-bot")
)
def service_accounts_revoke_sessions(
    name: Annotated[str, typer.Argument(help="Service account to sign out everywhere")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """End every session, grant and pending request of a service account and cut its live
    tunnels. Its client secret still works (disable it to stop that)."""
    _revoke_sessions(name, identity.SERVICE_ACCOUNT, data_dir, database_url)
