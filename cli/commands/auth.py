"""``access login``, ``access logout``, ``access whoami``, ``access status``.

Each broker signed in to has a profile (``config.py``): ``login`` makes its broker current,
``--broker`` picks another for one command, ``status`` shows them all.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from access.cli import render
from access.cli.context import OutputOption, client, globals_of
from access.cli.errors import CliError, NeedsLogin, UsageError
from access.cli.render import Output

if TYPE_CHECKING:
    from access.cli.client import BrokerClient, DeviceAuthorization
    from access.cli.tokens import Tokens
    from access.shared.models import Grant, Principal

__all__ = ["login", "logout", "status", "whoami"]

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


def _can_open_browser() -> bool:
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return False
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _show_code(auth: DeviceAuthorization, open_browser: bool, mfa: bool = False) -> None:
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
    if mfa:
        render.message(
            "This sign-in needs a second factor: enter the one-time code from your authenticator "
            "app with your password (no codes set up yet? the approvals inbox's /inbox/mfa page)."
        )
    render.message(
        f"Waiting for approval (the code expires in {format_duration(auth.expires_in)}; Ctrl-C stops)..."
    )


def _device_login(
    broker: BrokerClient, open_browser: bool, timeout: float | None, mfa: bool = False
) -> Tokens:
    from access.cli.device import wait_for_approval

    host = socket.gethostname()
    auth = broker.device_authorize(host if _HOST.match(host) else None, mfa=mfa)
    _show_code(auth, open_browser, mfa)
    return wait_for_approval(broker, auth, timeout=timeout)


def _secret(client_id: str, secret_file: str | None) -> str:
    from access.cli.tokens import env_secret, read_secret_file

    if secret_file is not None:
        return read_secret_file(secret_file)
    from_env = env_secret()
    if from_env is not None:
        return from_env
    if not sys.stdin.isatty():
        raise UsageError(
            "--client-id needs --client-secret-file when there is no terminal to ask on",
            "pass --client-secret-file FILE, --client-secret-file - to read it from stdin, "
            "or set ACCESS_CLIENT_SECRET_FILE or ACCESS_CLIENT_SECRET",
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
        str | None,
        typer.Option(
            "--client-id",
            envvar="ACCESS_CLIENT_ID",
            help="Service account client id (OAuth client credentials)",
        ),
    ] = None,
    client_secret_file: Annotated[
        str | None,
        typer.Option(
            "--client-secret-file",
            help="File holding the service account's secret (not writable by others; - = stdin). "
            "Default: ACCESS_CLIENT_SECRET_FILE or ACCESS_CLIENT_SECRET",
        ),
    ] = None,
    oidc_token_file: Annotated[
        str | None,
        typer.Option(
            "--oidc-token-file",
            metavar="FILE",
            help="Pipelines: exchange the CI system's identity token in FILE (- = stdin) for a "
            "service account's token, as the broker's trust rules say (docs/pipelines.md)",
        ),
    ] = None,
    oidc_token_env: Annotated[
        str | None,
        typer.Option(
            "--oidc-token-env",
            metavar="VAR",
            help="Pipelines: the same, with the token in the environment variable VAR "
            "(its name, not the token)",
        ),
    ] = None,
    timeout: Annotated[
        str | None,
        typer.Option(
            "--timeout",
            metavar="DURATION",
            help="Device login: give up (exit 9) when nobody approved within this time, e.g. 2m "
            "(default: the code's lifetime, 10m unless the broker says otherwise)",
        ),
    ] = None,
    mfa: Annotated[
        bool,
        typer.Option(
            "--mfa",
            help="Step-up: the sign-in in the browser must present a second factor (a one-time "
            "code), as policy asks for some scopes; the new session records it",
        ),
    ] = False,
) -> None:
    """Sign in: the device flow in a browser, --client-id for service accounts, or
    --oidc-token-file/--oidc-token-env for a pipeline with its CI system's identity token.

    The broker becomes the current profile: later commands without --broker use it.
    """
    from access.cli import config
    from access.cli.tokens import ci_token, env_token

    if client_secret_file is not None and client_id is None:
        raise UsageError("--client-secret-file needs --client-id")
    oidc = oidc_token_file is not None or oidc_token_env is not None
    if oidc and client_id is not None:
        raise UsageError("sign in with --client-id or with a CI identity token, not both")
    if mfa and (oidc or client_id is not None):
        raise UsageError("--mfa is for a person's sign-in in the browser, not --client-id or a CI token")
    wait = _timeout(timeout)
    broker_client = client(ctx, broker=broker, ca_file=ca_file, insecure=insecure)
    url = broker_client.base_url
    if oidc:
        tokens = broker_client.exchange_ci_token(ci_token(oidc_token_file, oidc_token_env))
    elif client_id is not None:
        tokens = broker_client.client_credentials(client_id, _secret(client_id, client_secret_file))
    else:
        open_browser = not no_browser and _can_open_browser()
        tokens = _device_login(broker_client, open_browser, wait, mfa)

    previous = broker_client.store.load(url)
    broker_client.save_tokens(tokens)
    if previous is not None and previous.refresh_token:
        # End the session this login replaces, so it does not linger on the broker.
        with contextlib.suppress(CliError):
            broker_client.revoke_token(previous.refresh_token)
    ca = broker_client.ca_file
    config.save_profile(
        url,
        ca_file=str(Path(ca).resolve()) if ca else None,
        insecure=True if broker_client.insecure else None,
        client_id=tokens.client_id,
    )
    if env_token():
        render.warning(
            f"signed in to {url}, but ACCESS_TOKEN is set and takes precedence: unset it to use this login"
        )
        return
    me = broker_client.whoami()
    config.save_profile(url, name=me.name, kind=me.kind)
    groups = ", ".join(render.name(g) for g in me.groups) or "none"
    who = f"{render.name(me.name)} ({render.name(me.kind)}; groups: {groups})"
    render.message(f"Signed in to {render.name(url)} as {who}.")


def logout(ctx: typer.Context) -> None:
    """Sign out: end the session on the broker and delete the local tokens.

    The broker's profile (URL, CA file) stays, so `access login` needs no flags next time.
    """
    from access.cli import config
    from access.cli.errors import BrokerUnreachable
    from access.cli.tokens import ENV_CLIENT_ID, env_token

    broker_client = client(ctx)
    url = broker_client.base_url
    if env_token():
        render.warning("ACCESS_TOKEN is set in your environment; logout does not revoke it: unset it")
    if os.environ.get(ENV_CLIENT_ID):
        render.warning(f"{ENV_CLIENT_ID} is set: later commands still sign in with it; unset it to stop that")
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
        config.forget_profile_user(url)
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
            ("session ends", _when(me.session_expires_at)),
            ("second factor", _mfa_age(me.mfa_age_seconds)),
            ("audit log", "can read" if me.can_read_audit else "cannot read"),
        ],
        free_text=["session ends", "second factor"],
    )


def _mfa_age(seconds: int | None) -> str:
    from access.shared.durations import format_duration

    return "none" if seconds is None else f"{format_duration(seconds)} ago"


def _when(moment: Any) -> str:
    return render.when(moment) if moment is not None else "-"


def _timeout(value: str | None) -> float | None:
    if value is None:
        return None
    from access.shared.durations import DurationError, parse_duration

    try:
        seconds = parse_duration(value).total_seconds()
    except DurationError as exc:
        raise UsageError(f"--timeout: {exc}", "write it like 90s, 5m or 1h") from exc
    if seconds < 1:
        raise UsageError("--timeout must be at least 1s")
    return seconds


def _profile_status(broker_client: BrokerClient) -> tuple[Principal | None, list[Grant], CliError | None]:
    """Who is signed in at ``broker_client``'s broker and their active grants; or why not."""
    from access.cli.tokens import ENV_CLIENT_ID, env_token

    if (
        not (env_token() or os.environ.get(ENV_CLIENT_ID))
        and broker_client.store.load(broker_client.base_url) is None
    ):
        return None, [], NeedsLogin(f"not signed in to {broker_client.base_url}")
    try:
        return broker_client.whoami(), broker_client.list_grants(), None
    except CliError as exc:
        return None, [], exc


