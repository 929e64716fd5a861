"""``access login``, ``access logout``, ``access whoami``."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from access.cli import render
from access.cli.context import OutputOption, client
from access.cli.errors import CliError, UsageError
from access.cli.render import Output

if TYPE_CHECKING:
    from access.cli.client import BrokerClient, DeviceAuthorization
    from access.cli.tokens import Tokens

__all__ = ["login", "logout", "whoami"]

# What the broker accepts as client_host; anything else is not sent rather than refused.
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,254}$")

BrokerOption = Annotated[
    str | None,
    typer.Option("--broker", envvar="ACCESS_BROKER_URL", help="Broker URL, e.g. https://access.example.com"),
]
CaFileOption = Annotated[
    str | None,
    typer.Option(
        "--ca-file", envvar="ACCESS_CA_FILE", help="PEM CA bundle that signed the broker's certificate"
    ),
]


def read_secret_file(path: str) -> str:
    """The client secret from ``path`` (``-`` for stdin). Secrets never come from argv.

    Raises:
        UsageError: the file is missing, empty, or readable by group or others.
    """
    if path == "-":
        secret = sys.stdin.readline().strip()
    else:
        file = Path(path)
        try:
            mode = file.stat().st_mode
            secret = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(f"cannot read the client secret file {path}: {exc.strerror or exc}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise UsageError(
                f"refusing to read {path}: other users can read it (mode {stat.filemode(mode)})",
                f"run `chmod 600 {path}`; if others may have read it, rotate the secret",
            )
    if not secret:
        raise UsageError(f"the client secret file {path} is empty")
    return secret


def _can_open_browser() -> bool:
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return False
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _show_code(auth: DeviceAuthorization, open_browser: bool) -> None:
    from access.shared.durations import format_duration

    render.message("To sign in, open this page in a browser:")
    render.message(f"    {auth.verification_uri}")
    render.message("and enter the code:")
    render.message(f"    {auth.user_code}")
    if auth.verification_uri_complete:
        render.message(f"(or open {auth.verification_uri_complete} , which fills in the code)")
    if open_browser and auth.verification_uri_complete:
        import webbrowser

        try:
            if webbrowser.open(auth.verification_uri_complete, new=2):
                render.message("A browser window was opened for you.")
        except webbrowser.Error:
            pass  # the URL is printed above: opening a browser is only a convenience
    render.message(
        f"Waiting for approval (the code expires in {format_duration(auth.expires_in)}; Ctrl-C stops)..."
    )


def _device_login(broker: BrokerClient, open_browser: bool) -> Tokens:
    from access.cli.device import wait_for_approval

    host = socket.gethostname()
    auth = broker.device_authorize(host if _HOST.match(host) else None)
    _show_code(auth, open_browser)
    return wait_for_approval(broker, auth)


def _secret(client_id: str, secret_file: str | None) -> str:
    if secret_file is not None:
        return read_secret_file(secret_file)
    if not sys.stdin.isatty():
        raise UsageError(
            "--client-id needs --client-secret-file when there is no terminal to ask on",
            "pass --client-secret-file FILE (mode 0600), or --client-secret-file - to read it from stdin",
        )
    import getpass

    secret = getpass.getpass(f"client secret for {client_id}: ").strip()
    if not secret:
        raise UsageError("no client secret given")
    return secret


def login(
    ctx: typer.Context,
    broker: BrokerOption = None,
    ca_file: CaFileOption = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure", help="Allow plain http:// to a non-loopback broker: tokens travel unencrypted"
        ),
    ] = False,
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="Do not open a browser; only print the URL")
    ] = False,
    client_id: Annotated[
        str | None, typer.Option("--client-id", help="Service account client id (OAuth client credentials)")
    ] = None,
    client_secret_file: Annotated[
        str | None,
        typer.Option(
            "--client-secret-file", help="File holding the service account's secret (mode 0600; - = stdin)"
        ),
    ] = None,
) -> None:
    """Sign in: the device flow in a browser, or --client-id for service accounts."""
    from access.cli import config
    from access.cli.tokens import env_token

    if client_secret_file is not None and client_id is None:
        raise UsageError("--client-secret-file needs --client-id")
    broker_client = client(ctx, broker=broker, ca_file=ca_file, insecure=insecure)
    url = broker_client.base_url
    if client_id is not None:
        tokens = broker_client.client_credentials(client_id, _secret(client_id, client_secret_file))
    else:
        tokens = _device_login(broker_client, open_browser=not no_browser and _can_open_browser())

    previous = broker_client.store.load(url)
    broker_client.save_tokens(tokens)
    if previous is not None and previous.refresh_token:
        # End the session this login replaces, so it does not linger on the broker.
        with contextlib.suppress(CliError):
            broker_client.revoke_token(previous.refresh_token)
    ca = broker_client.ca_file
    config.update(
        broker_url=url,
        ca_file=str(Path(ca).resolve()) if ca else None,
        insecure=True if broker_client.insecure else None,
    )
    if env_token():
        render.warning(
            f"signed in to {url}, but ACCESS_TOKEN is set and takes precedence: unset it to use this login"
        )
        return
    me = broker_client.whoami()
    groups = ", ".join(render.name(g) for g in me.groups) or "none"
    who = f"{render.name(me.name)} ({render.name(me.kind)}; groups: {groups})"
    render.message(f"Signed in to {render.name(url)} as {who}.")


def logout(ctx: typer.Context) -> None:
    """Sign out: end the session on the broker and delete the local tokens."""
    from access.cli.errors import BrokerUnreachable
    from access.cli.tokens import env_token

    broker_client = client(ctx)
    url = broker_client.base_url
    if env_token():
        render.warning("ACCESS_TOKEN is set in your environment; logout does not revoke it: unset it")
    tokens = broker_client.store.load(url)
    if tokens is None:
        render.message(f"Not signed in to {render.name(url)}.")
        return
    try:
        broker_client.logout(tokens.access_token)
        if tokens.refresh_token:
            broker_client.revoke_token(tokens.refresh_token)
    except BrokerUnreachable as exc:
        render.warning(f"{exc.message}; the session stays valid on the broker until it expires")
    except CliError as exc:
        render.warning(f"the broker did not confirm the sign-out: {exc.message}")
    finally:
        broker_client.store.delete(url)
    render.message(f"Signed out of {render.name(url)}; local tokens deleted.")


def whoami(ctx: typer.Context, output: OutputOption = Output.text) -> None:
    """Show who you are signed in as, your groups and your session."""
    broker_client = client(ctx)
    me = broker_client.whoami()
    if output is Output.json:
        render.json_out(me)
        return
    render.pairs(
        [
            ("name", me.name),
            ("kind", me.kind),
            ("groups", ", ".join(me.groups) or "-"),
            ("broker", broker_client.base_url),
            ("session", me.session_id or "-"),
            ("token expires", render.when(me.token_expires_at) if me.token_expires_at else "-"),
            ("audit log", "can read" if me.can_read_audit else "cannot read"),
        ],
        free_text=["token expires"],
    )
