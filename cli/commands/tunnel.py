"""``access connect``, ``access exec`` and ``access env``: use a grant through the broker's tunnel.

``connect`` keeps a loopback listener open until the grant ends or Ctrl-C; ``exec`` runs one
program with the connection in its environment and exits with its exit code; ``env`` prints
the same variables as ``export`` lines for a running ``connect``. All three use the grant
``--grant`` names, or reuse an active one that matches what was asked (``commands.grants.pick``,
the rule docs/cli.md states), or request one; they say on stderr which and why.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import socket
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar
from urllib.parse import quote

import typer

from access.cli import render
from access.cli.commands.approvals import WaitOption
from access.cli.context import OutputOption, client
from access.cli.errors import (
    CliError,
    CommandNotFound,
    Denied,
    Expired,
    NeedsLogin,
    NotExecutable,
    UsageError,
)
from access.cli.render import Output
from access.shared.durations import format_duration, format_instant

if TYPE_CHECKING:
    from access.cli.client import BrokerClient
    from access.cli.localtls import LocalTls
    from access.cli.tunnel import Forwarder, TunnelEnded
    from access.shared.kinds import ConnectionInfo
    from access.shared.models import Grant

__all__ = ["connect", "env", "exec_command", "kubeconfig"]

T = TypeVar("T")

# Warn this long before expiry, or at 10% of the grant's lifetime when that is shorter.
WARN_BEFORE_SECONDS = 300

Service = Annotated[str, typer.Argument(help="Service to reach (see `access services`)")]
DEFAULT_SCOPE = "read"
DEFAULT_TTL = "30m"

Scope = Annotated[
    str | None,
    typer.Option(
        "--scope", "-s", help="Scope of the grant to use or request (default: read)", show_default=False
    ),
]
Ttl = Annotated[
    str | None,
    typer.Option(
        "--ttl",
        "-t",
        help="How long the access should last, e.g. 20s, 30m: an active grant is reused only if its "
        "time left is at most this and at least half of it (new grants: 30m)",
        show_default=False,
    ),
]
Reason = Annotated[
    str | None,
    typer.Option(
        "--reason",
        "-r",
        help="Why you need access (recorded in the audit log): only a grant with this reason is reused",
        show_default=False,
    ),
]
GrantId = Annotated[
    str | None,
    typer.Option(
        "--grant", help="Use this grant (see `access grants`) instead of choosing one", show_default=False
    ),
]


# -- grants and details --------------------------------------------------------------------------


def _grant_for(
    broker: BrokerClient,
    service: str,
    scope: str | None,
    ttl: str | None,
    reason: str | None,
    grant_id: str | None = None,
    wait: bool | None = False,
) -> Grant:
    """The grant ``--grant`` names, or an active one that matches what was asked, or a new one.

    Says on stderr which grant is used and why (docs/cli.md, "Which grant is used"). A new
    request that needs approval, or a pending grant named, is waited for when ``wait``
    (``approvals.wait_choice``: None decides by the terminal).

    Raises:
        UsageError: a bad TTL, or --grant with --ttl/--reason or another service or scope.
        NotFound / Expired / Denied / Pending: the grant named is not usable, or the new one
            was not issued (or not yet: pending, exit 5).
    """
    from access.cli.commands.approvals import finish_request, wait_choice
    from access.cli.commands.grants import Ask, pick, waiting_request
    from access.shared.durations import DurationError, parse_duration

    if grant_id is not None:
        named = _named_grant(broker, service, scope, ttl, reason, grant_id)
        return finish_request(broker, named, wait_choice(wait)) if named.state == "pending" else named
    try:
        ttl_seconds = None if ttl is None else int(parse_duration(ttl).total_seconds())
    except DurationError as exc:
        raise UsageError(str(exc), "see `access services` for each scope's maximum TTL") from exc
    ask = Ask(service, scope or DEFAULT_SCOPE, ttl_seconds, reason)
    mine = broker.list_grants()
    grant, why = pick(mine, ask)
    if grant is not None:
        render.note(f"using grant {render.grant_label(grant)}: {why}")
        return grant
    waiting = waiting_request(mine, ask)
    if waiting is not None:
        render.note(f"{why}; your request {render.name(waiting.id)} for it waits for approval")
        return finish_request(broker, waiting, wait_choice(wait))
    render.note(f"requesting a new grant: {why}")
    asked = broker.request_grant(ask.service, ask.scope, ttl or DEFAULT_TTL, reason or "")
    grant = finish_request(broker, asked, wait_choice(wait))
    render.note(
        f"granted {render.name(grant.id)}: {render.name(service)} ({render.name(grant.scope)}) "
        f"for {format_duration(grant.seconds_left)}"
    )
    return grant


def _named_grant(
    broker: BrokerClient, service: str, scope: str | None, ttl: str | None, reason: str | None, grant_id: str
) -> Grant:
    """``--grant ID``: that grant as it is, if it is an active grant of ``service`` (and ``scope``)."""
    if ttl is not None or reason is not None:
        raise UsageError(
            "--grant uses that grant as it is: --ttl and --reason are for choosing or requesting one",
            "leave out --ttl and --reason, or --grant",
        )
    grant = broker.get_grant(grant_id)  # not found (8) for someone else's or a made-up id
    name = render.name(grant.id)
    if grant.service != service:
        raise UsageError(
            f"grant {name} is for {render.name(grant.service)}, not {render.name(service)}",
            "name the grant's service, or see `access grants`",
        )
    if scope is not None and grant.scope != scope:
        raise UsageError(
            f"grant {name} is for scope {render.name(grant.scope)}, not {render.name(scope)}",
            "leave out --scope, or see `access grants`",
        )
    if grant.state == "pending":
        return grant  # the caller waits for it, or says how to
    again = f"request a new one: `access request {render.name(service)} --scope {render.name(grant.scope)}`"
    if grant.state != "active" or grant.seconds_left <= 0:
        ended = f"grant {name} has ended ({grant.ended_reason or grant.state})"
        raise Expired(ended, again) if grant.state in ("active", "expired") else Denied(ended, again)
    render.note(f"using grant {render.grant_label(grant)}: named with --grant")
    return grant


def _connection_info(broker: BrokerClient, grant_id: str) -> ConnectionInfo:
    from access.shared.kinds import ConnectionInfo

    data = broker._api("GET", f"/v1/grants/{quote(grant_id, safe='')}/connection")
    return ConnectionInfo.model_validate(data)


def _local_tls(kind: str, directory: Path) -> LocalTls | None:
    """kubernetes: the local listener's throwaway TLS and token (kubectl sends tokens over TLS only)."""
    if kind != "kubernetes":
        return None
    from access.cli.localtls import local_tls

    return local_tls(directory)