def status(ctx: typer.Context, output: OutputOption = Output.text) -> None:
    """Show every broker profile: who is signed in, until when, and their active grants.

    --broker shows one. Exits 0 if the current (or --broker) profile is signed in, else with its code.
    """
    from access.cli import config
    from access.cli.client import normalise_url

    selected = globals_of(ctx).broker
    current = config.current_broker()
    known = config.profiles()
    if selected:
        urls = [normalise_url(selected, insecure=True)]
    else:
        urls = sorted(known, key=lambda url: (url != current, url))
    if not urls:
        raise NeedsLogin("not signed in to any broker", "run `access login --broker https://BROKER`")
    entries: list[dict[str, Any]] = []
    failure: CliError | None = None
    for url in urls:
        me, grants, problem = _profile_status(client(ctx, broker=url))
        if url == (urls[0] if selected else current) and problem is not None:
            failure = problem
        entries.append(
            {
                "broker": url,
                "current": url == current,
                "signed_in": me is not None,
                "principal": me.model_dump(mode="json") if me is not None else None,
                "grants": [grant.model_dump(mode="json") for grant in grants],
                "error": None
                if problem is None
                else {"message": problem.message, "exit_code": int(problem.exit_code)},
            }
        )
        if output is Output.text:
            _show_profile(url, url == current, me, grants, problem)
    if output is Output.json:
        render.json_out(entries)
    if failure is not None:
        render.error(failure)
        raise typer.Exit(int(failure.exit_code))


def _show_profile(
    url: str, current: bool, me: Principal | None, grants: list[Grant], problem: CliError | None
) -> None:
    from access.shared.durations import format_duration

    items: list[tuple[str, str]] = []
    if me is not None:
        items += [
            ("signed in as", f"{me.name} ({me.kind})"),
            ("groups", ", ".join(me.groups) or "-"),
            ("session ends", _when(me.session_expires_at)),
        ]
        for g in grants:
            left = f"{format_duration(g.seconds_left)} left"
            if g.state == "pending":
                left = "waiting for approval"
            items.append(("grant", f"{g.service} {g.scope}, {left}, {g.id}"))
        if not grants:
            items.append(("grants", "none active"))
    elif problem is not None:
        items.append(("status", problem.message))
    render.section(f"{url}{' (current)' if current else ''}", items, free_text=["status", "session ends"])
