"""The polling half of the device login (RFC 8628 section 3.4-3.5), with time injected for tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from access.cli.errors import BrokerUnreachable, Expired

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
    sleep: Callable[[float], None] | None = None,
    monotonic: Callable[[], float] | None = None,
) -> Tokens:
    """Poll the token endpoint every ``interval`` seconds until the person approves.

    ``slow_down`` adds 5 seconds to the interval for the rest of the login; a broker that
    cannot be reached is retried a few times with doubling waits (section 3.5 asks clients
    to back off), then reported.

    Raises:
        Denied: the person pressed Deny.
        Expired: the code ran out (the broker said so, or its ``expires_in`` passed).
        BrokerUnreachable: the broker stayed unreachable.
    """
    from access.cli.tokens import Tokens

    sleep = sleep or SLEEP
    monotonic = monotonic or MONOTONIC
    interval = float(max(MIN_INTERVAL, auth.interval))
    deadline = monotonic() + auth.expires_in
    failures = 0
    while True:
        sleep(interval * (2**failures))
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
            raise Expired("the code expired before it was approved", "run `access login` again")