def _forwarder(broker: BrokerClient, grant: Grant, port: int, local: LocalTls | None = None) -> Forwarder:
    from access.cli.tunnel import BrokerEndpoint, Forwarder

    endpoint = BrokerEndpoint(
        base_url=broker.base_url,
        grant_id=grant.id,
        token=broker.access_token,
        ssl_context=broker.ssl_context() if broker.base_url.startswith("https:") else None,
    )
    # Held: the broker's close for an end reaches us even with no local connection open.
    return Forwarder(endpoint, port=port, report=render.warning, hold=True, local_tls=local)


def _ended_error(ended: TunnelEnded, grant: Grant, after: str = "") -> CliError:
    """The error (and exit code) for a tunnel the broker ended: 6 expired, 3 signed out, else 4."""
    again = (
        f"run the command again for a new grant, or `access request {grant.service} --scope {grant.scope}`"
    )
    message = ended.message + after
    if ended.code == "expired":
        return Expired(message, again)
    if ended.code == "signed out":
        return NeedsLogin(message, "run `access login`, then the command again")
    return Denied(message, again)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    from access.shared.tuning import tune_allocator

    tune_allocator()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.run(coro)
    result: T = uvloop.run(coro)
    return result


class _Clock:
    """The grant's deadline on this machine's monotonic clock, from the broker's ``seconds_left``."""

    def __init__(self, grant: Grant) -> None:
        # An approved grant's lifetime starts at its approval, not at the request.
        start = grant.approved_at or grant.created_at
        self.total = max(1, int((grant.expires_at - start).total_seconds()))
        self.deadline = time.monotonic() + grant.seconds_left

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def warn_at(self) -> float:
        """Seconds before the end at which to warn."""
        return min(WARN_BEFORE_SECONDS, self.total * 0.1)


