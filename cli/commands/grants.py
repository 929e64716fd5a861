"""``access services``, ``access request``, ``access grants``, ``access revoke``; which grant
``connect``, ``exec`` and ``env`` use (:func:`pick`, the rule docs/cli.md states). The reviewer's
commands and the wait for reviewers are in ``approvals``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer

from access.cli import render
from access.cli.commands.approvals import WaitOption, finish_request, pending_table, wait_choice
from access.cli.context import OutputOption, client
from access.cli.errors import UsageError
from access.cli.render import Output

if TYPE_CHECKING:
    from access.cli.client import GrantList
    from access.shared.models import Grant, ServiceInfo

__all__ = [
    "Ask",
    "checked",
    "grants",
    "mismatch",
    "pick",
    "request",
    "revoke",
    "services",
    "waiting_request",
]


def _max_ttl(service: ServiceInfo) -> str:
    from access.shared.durations import format_duration

    ttls = {scope.max_ttl_seconds for scope in service.scopes}
    if len(ttls) == 1:
        return format_duration(ttls.pop())
    return ", ".join(f"{s.scope} {format_duration(s.max_ttl_seconds)}" for s in service.scopes)


def _scopes(service: ServiceInfo) -> str:
    """``read, write (approval: 2 of group:leads), admin (mfa within 1h)``."""
    from access.shared.durations import format_duration

    shown = []
    for s in service.scopes:
        terms = []
        if s.requirement != "auto":
            terms.append(f"{s.requirement}: {s.reviewers}" if s.reviewers else s.requirement)
        if s.mfa_seconds is not None:
            terms.append(f"mfa within {format_duration(s.mfa_seconds)}")
        shown.append(f"{s.scope} ({'; '.join(terms)})" if terms else s.scope)
    return ", ".join(shown)


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
        free_text=["SCOPES", "DESCRIPTION"],
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


def checked(grant: Grant) -> Grant:
    """``grant`` as the broker answered a request for it, if it was issued; else the error.

    Raises:
        Denied: policy said no.
        Pending: it waits for approval.
    """
    from access.cli.errors import Denied, Pending

    if grant.state == "denied":
        raise Denied(
            f"the request for {render.name(grant.scope)} on {render.name(grant.service)} was denied: "
            f"{grant.ended_reason or 'policy'}",
            "see `access services` for what you may request",
        )
    if grant.state == "pending":
        raise Pending(
            f"grant {render.name(grant.id)} is waiting for approval",
            f"wait for it with `access wait {grant.id}`",
        )
    return grant


# -- which grant connect, exec and env use ---------------------------------------------------


@dataclass(frozen=True)
class Ask:
    """What the person asked for: ``ttl_seconds`` and ``reason`` are None when not given."""

    service: str
    scope: str
    ttl_seconds: int | None = None
    reason: str | None = None

    def given(self) -> str:
        """The flags that constrain reuse, as typed: ``--ttl 20s, --reason "INC-9"``."""
        from access.shared.durations import format_duration

        flags = []
        if self.ttl_seconds is not None:
            flags.append(f"--ttl {format_duration(self.ttl_seconds)}")
        if self.reason is not None:
            flags.append(f'--reason "{self.reason}"')
        return ", ".join(flags)


def mismatch(grant: Grant, ask: Ask) -> list[str]:
    """Why the active ``grant`` of the asked service and scope is not what was asked (empty: it is).

    With ``--reason``: the grant's reason must be the same text. With ``--ttl T``: its time left
    must be at most T (never more access than asked) and at least half of T (the access lasts
    about as long as asked).
    """
    from access.shared.durations import format_duration

    why = []
    if ask.reason is not None and grant.reason != ask.reason:
        has = f'its reason is "{grant.reason}"' if grant.reason else "it has no reason"
        why.append(f'{has}, not "{ask.reason}"')
    if ask.ttl_seconds is not None:
        left, ttl = format_duration(grant.seconds_left), format_duration(ask.ttl_seconds)
        if grant.seconds_left > ask.ttl_seconds:
            why.append(f"{left} left is more than the {ttl} asked")
        elif grant.seconds_left * 2 < ask.ttl_seconds:
            why.append(f"{left} left is less than half the {ttl} asked")
    return why


def pick(items: list[Grant], ask: Ask) -> tuple[Grant | None, str]:
    """The grant to reuse for ``ask`` among ``items`` (the newest that matches), or None; and why.

    Only active grants with time left of the asked service and scope count. With neither
    ``--ttl`` nor ``--reason``, the newest of them is used.
    """
    candidates = sorted(
        (
            g
            for g in items
            if (g.service, g.scope) == (ask.service, ask.scope) and g.state == "active" and g.seconds_left > 0
        ),
        key=lambda g: g.created_at,
        reverse=True,
    )
    what = f"{render.name(ask.service)} ({render.name(ask.scope)})"
    for grant in candidates:
        if not mismatch(grant, ask):
            if ask.ttl_seconds is None and ask.reason is None:
                return grant, f"the newest active grant for {what}"
            return grant, f"matches what you asked ({ask.given()})"
    if not candidates:
        return None, f"no active grant for {what}"
    newest = candidates[0]
    others = len(candidates) - 1
    tail = f" (nor does any of your {others} other active grants for it)" if others else ""
    return None, (
        f"{render.grant_label(newest)} does not match what you asked ({ask.given()}): "
        f"{'; '.join(mismatch(newest, ask))}{tail}"
    )


def waiting_request(items: list[Grant], ask: Ask) -> Grant | None:
    """Your newest pending request for what ``ask`` asks (same service and scope; the same reason
    and TTL when given): ``connect``/``exec`` wait for it rather than ask the reviewers twice."""
    for grant in sorted(items, key=lambda g: g.created_at, reverse=True):
        if grant.state != "pending" or (grant.service, grant.scope) != (ask.service, ask.scope):
            continue
        if ask.reason is not None and grant.reason != ask.reason:
            continue
        if ask.ttl_seconds is not None and grant.ttl_seconds != ask.ttl_seconds:
            continue
        return grant
    return None


def request(
    ctx: typer.Context,
    service: Annotated[
        str, typer.Argument(help="Service to access (see `access services`)", metavar="SERVICE")
    ],
    scope: Annotated[str, typer.Option("--scope", "-s", help="Scope to ask for, e.g. read")],
    ttl: Annotated[str, typer.Option("--ttl", "-t", help="How long, e.g. 45s, 30m, 1h30m")] = "30m",
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why, e.g. a ticket: INC-123")] = "",
    wait: WaitOption = None,
    break_glass: Annotated[
        bool,
        typer.Option(
            "--break-glass",
            help="Emergency: ask the policy's break-glass rules (issued at once, a reason required, "
            "flagged in the ledger and to the webhooks for review)",
        ),
    ] = False,
    output: OutputOption = Output.text,
) -> None:
    """Ask for a time-limited grant on a service; policy decides and the ledger records it.

    A scope that needs approval gives a pending request: with --wait (the default on a terminal)
    the command waits for the reviewers, then prints the grant, whose TTL counts from the
    approval; with --no-wait (the default in scripts) it prints the pending grant and exits 5.
    With --break-glass only rules marked break_glass decide: issued at once, never pending.
    """
    _validate(service, scope, ttl, reason)
    if break_glass and not reason.strip():
        raise UsageError("a break-glass request needs a reason", "add --reason, e.g. --reason INC-123")
    broker = client(ctx)
    grant = broker.request_grant(service, scope, ttl, reason, break_glass=break_glass)
    if grant.break_glass:
        render.break_glass_notice(grant)
    if grant.state == "denied":
        checked(grant)
    waiting = grant.state == "pending" and wait_choice(wait)
    if not waiting:
        render.grant_details(grant, output)  # -o json: the grant as answered, pending or active
    grant = finish_request(broker, grant, waiting)
    if waiting:
        render.grant_details(grant, output)
    render.grant_usage(grant)


def grants(
    ctx: typer.Context,
    all_: Annotated[
        bool, typer.Option("--all", "-a", help="Include expired, revoked and denied grants")
    ] = False,
    pending: Annotated[
        bool,
        typer.Option(
            "--pending", help="Instead: others' requests waiting for your review (approve or deny them)"
        ),
    ] = False,
    break_glass: Annotated[
        bool,
        typer.Option(
            "--break-glass",
            help="Instead: break-glass grants, ended ones too, for review (everyone's for an audit reader)",
        ),
    ] = False,
    output: OutputOption = Output.text,
) -> None:
    """List your grants, with state and time left (active and pending ones unless --all); or,
    with --pending, the requests that wait for your review; or, with --break-glass, the grants
    taken through break-glass rules."""
    if sum((pending, all_, break_glass)) > 1:
        raise UsageError("give one of --all, --pending and --break-glass")
    listing: GrantList = "break_glass" if break_glass else "reviews" if pending else "all" if all_ else "mine"
    if output is Output.json:  # the broker's values, unchanged: nothing to parse them into
        render.json_out(client(ctx).grant_list(listing))
        return
    items = client(ctx).grants_of(listing)
    if pending:
        pending_table(items)
        return
    if break_glass:
        render.break_glass_table(items)
        return
    if not items:
        render.message("No active grants; ask for one with `access request SERVICE --scope S --ttl 30m`.")
        return
    render.table(
        ["ID", "SERVICE", "SCOPE", "STATE", "LEFT", "REASON"],
        [[g.id, g.service, g.scope, str(g.state), render.grant_left(g), g.reason] for g in items],
        keep_whole=["ID", "SERVICE"],
        free_text=["REASON"],
    )


def revoke(
    ctx: typer.Context,
    grant_id: Annotated[str, typer.Argument(help="Grant id (see `access grants`)", metavar="GRANT_ID")],
    output: OutputOption = Output.text,
) -> None:
    """End a grant now; live connections through it are cut. A pending request is cancelled.

    A grant of yours that had already ended (expired, revoked, denied) is fine too: it says so
    and exits 0, so a clean-up step can revoke whatever happened.
    """
    broker = client(ctx)
    before = broker.get_grant(grant_id)  # not found (8) for someone else's or a made-up id
    ended = before.state not in ("active", "pending")
    grant = before if ended else broker.revoke(grant_id)
    render.grant_details(grant, output)
    if ended:
        render.message(
            f"Grant {render.name(grant.id)} had already ended ({grant.ended_reason or grant.state})."
        )
    elif before.state == "pending":
        render.message(f"Cancelled request {render.name(grant.id)}: nobody can approve it now.")
    else:
        render.message(f"Revoked grant {render.name(grant.id)}.")
