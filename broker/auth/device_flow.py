"""The device authorization's state machine (RFC 8628), pure: no I/O, time passed in.

States are what ``device_codes.status`` holds (``DeviceState``)::

    pending --APPROVE--> approved --EXCHANGE--> consumed
       |  \\--DENY--> denied
       \\--SIGN_IN--> pending (a person signed in; the consent token is attached)

Expiry is not a stored state: any code whose ``expires_at`` has passed answers
``expired_token`` (except a consumed one, which stays ``invalid_grant``), and the page no
longer finds it. ``slow_down`` is not a state either: a pending code polled sooner than its
interval stays pending, and its interval grows by ``SLOW_DOWN_STEP``.

``next_step`` says what one poll of the CLI comes to; ``transition`` what a person's action or
a successful exchange moves a code to. The service (``device.py``) does the I/O around them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from access.broker.store.device_codes import DeviceState

__all__ = [
    "SLOW_DOWN_STEP",
    "TRANSITIONS",
    "DeviceState",
    "Event",
    "InvalidTransition",
    "Poll",
    "PollStep",
    "next_step",
    "transition",
]

SLOW_DOWN_STEP = 5  # seconds added to the interval on slow_down (RFC 8628 section 3.5)


class Event(Enum):
    """What can happen to a device authorization."""

    SIGN_IN = "sign_in"  # a person signed in on the page with its user code
    APPROVE = "approve"
    DENY = "deny"
    EXCHANGE = "exchange"  # the CLI exchanged the approved code for tokens


# Every allowed move; anything else is refused.
TRANSITIONS: dict[tuple[DeviceState, Event], DeviceState] = {
    (DeviceState.PENDING, Event.SIGN_IN): DeviceState.PENDING,
    (DeviceState.PENDING, Event.APPROVE): DeviceState.APPROVED,
    (DeviceState.PENDING, Event.DENY): DeviceState.DENIED,
    (DeviceState.APPROVED, Event.EXCHANGE): DeviceState.CONSUMED,
}


class InvalidTransition(ValueError):
    """``event`` is not allowed in ``state``."""

    def __init__(self, state: DeviceState, event: Event) -> None:
        super().__init__(f"a {state.value} device authorization cannot take {event.value}")
        self.state = state
        self.event = event


def transition(state: DeviceState, event: Event) -> DeviceState:
    """The state ``event`` moves a device authorization in ``state`` to.

    Raises:
        InvalidTransition: the event is not allowed in that state.
    """
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(state, event) from None


class Poll(Enum):
    """What one poll comes to; the value is the OAuth error code answered (RFC 8628 3.5)."""

    PENDING = "authorization_pending"
    SLOW_DOWN = "slow_down"
    DENIED = "access_denied"
    EXPIRED = "expired_token"
    USED = "invalid_grant"
    ISSUE = "issue"  # not an error: consume the code (EXCHANGE) and issue tokens


@dataclass(frozen=True)
class PollStep:
    outcome: Poll
    interval: int  # the polling interval from now on (grown on SLOW_DOWN)


def next_step(
    state: DeviceState, now: datetime, expires_at: datetime, last_poll_at: datetime | None, interval: int
) -> PollStep:
    """What a poll at ``now`` comes to for a code in ``state``."""
    # The order is the answer's precedence: a used code says so even once it has expired.
    if state is DeviceState.CONSUMED:
        return PollStep(Poll.USED, interval)
    if expires_at <= now:
        return PollStep(Poll.EXPIRED, interval)
    if state is DeviceState.DENIED:
        return PollStep(Poll.DENIED, interval)
    if state is DeviceState.APPROVED:
        return PollStep(Poll.ISSUE, interval)
    if last_poll_at is not None and now - last_poll_at < timedelta(seconds=interval):
        return PollStep(Poll.SLOW_DOWN, interval + SLOW_DOWN_STEP)
    return PollStep(Poll.PENDING, interval)