async def _warn_before_expiry(clock: _Clock, grant: Grant) -> None:
    before = clock.warn_at()
    wait = clock.left() - before
    if wait < 0:
        return
    await asyncio.sleep(wait)
    render.warning(
        f"grant {render.name(grant.id)} ends in {format_duration(max(1, round(clock.left())))}: "
        f"connections through it will be cut then"
    )


# -- the private folder: secret files, and the state file of a running `access connect` ---------


def _state_dir() -> Path:
    from access.cli.config import runtime_dir

    return runtime_dir()


def _private_dir() -> Path:
    """The CLI's 0700 folder, rid of the secret files of runs that were killed before cleaning up."""
    from access.shared.kinds import remove_stale_secrets

    directory = _state_dir()
    remove_stale_secrets(directory)
    return directory


def _state_file(service: str, scope: str) -> Path:
    return _state_dir() / f"connect-{service}-{scope}.json"


def _write_state(service: str, scope: str, port: int, grant: Grant, local: LocalTls | None = None) -> Path:
    from access.cli.config import write_private

    path = _state_file(service, scope)
    state: dict[str, Any] = {"port": port, "grant_id": grant.id, "pid": os.getpid()}
    if local is not None:  # for `access kubeconfig` (0600, like every file here)
        state.update(ca_pem=local.cert_pem, local_token=local.token)
    write_private(path, json.dumps(state) + "\n")
    return path


def _read_state(service: str, scope: str) -> dict[str, Any] | None:
    try:
        data = json.loads(_state_file(service, scope).read_text())
        os.kill(int(data["pid"]), 0)  # is that `access connect` still running?
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return data if isinstance(data, dict) else None


# -- connect ------------------------------------------------------------------------------------


def _listen(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1:``port`` (0: a free one), as asyncio's server would open it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if os.name == "posix":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(100)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}", "pick another --port") from exc
    return sock


def connect(
    ctx: typer.Context,
    service: Service,
    scope: Scope = None,
    ttl: Ttl = None,
    reason: Reason = None,
    grant_id: GrantId = None,
    port: Annotated[
        int, typer.Option("--port", "-p", help="Local port (default: a free one)", min=0, max=65535)
    ] = 0,
    wait: WaitOption = None,
    output: OutputOption = Output.text,
) -> None:
    """Forward a local port on 127.0.0.1 to SERVICE through the broker until the grant ends or Ctrl-C."""
    _private_dir()
    # The port first: a busy --port fails before any grant is asked for.
    listener = _listen(port)
    try:
        broker = client(ctx)
        grant = _grant_for(broker, service, scope, ttl, reason, grant_id, wait)
    except BaseException:
        listener.close()
        raise
    scope = grant.scope
    clock = _Clock(grant)
    local = _local_tls(grant.kind, _state_dir())

    async def main() -> TunnelEnded | None:
        forwarder = _forwarder(broker, grant, port, local)
        host, bound = await forwarder.start(sock=listener)
        state = _write_state(service, scope, bound, grant, local)
        if output == Output.json:
            # One line, flushed, while we keep running: scripts read it with `head -1` / readline().
            info = {
                "address": host,
                "port": bound,
                "grant_id": grant.id,
                "expires_at": format_instant(grant.expires_at),
            }
            sys.stdout.write(json.dumps(info) + "\n")
            sys.stdout.flush()
        render.message(
            f"forwarding {host}:{bound} -> {render.name(service)} ({render.name(scope)}) "
            f"through grant {render.name(grant.id)}, "
            f"{format_duration(max(1, round(clock.left())))} left; Ctrl-C to stop"
        )
        if local is not None:
            render.note(f"for kubectl, k9s or Lens: `access kubeconfig {service} --scope {scope}`")
        stop = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()

        def request_stop() -> None:
            if not stop.done():
                stop.set_result(None)

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, request_stop)
        warner = asyncio.create_task(_warn_before_expiry(clock, grant))
        expiry = asyncio.create_task(asyncio.sleep(max(0.0, clock.left()) + 1.5))
        try:
            done, _ = await asyncio.wait({forwarder.ended, stop, expiry}, return_when=asyncio.FIRST_COMPLETED)
            if forwarder.ended in done:
                return forwarder.ended.result()
            if expiry in done:
                from access.cli.tunnel import TunnelEnded

                return TunnelEnded(f"grant {grant.id} expired", "expired")
            return None
        finally:
            warner.cancel()
            expiry.cancel()
            state.unlink(missing_ok=True)
            await forwarder.aclose()

    ended = _run(main())
    if ended is not None:
        raise _ended_error(ended, grant)
    render.message("stopped")


