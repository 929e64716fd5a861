"""The device authorization's state machine as tables: every poll outcome, every transition."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from access.broker.auth.device_flow import (
    SLOW_DOWN_STEP,
    TRANSITIONS,
    DeviceState,
    Event,
    InvalidTransition,
    Poll,
    PollStep,
    next_step,
    transition,
)

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)  # not yet expired
INTERVAL = 5
S = timedelta(seconds=1)

PENDING, APPROVED, DENIED, CONSUMED = (
    DeviceState.PENDING,
    DeviceState.APPROVED,
    DeviceState.DENIED,
    DeviceState.CONSUMED,
)


@pytest.mark.parametrize(
    ("state", "expires_at", "last_poll_at", "expected"),
    [
        # pending: first poll, polls at or after the interval wait; faster ones slow down.
        (PENDING, LATER, None, PollStep(Poll.PENDING, INTERVAL)),
        (PENDING, LATER, NOW - INTERVAL * S, PollStep(Poll.PENDING, INTERVAL)),
        (PENDING, LATER, NOW - 60 * S, PollStep(Poll.PENDING, INTERVAL)),
        (PENDING, LATER, NOW - (INTERVAL - 1) * S, PollStep(Poll.SLOW_DOWN, INTERVAL + SLOW_DOWN_STEP)),
        (PENDING, LATER, NOW, PollStep(Poll.SLOW_DOWN, INTERVAL + SLOW_DOWN_STEP)),
        # approved: tokens are issued (the code is consumed), however fast the poll.
        (APPROVED, LATER, None, PollStep(Poll.ISSUE, INTERVAL)),
        (APPROVED, LATER, NOW, PollStep(Poll.ISSUE, INTERVAL)),
        (DENIED, LATER, None, PollStep(Poll.DENIED, INTERVAL)),
        (DENIED, LATER, NOW, PollStep(Poll.DENIED, INTERVAL)),
        (CONSUMED, LATER, NOW - 60 * S, PollStep(Poll.USED, INTERVAL)),
        # expiry wins over every state but consumed, from the instant expires_at is reached.
        (PENDING, NOW, None, PollStep(Poll.EXPIRED, INTERVAL)),
        (PENDING, NOW - S, NOW, PollStep(Poll.EXPIRED, INTERVAL)),
        (APPROVED, NOW, None, PollStep(Poll.EXPIRED, INTERVAL)),
        (DENIED, NOW - S, None, PollStep(Poll.EXPIRED, INTERVAL)),
        (CONSUMED, NOW - S, None, PollStep(Poll.USED, INTERVAL)),
    ],
)
def test_next_step(
    state: DeviceState, expires_at: datetime, last_poll_at: datetime | None, expected: PollStep
) -> None:
    assert next_step(state, NOW, expires_at, last_poll_at, INTERVAL) == expected


def test_poll_outcomes_are_the_oauth_error_codes() -> None:
    # RFC 8628 section 3.5 and RFC 6749: the CLI matches these strings.
    assert {poll.value for poll in Poll if poll is not Poll.ISSUE} == {
        "authorization_pending",
        "slow_down",
        "access_denied",
        "expired_token",
        "invalid_grant",
    }


def test_states_are_the_stored_statuses() -> None:
    assert [state.value for state in DeviceState] == ["pending", "approved", "denied", "consumed"]


ALLOWED = {
    (PENDING, Event.SIGN_IN): PENDING,
    (PENDING, Event.APPROVE): APPROVED,
    (PENDING, Event.DENY): DENIED,
    (APPROVED, Event.EXCHANGE): CONSUMED,
}


@pytest.mark.parametrize("state", list(DeviceState))
@pytest.mark.parametrize("event", list(Event))
def test_transition(state: DeviceState, event: Event) -> None:
    if (state, event) in ALLOWED:
        assert transition(state, event) is ALLOWED[(state, event)]
    else:
        with pytest.raises(InvalidTransition):
            transition(state, event)


def test_the_transition_table_is_exactly_the_allowed_moves() -> None:
    assert TRANSITIONS == ALLOWED
    # Nothing leaves denied or consumed: they are final.
    assert not any(state in (DENIED, CONSUMED) for state, _ in TRANSITIONS)
