"""Waiting for reviewers: poll a pending grant until it is decided, with time injected for tests.

``access request --wait``, ``access wait`` and ``access exec``/``connect`` on a request that
needs approval all wait here. The wait polls ``GET /v1/grants/{id}`` every ``POLL_INTERVAL``
seconds (no busy loop) and is bounded by the review deadline the broker states
(``review.seconds_left``, by the broker's clock, so this machine's clock does not matter) plus a
little grace; Ctrl-C stops waiting and leaves the request pending.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from access.cli import render
from access.cli.errors import BrokerUnreachable, Denied, Expired, Pending

if TYPE_CHECKING:
    from access.cli.client import BrokerClient
    from access.shared.models import Grant

__all__ = ["POLL_INTERVAL", "decided", "status_line", "wait_for_review"]

POLL_INTERVAL = 1.5  # seconds between polls
TICK = 0.25  # the spinner's frame, on a terminal
GRACE = 2.0  # past the review deadline, one more look before giving up
MAX_NETWORK_RETRIES = 3
# The clock the waits use; tests replace these with a fake that does not wait.
SLEEP: Callable[[float], None] = time.sleep
MONOTONIC: Callable[[], float] = time.monotonic


def status_line(grant: Grant) -> str:
    """``waiting for 1 more of group:leads (bob approved; needs 2 of group:leads), 9m left to review``."""
    from access.shared.durations import format_duration

    review = grant.review
    if review is None:
        return f"waiting for approval of {grant.id}"
    approved = [a.reviewer for a in review.approvals if a.decision == "approve"]
    needs = review.missing or "the reviewers"
    rule = " and ".join(f"{c.count} of {', '.join(c.reviewers)}" for c in review.clauses)
    said = f"{', '.join(approved)} approved; " if approved else ""
    left = format_duration(max(1, review.seconds_left))
    return f"waiting for {needs} ({said}needs {rule}), {left} left to review; Ctrl-C stops waiting"


def wait_for_review(
    client: BrokerClient,
    grant: Grant,
    *,
    sleep: Callable[[float], None] | None = None,
    monotonic: Callable[[], float] | None = None,
) -> Grant:
    """Poll ``grant`` (pending) until its reviewers decide; return it once active.

    Raises:
        Denied: a reviewer denied it, or it was cancelled or ended by a policy change.
        Expired: nobody approved it before its review deadline.
        Pending: Ctrl-C: it stays pending; the hint says how to pick it up.
        BrokerUnreachable: the broker stayed unreachable.
    """
    sleep = sleep or SLEEP
    monotonic = monotonic or MONOTONIC
    review_left = grant.review.seconds_left if grant.review is not None else 0
    deadline = monotonic() + review_left + GRACE
    spinner = render.Spinner()
    failures = 0
    try:
        while grant.state == "pending":
            spinner.show(status_line(grant))
            if monotonic() >= deadline:
                break
            _pause(POLL_INTERVAL * (2**failures), spinner, sleep, monotonic)
            try:
                grant = client.get_grant(grant.id)
            except BrokerUnreachable:
                failures += 1
                if failures > MAX_NETWORK_RETRIES:
                    raise
                continue
            failures = 0
    except KeyboardInterrupt:
        spinner.close()
        raise Pending(
            f"stopped waiting: grant {render.name(grant.id)} stays pending until reviewed",
            f"pick it up with `access wait {render.name(grant.id)}`, "
            f"or cancel it with `access revoke {render.name(grant.id)}`",
        ) from None
    finally:
        spinner.close()
    return decided(grant)


def _pause(
    seconds: float, spinner: render.Spinner, sleep: Callable[[float], None], monotonic: Callable[[], float]
) -> None:
    """Sleep ``seconds``: in frames on a terminal (the bar turns), else in one go."""
    if not spinner.animated:
        sleep(seconds)
        return
    wake = monotonic() + seconds
    while (left := wake - monotonic()) > 0:
        sleep(min(TICK, left))
        spinner.tick()


def decided(grant: Grant) -> Grant:
    """``grant`` if it is active; else the error that says what became of it.

    Raises:
        Pending: still waiting (the review deadline has not passed by the broker's clock).
        Denied: a reviewer or the policy said no, or it was cancelled or ended.
        Expired: it expired unreviewed, or its access ran out.
    """
    gid = render.name(grant.id)
    again = f"ask again: `access request {render.name(grant.service)} --scope {render.name(grant.scope)}`"
    if grant.state == "active":
        return grant
    if grant.state == "pending":
        raise Pending(f"grant {gid} is still waiting for approval", f"check on it with `access wait {gid}`")
    if grant.state == "expired":
        if grant.approved_at is None and grant.requirement == "approval":
            raise Expired(f"grant {gid} expired unreviewed: nobody approved it in time", again)
        raise Expired(f"grant {gid} has expired", again)
    no = next((a for a in (grant.review.approvals if grant.review else []) if a.decision == "deny"), None)
    if no is not None:
        raise Denied(f"grant {gid} was denied by {render.name(no.reviewer)}: {no.comment}", again)
    raise Denied(f"grant {gid} was {grant.state} ({grant.ended_reason or grant.state})", again)