# -- exec ---------------------------------------------------------------------------------------


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _check_program(name: str, search_path: str) -> None:
    """Fail as a shell would, 127 or 126, when ``name`` cannot be run with ``search_path`` as PATH.

    Checked before any grant is asked for: a typo must not leave a grant behind.
    """
    hint = "check the program name and PATH"
    explicit = os.sep in name or (os.altsep is not None and os.altsep in name)
    if explicit:
        candidates = [Path(name)]
    else:
        candidates = [Path(entry or ".") / name for entry in search_path.split(os.pathsep)]
    present = None
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return
        # A PATH search passes over folders, as shells do; a path given is what it is.
        if present is None and (candidate.is_file() or (explicit and candidate.exists())):
            present = candidate
    if present is not None:
        what = "a folder" if present.is_dir() else "not executable"
        raise NotExecutable(f"cannot run {name}: {present} is {what}", hint)
    where = "" if explicit else " on PATH"
    raise CommandNotFound(f"cannot run {name}: no such program{where}", hint)


def exec_command(
    ctx: typer.Context,
    service: Service,
    command: Annotated[list[str], typer.Argument(help="The program and its arguments (after --)")],
    scope: Scope = None,
    ttl: Ttl = None,
    reason: Reason = None,
    grant_id: GrantId = None,
    wait: WaitOption = None,
) -> None:
    """Run COMMAND with a tunnel to SERVICE in its environment; exit with its exit code.

    postgres: PGHOST, PGPORT, PGDATABASE, PGUSER. mysql: MYSQL_HOST, MYSQL_TCP_PORT (and an
    option file, deleted afterwards). kubernetes: KUBECONFIG, a kubeconfig for this run only
    (deleted afterwards; your own KUBECONFIG is left alone). No password and no cluster
    credential: the broker logs in to the service itself. Every kind: ACCESS_HOST, ACCESS_PORT,
    ACCESS_ADDR.

    The program is looked up first, before any grant is asked for: 127 when there is no such
    program (nor on PATH), 126 when it cannot be run, as shells do. If the grant or your sign-in
    session ends while it runs, its connections are cut and, once it exits, so does exec: 6
    expired, 3 signed out, 4 revoked or locked.
    """
    if not command:
        raise UsageError("give the program to run after --", f"e.g. access exec {service} -- psql")
    from access.cli.tokens import child_environment
    from access.shared.kinds import client_setup

    secret_dir = _private_dir()
    _check_program(command[0], os.environ.get("PATH", os.defpath))
    broker = client(ctx)
    grant = _grant_for(broker, service, scope, ttl, reason, grant_id, wait)
    info = _connection_info(broker, grant.id)
    clock = _Clock(grant)

    local = _local_tls(info.kind, secret_dir)

    async def main() -> tuple[int, TunnelEnded | None]:
        forwarder = _forwarder(broker, grant, 0, local)
        host, port = await forwarder.start()
        setup = client_setup(
            info,
            host,
            port,
            secret_dir=secret_dir,
            ca_pem=None if local is None else local.cert_pem,
            local_token=None if local is None else local.token,
        )
        try:
            argv = setup.args_for(list(command), host, port)
            try:
                child_env = {**child_environment(os.environ), **setup.env}  # no client secret
                child = await asyncio.create_subprocess_exec(*argv, env=child_env)
            except FileNotFoundError as exc:  # gone since it was checked
                raise CommandNotFound(
                    f"cannot run {command[0]}: {exc.strerror}", "check the program name and PATH"
                ) from exc
            except OSError as exc:
                raise NotExecutable(
                    f"cannot run {command[0]}: {exc.strerror}", "check the program name and PATH"
                ) from exc
            loop = asyncio.get_running_loop()
            # Ctrl-C reaches the child (same process group) and is its to handle: psql cancels
            # the query. We only forward a SIGTERM sent to us alone.
            loop.add_signal_handler(signal.SIGINT, lambda: None)

            def forward_term() -> None:
                if child.returncode is None:
                    child.terminate()

            loop.add_signal_handler(signal.SIGTERM, forward_term)
            warner = asyncio.create_task(_warn_before_expiry(clock, grant))
            try:
                # An end cuts the program's connections (the broker closes the tunnel, and it is
                # reported at once); the program decides when to exit, and the end decides the code.
                status = _exit_status(await child.wait())
            finally:
                warner.cancel()
            return status, forwarder.ended.result() if forwarder.ended.done() else None
        finally:
            setup.cleanup()
            await forwarder.aclose()

    status, ended = _run(main())
    if ended is not None:
        raise _ended_error(ended, grant, f"; its connections were cut and {command[0]} exited {status}")
    raise typer.Exit(status)


