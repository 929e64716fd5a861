"""``access-broker users totp-reset`` and ``users totp-enrol``: one-time codes (TOTP) from the
administrator's side (``auth.identity.totp``).

``totp-reset`` is for a lost phone: the user's codes are removed, and unless ``--keep-sessions``
every sign-in of theirs ends as with a password reset (a lost phone may be in someone's hands).
``totp-enrol`` makes a pending secret for a user who cannot reach the inbox page and prints its
otpauth URI and a QR code in the terminal: the first correct code the user types (on
``/inbox/mfa``) puts it in force, exactly as when they set it up themselves.
"""

from __future__ import annotations

from typing import Annotated

import segno
import typer

from access.broker.admin.common import DatabaseUrl, DataDir, admin_broker, say
from access.broker.admin.identity import admin_actor, users_app
from access.broker.auth.identity import totp
from access.shared import terminal
from access.shared.clihelp import examples

__all__ = ["users_totp_enrol", "users_totp_reset"]


@users_app.command(
    "totp-reset",
    epilog=examples(
        "access-broker users totp-reset alice", "access-broker users totp-reset alice --keep-sessions"
    ),
)
def users_totp_reset(
    name: Annotated[str, typer.Argument(help="User whose one-time codes to remove (a lost phone)")],
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
    """Remove a user's one-time codes (TOTP): their next sign-in needs only the password, and
    they may set up codes again on /inbox/mfa. Their sign-in sessions end too, unless
    --keep-sessions. Audited user.totp_disable."""
    with admin_broker(data_dir, database_url) as broker:
        ended = totp.reset(broker, name, actor=admin_actor(), keep_sessions=keep_sessions)
    kept = (
        "their sessions were kept" if ended is None else f"{len(ended.session_ids)} sign-in session(s) ended"
    )
    say(f"removed the one-time codes of {terminal.name(name)}; {kept}", err=True)


@users_app.command("totp-enrol", epilog=examples("access-broker users totp-enrol alice"))
def users_totp_enrol(
    name: Annotated[str, typer.Argument(help="User to make a one-time code secret for")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Make a pending one-time code (TOTP) secret for a user and print its otpauth URI and a QR
    code for their authenticator app. It is in force once the user types a first code on
    /inbox/mfa. Audited user.totp_enrol (never the secret)."""
    with admin_broker(data_dir, database_url) as broker:
        enrolment = totp.begin_enrolment(broker, name, actor=admin_actor())
    typer.echo(enrolment.uri)
    segno.make(enrolment.uri, error="m").terminal(compact=True)
    say(
        f"pending for {terminal.name(name)}: they scan it, then confirm with a first code on /inbox/mfa",
        err=True,
    )
