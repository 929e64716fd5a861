"""``access approve``, ``access deny``, ``access wait``, and the table of ``access grants --pending``:
the reviewer's side of requests that need approval, and the requester's wait."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from access.cli import render
from access.cli.context import OutputOption, client
from access.cli.errors import Pending, UsageError
from access.cli.render import Output

if TYPE_CHECKING:
    from access.cli.client import BrokerClient
    from access.shared.models import Grant

__all__ = [
    "WaitOption",
    "approve",
    "deny",
    "finish_request",
    "pending_table",
    "review_pending",
    "wait",
    "wait_choice",
]

GrantIdArg = Annotated[
    str, typer.Argument(help="Grant id (see `access grants --pending`)", metavar="GRANT_ID")
]

# --wait/--no-wait, for request, exec and connect: None means "decide by the terminal".
WaitOption = Annotated[
    bool | None,
    typer.Option(
        "--wait/--no-wait",
        help="If the request needs approval: wait for the reviewers (Ctrl-C stops waiting, the request "
        "stays pending), or exit at once with code 5 and the grant id. Default: wait on a terminal, "
        "not in scripts",
        show_default=False,
    ),
]


def wait_choice(wait: bool | None) -> bool:
    """``--wait``/``--no-wait`` as given; neither: wait when a person is at a terminal."""
    import sys

    if wait is not None:
        return wait
    return sys.stdin.isatty() and sys.stderr.isatty()


def _age(grant: Grant) -> str:
    """How long ago it was asked for, by the broker's clock (its ``now`` is the review deadline
    less the seconds left; this machine's clock plays no part)."""
    from access.shared.durations import format_duration

    if grant.review is None:
        return "-"
    now = grant.review.review_expires_at.timestamp() - grant.review.seconds_left
    return format_duration(max(0, round(now - grant.created_at.timestamp())))


def pending_table(items: list[Grant]) -> None:
    """``access grants --pending``: who asks for what, for how long, why, since when, what it needs."""
    from access.shared.durations import format_duration

    if not items:
        render.message("Nothing waits for your review.")
        return
    render.table(
        ["ID", "REQUESTER", "SERVICE", "SCOPE", "TTL", "AGE", "NEEDS", "REASON"],
        [
            [
                g.id,
                g.subject,
                g.service,
                g.scope,
                format_duration(g.ttl_seconds or 0),
                _age(g),
                g.review.missing if g.review else "-",
                g.reason,
            ]
            for g in items
        ],
        keep_whole=["ID", "REQUESTER", "SERVICE"],
        free_text=["NEEDS", "REASON"],
    )
    first = render.name(items[0].id)
    render.message(
        f"Approve with `access approve {first} --comment TEXT`, or `access deny {first} --reason TEXT`."
    )


def approve(
    ctx: typer.Context,
    grant_id: GrantIdArg,
    comment: Annotated[
        str, typer.Option("--comment", "-c", help="A word for the requester and the ledger")
    ] = "",
    output: OutputOption = Output.text,
) -> None:
    """Approve a request that waits for your review; it is issued once every clause is met.

    Nobody approves their own request, nor one of a service account they own; each reviewer has
    one say. Exit 4 if you may not review it, 1 (conflict) if it was decided meanwhile.
    """
    grant = client(ctx).approve(grant_id, comment)
    render.grant_details(grant, output)
    gid = render.name(grant.id)
    if grant.state == "active":
        render.message(f"Approved: grant {gid} for {render.name(grant.subject)} is active now.")
    else:
        needs = grant.review.missing if grant.review else "more approvals"
        render.message(f"Approved grant {gid}; it still needs {needs}.")


def deny(
    ctx: typer.Context,
    grant_id: GrantIdArg,
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why (the requester sees it)")] = "",
    output: OutputOption = Output.text,
) -> None:
    """Deny a request that waits for your review; one reviewer's no ends it."""
    if not reason.strip():
        raise UsageError("say why you deny it", f"access deny {grant_id} --reason TEXT")
    grant = client(ctx).deny(grant_id, reason)
    render.grant_details(grant, output)
    render.message(f"Denied grant {render.name(grant.id)} of {render.name(grant.subject)}.")


def finish_request(broker: BrokerClient, grant: Grant, wait: bool) -> Grant:
    """A grant just asked for (or named) that may be pending: waited for (``wait``), or the
    pending error (exit 5) that says how to pick it up. Returns it once active.

    Raises:
        Pending, Denied, Expired: as ``review.wait_for_review`` and ``review.decided``.
    """
    from access.cli import review

    if grant.state != "pending":
        return review.decided(grant)
    gid = render.name(grant.id)
    if not wait:
        who = grant.review.missing if grant.review else "its reviewers"
        raise review_pending(gid, who)
    render.message(
        f"grant {gid} needs approval: asking its reviewers; Ctrl-C stops waiting, it stays pending"
    )
    return review.wait_for_review(broker, grant)


def review_pending(gid: str, who: str) -> Pending:
    """The exit-5 error for a request left waiting: its id, and how to pick it up."""
    return Pending(
        f"grant {gid} waits for approval by {who}",
        f"wait for it with `access wait {gid}`; cancel it with `access revoke {gid}`",
    )


def wait(ctx: typer.Context, grant_id: GrantIdArg, output: OutputOption = Output.text) -> None:
    """Wait for your pending request to be reviewed, then print the grant (until its review
    deadline; Ctrl-C stops waiting and leaves it pending). Exit 0 active, 4 denied, 6 expired
    unreviewed, 5 still pending (Ctrl-C)."""
    from access.cli import review

    broker = client(ctx)
    grant = broker.get_grant(grant_id)
    if grant.state == "pending":
        render.message(f"waiting for the reviewers of grant {render.name(grant.id)}")
    grant = review.wait_for_review(broker, grant)
    render.grant_details(grant, output)
    render.grant_usage(grant)