# -- env ----------------------------------------------------------------------------------------


def env(
    ctx: typer.Context,
    service: Service,
    scope: Scope = None,
    port: Annotated[
        int | None,
        typer.Option("--port", "-p", help="Local port of `access connect` (default: the running one)"),
    ] = None,
    output: OutputOption = Output.text,
) -> None:
    """Print `export` lines for a client of SERVICE through a running `access connect`.

    Passwords are not printed: use `access exec`, which hands them over in a private file.
    """
    from access.shared.kinds import client_setup

    _private_dir()
    scope = scope or DEFAULT_SCOPE
    state = _read_state(service, scope)
    if port is None:
        if state is None:
            raise UsageError(
                f"no `access connect {service}` is running for scope {scope}",
                f"start one (`access connect {service} --scope {scope} &`) or give --port",
            )
        port = int(state["port"])
    broker = client(ctx)
    grant_id = (
        str(state["grant_id"]) if state is not None else _grant_for(broker, service, scope, None, None).id
    )
    info = _connection_info(broker, grant_id)
    variables = client_setup(info, "127.0.0.1", port, with_secrets=False).env
    if output == Output.json:
        render.json_out(variables)
    else:
        sys.stdout.write(
            "".join(f"export {name}={shlex.quote(value)}\n" for name, value in variables.items())
        )
        sys.stdout.flush()
    if info.password is not None:
        render.note("the password is not printed: `access exec` hands it to the client in a temporary file")


# -- kubeconfig ---------------------------------------------------------------------------------


def kubeconfig(
    service: Service,
    scope: Scope = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="Write it to this file (mode 0600) instead of printing it"),
    ] = None,
) -> None:
    """Print a kubeconfig for a running `access connect` of a kubernetes SERVICE (kubectl, k9s, Lens).

    It holds no cluster credential: it points at the local listener (TLS with a certificate made
    for that run) with the run's local token, which works only while that `access connect` runs.
    """
    from access.cli.config import write_private
    from access.shared.kinds.kubernetes import kubeconfig_text

    scope = scope or DEFAULT_SCOPE
    state = _read_state(service, scope)
    if state is None:
        raise UsageError(
            f"no `access connect {service}` is running for scope {scope}",
            f"start one (`access connect {service} --scope {scope} &`), then run this again",
        )
    if not isinstance(state.get("local_token"), str) or not isinstance(state.get("ca_pem"), str):
        raise UsageError(f"{service} is not a kubernetes service", "see `access services`")
    text = kubeconfig_text(service, "127.0.0.1", int(state["port"]), state["ca_pem"], state["local_token"])
    if file is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    write_private(file, text)
    render.note(f"wrote {file}: KUBECONFIG={shlex.quote(str(file))} kubectl get pods")
