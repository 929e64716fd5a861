"""``access services``, ``access request``, ``access grants``, ``access revoke``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from access.cli import render
from access.cli.context import OutputOption, client
from access.cli.errors import UsageError
from access.cli.render import Output

if TYPE_CHECKING:
    from access.shared.models import Grant, ServiceInfo

__all__ = ["grants", "request", "revoke", "services"]


def _max_ttl(service: ServiceInfo) -> str:
    from access.shared.durations import format_duration

    ttls = {scope.max_ttl_seconds for scope in service.scopes}
    if len(ttls) == 1:
        return format_duration(ttls.pop())
    return ", ".join(f"{s.scope} {format_duration(s.max_ttl_seconds)}" for s in service.scopes)


def _scopes(service: ServiceInfo) -> str:
    return ", ".join(
        s.scope if s.requirement == "auto" else f"{s.scope} ({s.requirement})" for s in service.scopes
    )


def services(ctx: typer.Context, output: OutputOption = Output.text) -> None:
    """List the services you may request access to: kind, scopes, maximum TTL."""
    items = client(ctx).services()
    if output is Output.json:
        render.json_out(items)
        return
    if not items:
        render.message("Policy lets you request no services; ask the broker's operator for access.")
        return
    render.table(
        ["SERVICE", "KIND", "SCOPES", "MAX TTL", "DESCRIPTION"],
        [[s.name, s.kind, _scopes(s), _max_ttl(s), s.description] for s in items],
        keep_whole=["SERVICE"],
        free_text=["DESCRIPTION"],
    )


def _left(grant: Grant) -> str:
    from access.shared.durations import format_duration

    if grant.state == "active":
        return format_duration(grant.seconds_left)
    return grant.ended_reason or "-"


def _show_grant(grant: Grant, output: Output) -> None:
    if output is Output.json:
        render.json_out(grant)
        return
    render.pairs(
        [
            ("id", grant.id),
            ("service", f"{grant.service} ({grant.kind})"),
            ("scope", grant.scope),
            ("state", str(grant.state)),
            ("time left", _left(grant) if grant.state == "active" else "-"),
            ("expires", render.when(grant.expires_at)),
            ("reason", grant.reason or "-"),
            *([("ended", f"{render.when(grant.ended_at)} ({grant.ended_reason})")] if grant.ended_at else []),
        ],
        free_text=["expires", "reason", "ended"],
    )


def _validate(service: str, scope: str, ttl: str, reason: str) -> None:
    """Early, clear messages for input the broker would refuse anyway (the broker still decides)."""
    from access.shared.durations import DurationError, parse_duration
    from access.shared.models import MAX_REASON_LENGTH
    from access.shared.names import NAME_RULE, is_dns_label, is_scope

    if not is_dns_label(service):
        raise UsageError(f"{service!r} is not a service name: {NAME_RULE}", "see `access services`")
    if not is_scope(scope):
        raise UsageError(f"{scope!r} is not a scope name", "see `access services` for each service's scopes")
    try:
        parse_duration(ttl)
    except DurationError as exc:
        raise UsageError(str(exc), "see `access services` for each scope's maximum TTL") from exc
    if len(reason) > MAX_REASON_LENGTH:
        raise UsageError(f"the reason is {len(reason)} characters; at most {MAX_REASON_LENGTH} are allowed")


def request(
    ctx: typer.Context,
    service: Annotated[
        str, typer.Argument(help="Service to access (see `access services`)", metavar="SERVICE")
    ],
    scope: Annotated[str, typer.Option("--scope", "-s", help="Scope to ask for, e.g. read")],
    ttl: Annotated[str, typer.Option("--ttl", "-t", help="How long, e.g. 45s, 30m, 1h30m")] = "30m",
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why, e.g. a ticket: INC-123")] = "",
    output: OutputOption = Output.text,
) -> None:
    """Ask for a time-limited grant on a service; policy decides and the ledger records it."""
    from access.cli.errors import Denied, Pending
    from access.shared.durations import format_duration

    _validate(service, scope, ttl, reason)
    grant = client(ctx).request_grant(service, scope, ttl, reason)
    if grant.state == "denied":
        raise Denied(
            f"the request for {render.name(scope)} on {render.name(service)} was denied: "
            f"{grant.ended_reason or 'policy'}",
            "see `access services` for what you may request",
        )
    _show_grant(grant, output)
    if grant.state == "pending":
        raise Pending(
            f"grant {render.name(grant.id)} is waiting for approval", "check on it with `access grants`"
        )
    service, scope = render.name(service), render.name(scope)
    render.message(
        f"Granted {scope} on {service} for {format_duration(grant.seconds_left)}. "
        f"Use it with `access connect {service} --scope {scope}` "
        f"or `access exec {service} --scope {scope} -- CMD`."
    )


def grants(
    ctx: typer.Context,
    all_: Annotated[
        bool, typer.Option("--all", "-a", help="Include expired, revoked and denied grants")
    ] = False,
    output: OutputOption = Output.text,
) -> None:
    """List your grants, with state and time left (active ones unless --all)."""
    items = client(ctx).list_grants(include_ended=all_)
    if output is Output.json:
        render.json_out(items)
        return
    if not items:
        render.message("No active grants; ask for one with `access request SERVICE --scope S --ttl 30m`.")
        return
    render.table(
        ["ID", "SERVICE", "SCOPE", "STATE", "LEFT", "REASON"],
        [[g.id, g.service, g.scope, str(g.state), _left(g), g.reason] for g in items],
        keep_whole=["ID", "SERVICE"],
        free_text=["REASON"],
    )


def revoke(
    ctx: typer.Context,
    grant_id: Annotated[str, typer.Argument(help="Grant id (see `access grants`)", metavar="GRANT_ID")],
    output: OutputOption = Output.text,
) -> None:
    """End a grant now; live connections through it are cut.

    A grant of yours that had already ended (expired, revoked, denied) is fine too: it says so
    and exits 0, so a clean-up step can revoke whatever happened.
    """
    broker = client(ctx)
    before = broker.get_grant(grant_id)  # not found (8) for someone else's or a made-up id
    ended = before.state not in ("active", "pending")
    grant = before if ended else broker.revoke(grant_id)
    _show_grant(grant, output)
    if ended:
        render.message(
            f"Grant {render.name(grant.id)} had already ended ({grant.ended_reason or grant.state})."
        )
    else:
        render.message(f"Revoked grant {render.name(grant.id)}.")
