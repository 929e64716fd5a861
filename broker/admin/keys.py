"""``access-broker keys``: what a rotation of the broker's keys needs from the command line.

``keys show`` prints the ids of the keys this broker signs with and the older ones it still
accepts (``ACCESS_BROKER_PREVIOUS_SIGNING_KEY_FILES``, ``_PREVIOUS_AUDIT_KEY_FILES``).
``keys reseal`` seals again, with the current token key, the long-lived secrets an older key
sealed (TOTP secrets), so that older key can leave the ring. docs/deploy.md, "Rotating the keys".
Exit codes: 0 done; 1 some secret no key of the ring opens; 7 the database is unavailable.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from access.broker.admin.common import DatabaseUrl, DataDir, admin_broker, say
from access.broker.admin.identity import admin_actor
from access.broker.auth.identity import totp
from access.broker.keys import key_id
from access.shared.clihelp import examples

__all__ = ["keys_app"]

keys_app = typer.Typer(
    help="The broker's keys: which sign and which still verify, and re-sealing after a rotation.",
    epilog=examples("access-broker keys show", "access-broker keys reseal"),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@keys_app.command("show", epilog=examples("access-broker keys show", "access-broker keys show -o json"))
def keys_show(
    output: Annotated[str, typer.Option("-o", "--output", help="text or json")] = "text",
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Print the ids of the token and audit keys: the one that signs, then the older ones that
    only verify (and open what they sealed)."""
    with admin_broker(data_dir, database_url, without_policy=True) as broker:
        ring = {
            "token": [key_id(key) for key in broker.token_ring],
            "audit": [key_id(key) for key in broker.audit_ring],
        }
    if output == "json":
        typer.echo(json.dumps(ring))
        return
    for name, ids in ring.items():
        older = ", ".join(ids[1:]) or "none"
        typer.echo(f"{name} key: {ids[0]} (signs); older, still verified: {older}")


@keys_app.command("reseal", epilog=examples("access-broker keys reseal"))
def keys_reseal(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Seal again with the current token key every TOTP secret an older key sealed. Run it once
    every replica signs with the new key, before the old one leaves
    ACCESS_BROKER_PREVIOUS_SIGNING_KEY_FILES. Audited keys.reseal."""
    with admin_broker(data_dir, database_url, without_policy=True) as broker:
        resealed, unreadable = totp.reseal_all(broker, actor=admin_actor())
    say(f"sealed {resealed} TOTP secret(s) again with the current token key", err=True)
    if unreadable:
        say(
            f"{unreadable} TOTP secret(s) open with no key of the ring: their users must enrol again "
            "(`access-broker users totp-reset NAME`), or put the key that sealed them back",
            err=True,
        )
        raise typer.Exit(1)
