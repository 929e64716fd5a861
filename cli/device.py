"""The polling half of the device login (RFC 8628 section 3.4-3.5), with time injected for tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from access.cli.errors import BrokerUnreachable, TimedOut

if TYPE_CHECKING:
    from access.cli.client import BrokerClient, DeviceAuthorization
    from access.cli.tokens import Tokens

__all__ = ["SLOW_DOWN_STEP", "wait_for_approval"]

SLOW_DOWN_STEP = 5  # seconds added to the interval on slow_down (RFC 8628 section 3.5)
MIN_INTERVAL = 1
MAX_NETWORK_RETRIES = 3
# The clock `access login` uses; tests replace these with a fake that does not wait.
SLEEP: Callable[[float], None] = time.sleep
MONOTONIC: Callable[[], float] = time.monotonic


def wait_for_approval(
    client: BrokerClient,
    auth: DeviceAuthorization,
    *,
    timeout: float | None = None,
    sleep: Callable[[float], None] | None = None,
    monotonic: Callable[[], float] | None = None,
) -> Tokens:
    """Poll the token endpoint every ``interval`` seconds until the person approves.

    The wait is bounded: ``timeout`` seconds (default and at most the code's ``expires_in``),
    measured on the monotonic clock; the broker may still say earlier that the code expired.

    ``slow_down`` adds 5 seconds to the interval for the rest of the login; a broker that
    cannot be reached is retried a few times with doubling waits (section 3.5 asks clients
    to back off), then reported.

    Raises:
        Denied: the person pressed Deny.
        Expired: the broker said the code ran out.
        TimedOut: ``timeout`` (or ``expires_in``) passed without an approval.
        BrokerUnreachable: the broker stayed unreachable.
    """
    from access.cli.tokens import Tokens

    sleep = sleep or SLEEP
    monotonic = monotonic or MONOTONIC
    interval = float(max(MIN_INTERVAL, auth.interval))
    wait = float(auth.expires_in) if timeout is None else min(float(auth.expires_in), timeout)
    deadline = monotonic() + wait
    failures = 0
    while True:
        step = interval * (2**failures)
        remaining = deadline - monotonic()
        if remaining < step:  # no early poll (it would earn a slow_down): wait out the bound, stop
            sleep(max(0.0, remaining))
            _give_up(wait)
        sleep(step)
        try:
            result = client.poll_token(auth.device_code)
        except BrokerUnreachable:
            failures += 1
            if failures > MAX_NETWORK_RETRIES:
                raise
            continue
        failures = 0
        if isinstance(result, Tokens):
            return result
        if result == "slow_down":
            interval += SLOW_DOWN_STEP
        if monotonic() >= deadline:
            _give_up(wait)


def _give_up(wait: float) -> NoReturn:
    from access.shared.durations import format_duration

    raise TimedOut(
        f"nobody approved the code within {format_duration(max(1, round(wait)))}",
        "run `access login` again (--timeout sets how long it waits)",
    )
