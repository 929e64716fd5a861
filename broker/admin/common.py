"""Options and helpers every ``access-broker`` subcommand shares (kept apart from ``admin`` so that
subcommand modules can import them without an import cycle)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from access.broker.errors import BrokerError
from access.broker.policy import PolicyError
from access.broker.settings import Settings
from access.shared import terminal
from access.shared.errors import exit_code_for

if TYPE_CHECKING:
    from access.broker.runtime import Broker

__all__ = [
    "DataDir",
    "DatabaseUrl",
    "admin_broker",
    "bind_socket",
    "broker_failure",
    "build_settings",
    "check_output",
    "fail",
    "fail_lines",
    "open_broker",
    "policy_failure",
    "print_table",
    "say",
    "setting_help",
]

POLICY_HINT = "fix the policy file: `access-broker policy check FILE` lists every problem (docs/policy.md)"

# Defaults that are computed, shown as the rule that computes them (not this machine's value).
_COMPUTED_DEFAULTS = {"data_dir": "$XDG_DATA_HOME/access-broker, else ~/.local/share/access-broker"}


def setting_help(name: str) -> str:
    """The help of the flag for setting ``name``: its description, environment variable and default.

    One source: the field in access.broker.settings. Brackets are escaped: typer reads help as markup.
    """
    field = Settings.model_fields[name]
    default = _COMPUTED_DEFAULTS.get(name)
    if default is None and field.default is not None and field.default_factory is None:
        default = (
            ("on" if field.default else "off") if isinstance(field.default, bool) else str(field.default)
        )
    description = field.description or ""
    if description.split(" ", 1)[0].isalpha():  # not "sqlite:///PATH ..."
        description = description[:1].upper() + description[1:]
    shown = f"{description} \\[env var: ACCESS_BROKER_{name.upper()}]"
    return f"{shown} \\[default: {default}]" if default is not None else shown


DataDir = Annotated[Path | None, typer.Option("--data-dir", help=setting_help("data_dir"))]
DatabaseUrl = Annotated[str | None, typer.Option("--database-url", help=setting_help("database_url"))]


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


def open_broker(
    data_dir: Path | None, database_url: str | None, *, without_policy: bool = False, **overrides: Any
) -> Any:
    """A ``Broker`` for admin commands (migrated database, keys loaded, policy if configured and
    not ``without_policy``)."""
    from access.broker.policy import Policy
    from access.broker.runtime import Broker

    settings = build_settings(data_dir=data_dir, database_url=database_url, **overrides)
    return Broker.from_settings(settings, policy=Policy.empty() if without_policy else None)


def say(line: str, err: bool = False) -> None:
    """A text line for the terminal, escaped (see access.shared.terminal): stored values pass here.

    A line that interpolates an identifier wraps it in ``terminal.name`` first; JSON is echoed as it is.
    """
    typer.echo(terminal.text(line), err=err)


def print_table(rows: list[tuple[str, ...]], free: frozenset[int] = frozenset()) -> None:
    """Rows (the header first) in aligned columns, each cell escaped for the terminal: as a name,
    or as free text for the columns in ``free`` (reasons)."""
    shown = [
        tuple(terminal.text(cell) if i in free else terminal.name(cell) for i, cell in enumerate(row))
        for row in rows
    ]
    widths = [max(len(row[i]) for row in shown) for i in range(len(shown[0]))]
    for row in shown:
        typer.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


def fail(message: str, hint: str | None = None, code: int = 1) -> typer.Exit:
    say(f"error: {message}", err=True)
    if hint:
        say(f"hint: {hint}", err=True)
    return typer.Exit(code)


def fail_lines(lines: list[str], hint: str | None = None, code: int = 1) -> typer.Exit:
    """``fail`` for an error of several lines, such as a policy's problems (one a line, each
    naming its place in the file): ``error:`` before the first, every line escaped on its own,
    so that none of them shows as a literal ``\\n`` and none can start a line of its own."""
    first, *rest = lines or ["(no message)"]
    say(f"error: {first}", err=True)
    for line in rest:
        say(line, err=True)
    if hint:
        say(f"hint: {hint}", err=True)
    return typer.Exit(code)


def policy_failure(exc: PolicyError, hint: str = POLICY_HINT, code: int = 1) -> typer.Exit:
    """An unreadable or invalid policy file (``PolicyError``): every problem on its own line."""
    return fail_lines(str(exc).splitlines(), hint, code)


def check_output(output: str) -> None:
    """Refuse an ``-o`` other than text or json (exit 2)."""
    if output not in ("text", "json"):
        raise fail(f"unknown output format {output!r}: use text or json", code=2)


def broker_failure(exc: BrokerError) -> typer.Exit:
    """Print a broker error and return the exit carrying its documented code."""
    return fail(exc.message, exc.hint, code=int(exit_code_for(str(exc.code))))


@contextlib.contextmanager
def admin_broker(
    data_dir: Path | None, database_url: str | None, *, without_policy: bool = False
) -> Iterator[Broker]:
    """A ``Broker`` for one admin command: broker errors become clear messages and exit codes,
    and the database connections are closed afterwards. ``without_policy``: the configured
    policy file is not loaded (the command reads it itself)."""
    try:
        broker: Broker = open_broker(data_dir, database_url, without_policy=without_policy)
    except BrokerError as exc:
        raise broker_failure(exc) from exc
    except PolicyError as exc:
        raise policy_failure(exc) from exc
    except (OSError, ValueError) as exc:
        raise fail(str(exc)) from exc
    try:
        yield broker
    except BrokerError as exc:
        raise broker_failure(exc) from exc
    finally:
        broker.engine.dispose()


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the listening socket before the app starts, so a port of 0 is known up front."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock
